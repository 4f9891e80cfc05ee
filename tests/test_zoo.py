"""Every zoo network builds offline, runs forward and backward at small sizes."""

from __future__ import annotations

import pytest
import torch

from medlens.models import create_model, is_model

# timm backbones the recipes name, at sizes that keep the suite fast.
TIMM_RECIPE_BACKBONES = [
    ("convnextv2_atto", 64, {}),
    ("deit_tiny_patch16_224", 64, {"img_size": 64}),
    ("resnet50", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("efficientnet_b3", 64, {}),
    ("mobilenetv3_large_100", 64, {}),
    ("xception41", 64, {}),
    ("swin_tiny_patch4_window7_224", 224, {}),
    ("densenet121", 64, {}),
]


@pytest.mark.parametrize(("name", "size", "kw"), TIMM_RECIPE_BACKBONES)
def test_recipe_backbones_build_forward_backward(name, size, kw):
    m = create_model(name, num_classes=5, in_chans=3, **kw)
    y = m(torch.randn(1 if size > 100 else 2, 3, size, size))
    assert y.shape[-1] == 5
    y.sum().backward()


@pytest.mark.parametrize(
    "name",
    [
        "mobilenetv3_large_100+lstm",
        "efficientnet_b3+bigru",
        "efficientnet_b3+vit",
        "xception41+bigru",
    ],
)
def test_hybrids_read_spatial_tokens(name):
    assert is_model(name)
    m = create_model(name, num_classes=4, in_chans=3)
    x = torch.randn(2, 3, 64, 64)
    feat = m.forward_features(x)
    tokens = m.tokens(feat)
    assert tokens.shape[1] == feat.shape[2] * feat.shape[3] > 1  # a real sequence, not one token
    y = m(x)
    assert y.shape == (2, 4)
    y.sum().backward()
    assert m.reader.__class__.__name__ in {"_RNNReader", "_TransformerReader"}


def test_any_backbone_with_a_reader():
    m = create_model("resnet18+gru", num_classes=3, in_chans=1)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_multitask_heads():
    m = create_model(
        "multitask",
        num_classes=4,
        in_chans=1,
        backbone="resnet18",
        heads={"class": 4, "stage": 4, "risk": "regression"},
    )
    out = m(torch.randn(3, 1, 64, 64))
    assert (
        out["class"].shape == (3, 4) and out["stage"].shape == (3, 4) and out["risk"].shape == (3,)
    )
    (out["class"].sum() + out["risk"].sum()).backward()


def test_fusion_predicts_with_either_or_both_modalities():
    torch.manual_seed(0)
    m = create_model(
        "fusion",
        num_classes=4,
        in_chans=1,
        encoders={"ct": "resnet18", "mri": "resnet18"},
        heads={"class": 4, "risk": "regression"},
    ).eval()
    ct, mri = torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64)
    both = m({"ct": ct, "mri": mri})["class"]
    only_ct = m({"ct": ct, "mri": None})["class"]
    only_mri = m({"ct": None, "mri": mri})["class"]
    for out in (both, only_ct, only_mri):
        assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert not torch.allclose(both, only_ct) and not torch.allclose(both, only_mri)
    # per-sample missing: sample 0 lacks MRI → equals the CT-only prediction for that sample
    mixed = m({"ct": ct, "mri": mri}, present={"mri": torch.tensor([False, True])})["class"]
    assert torch.allclose(mixed[0], only_ct[0], atol=1e-5) and torch.allclose(
        mixed[1], both[1], atol=1e-5
    )
    with pytest.raises(ValueError):
        m({"ct": None, "mri": None})
    m.train()
    loss = m({"ct": ct, "mri": mri})["class"].sum()
    loss.backward()
    assert all(p.grad is not None for p in m.proj.parameters())


def test_linear_probe_keeps_backbone_frozen():
    m = create_model("linear_probe", num_classes=3, in_chans=3, backbone="resnet18")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.train()
    loss = torch.nn.functional.cross_entropy(
        m(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    opt.step()
    after = m.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats unchanged
    assert sum(p.requires_grad for p in m.parameters()) == 2  # head weight + bias


def test_mednext_classifier_uses_monai():
    m = create_model(
        "mednext",
        num_classes=5,
        in_chans=1,
        init_filters=8,
        blocks_down=(1, 1, 1, 1),
        blocks_bottleneck=1,
    )
    assert type(m.enc_stages[0][0]).__module__.startswith("monai")  # MedNeXt blocks
    y = m(torch.randn(2, 1, 64, 64))
    assert y.shape == (2, 5)
    y.sum().backward()
    assert not hasattr(m, "dec_stages")  # the segmentation decoder is not carried along


def test_attention_unet_dice_bce_and_metrics():
    from medlens.train.losses import DiceBCELoss, per_image_dice_iou

    m = create_model(
        "attention_unet", num_classes=1, in_chans=1, channels=(8, 16, 32), strides=(2, 2)
    )
    x = torch.randn(2, 1, 32, 32)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1
    logits = m(x)
    assert logits.shape == (2, 1, 32, 32)
    loss = DiceBCELoss()(logits, target)
    loss.backward()
    dice, iou = per_image_dice_iou(target * 20 - 10, target)
    assert torch.allclose(dice, torch.ones(2)) and torch.allclose(iou, torch.ones(2))
    half = torch.zeros_like(target)
    half[:, :, 8:24, 8:16] = 1
    dice, iou = per_image_dice_iou(half * 20 - 10, target)
    assert dice.mean().item() == pytest.approx(2 * 128 / (128 + 256))
    assert iou.mean().item() == pytest.approx(0.5)


def test_models_hold_no_training_losses():
    """The zoo is split by job: networks in models/, losses beside the other losses in train/."""
    import medlens.models.heads
    import medlens.models.hybrids
    import medlens.models.monai_nets

    for mod in (medlens.models.heads, medlens.models.hybrids, medlens.models.monai_nets):
        assert not any(n.endswith("Loss") for n in vars(mod)), mod.__name__
