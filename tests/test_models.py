from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medlens.errors import MedlensError
from medlens.models import create_model, is_model, list_models, register_model
from medlens.models.small_cnn import SmallCNN


@pytest.mark.parametrize(
    ("name", "in_chans"),
    [("small_cnn", 1), ("small_cnn", 3), ("resnet18", 1), ("mobilenetv3_small_050", 3)],
)
def test_models_build_offline_forward_backward(name: str, in_chans: int):
    m = create_model(name, num_classes=3, in_chans=in_chans)
    x = torch.randn(2, in_chans, 64, 64)
    y = m(x)
    assert y.shape == (2, 3)
    y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_small_cnn_structure():
    m = create_model("small_cnn", num_classes=4, in_chans=1, widths=[8, 16, 32])
    assert isinstance(m, SmallCNN)
    convs = [layer for layer in m.features if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert m.get_classifier().out_features == 4


def test_registry_lists_own_and_timm_models():
    names = list_models()
    assert names[0] == "small_cnn" or "small_cnn" in names
    assert "resnet50" in names and is_model("convnextv2_atto") and is_model("small_cnn")
    assert list_models("resnet1*", include_timm=True)[0].startswith("resnet1")


def test_unknown_model_suggests_names():
    with pytest.raises(MedlensError, match="resnet18"):
        create_model("resnet81", num_classes=2)


def test_register_twice_refused():
    with pytest.raises(ValueError):
        register_model("small_cnn")(lambda **kw: None)


def test_pretrained_from_local_file(tmp_path: Path):
    from safetensors.torch import save_file

    src = create_model("resnet18", num_classes=5, in_chans=3)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    # Different head size: the backbone comes from the file, the head is new.
    m = create_model("resnet18", num_classes=2, in_chans=3, pretrained=str(f))
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    assert m.fc.out_features == 2
    cnn = create_model("small_cnn", num_classes=3, in_chans=1)
    f2 = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(f2))
    cnn2 = create_model("small_cnn", num_classes=3, in_chans=1, pretrained=str(f2))
    assert all(
        torch.equal(a, b)
        for a, b in zip(cnn.state_dict().values(), cnn2.state_dict().values(), strict=True)
    )


def test_missing_weights_file_is_clear():
    with pytest.raises(MedlensError, match="not found"):
        create_model("resnet18", num_classes=2, pretrained="/nonexistent/w.pth")
