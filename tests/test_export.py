"""ONNX export: parity on the registry's exportable families, the INT8 refusal, the bundle's
checksums over the graph, and the record a non-exportable model gets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from medlens.bundle import load_bundle, save_bundle, verify_bundle, write_sums
from medlens.engines import ONNX_FP32, ONNX_INT8, verified_graph
from medlens.errors import BundleError, MedlensError
from medlens.export import (
    CheckImages,
    ExportRefused,
    NotExportable,
    export_after_training,
    export_bundle,
)
from medlens.inference import Predictor

CLASSES = ["a", "b", "c"]


def pipeline(size: int = 32, chans: str = "grayscale") -> list[dict[str, Any]]:
    c = 1 if chans == "grayscale" else 3
    return [
        {"step": chans},
        {"step": "resize", "size": size},
        {"step": "normalize", "mean": [0.5] * c, "std": [0.25] * c},
    ]


@dataclass
class Img:
    """A labelled in-memory image, loaded like a manifest sample."""

    array: np.ndarray
    label: str

    def load(self) -> np.ndarray:
        return self.array


def images(n: int = 12, seed: int = 0, rgb: bool = False) -> list[Img]:
    rng = np.random.default_rng(seed)
    shape = (40, 44, 3) if rgb else (40, 44)
    return [Img(rng.random(shape).astype(np.float32), CLASSES[i % 3]) for i in range(n)]


def make_bundle(
    tmp: Path,
    name: str,
    kwargs: dict[str, Any] | None = None,
    in_chans: int = 1,
    pre: list[dict[str, Any]] | None = None,
    task: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    spec_name: str | None = None,
) -> Path:
    import torch

    from medlens.models import create_model

    torch.manual_seed(0)
    kwargs = kwargs or {}
    model = create_model(name, num_classes=3, in_chans=in_chans, **kwargs).eval()
    spec = {"name": spec_name or name, "num_classes": 3, "in_chans": in_chans, "kwargs": kwargs}
    return save_bundle(
        tmp / (spec_name or name).replace("+", "_"),
        model,
        name="t",
        model_spec=spec,
        classes=CLASSES,
        task=task or {"classes": CLASSES},
        preprocess=pre or pipeline(),
        recipe_yaml="name: t\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
        extra=extra,
    )


FAMILIES = [
    pytest.param("small_cnn", {"widths": [4, 8, 8]}, 1, id="small_cnn"),
    pytest.param("resnet18", {}, 3, id="timm_cnn"),
    pytest.param("resnet18+lstm", {"hidden": 16}, 1, id="hybrid"),
    pytest.param(
        "multitask",
        {"backbone": "resnet18", "heads": {"class": 3, "stage": 4, "risk": "regression"}},
        1,
        id="multitask",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "chans"), FAMILIES)
def test_fp32_parity_and_engine_switch(tmp_path: Path, name: str, kwargs: dict, chans: int):
    pre = pipeline(32, "grayscale" if chans == 1 else "rgb")
    path = make_bundle(tmp_path, name, kwargs, chans, pre)
    imgs = images(10, rgb=chans == 3)
    rec = export_bundle(path, images=CheckImages(imgs, "test images"))
    g = rec["graphs"]["fp32"]
    assert g["passed"] and g["parity"]["n_images"] == 10
    assert g["parity"]["max_probability_difference"] <= 1e-4
    assert 1 in g["parity"]["batch_sizes"] and max(g["parity"]["batch_sizes"]) > 1
    verify_bundle(path)  # the graph and the record are under the checksums
    onnx_p = Predictor.from_bundle(path)  # auto: the verified graph
    torch_p = Predictor.from_bundle(path, engine="torch")
    assert onnx_p.engine.name == "onnx" and torch_p.engine.name == "torch"
    assert onnx_p.engine._model is None  # no torch model until a heatmap asks
    arrays = [i.array for i in imgs]
    a, b = onnx_p.predict_many(arrays), torch_p.predict_many(arrays)
    assert [r.label for r in a] == [r.label for r in b]
    assert [r.decision for r in a] == [r.decision for r in b]
    for ra, rb in zip(a, b, strict=True):
        for c in CLASSES:
            assert abs(ra.probabilities[c] - rb.probabilities[c]) <= 1e-4
        assert ra.heads.keys() == rb.heads.keys()
    batch = onnx_p._stack([onnx_p.preprocess(x) for x in arrays[:3]])
    _, fo, eo = onnx_p.engine.run(batch)
    _, ft, et = torch_p.engine.run(batch)
    assert fo.shape == ft.shape and np.allclose(fo, ft, atol=1e-4)
    assert eo.keys() == et.keys()


def test_fusion_exports_with_optional_modalities(tmp_path: Path):
    kwargs = {"encoders": {"ct": "resnet18", "mri": "resnet18"}, "proj_dim": 16}
    path = make_bundle(
        tmp_path, "fusion", kwargs, 1, extra={"modalities": {"ct": "path", "mri": "mri_path"}}
    )
    rng = np.random.default_rng(1)

    def im() -> np.ndarray:
        return rng.random((40, 40)).astype(np.float32)

    items = [{"ct": im(), "mri": im()}, {"ct": im(), "mri": None}, {"ct": None, "mri": im()}]
    items = items * 3
    rec = export_bundle(path, images=CheckImages(items, "pairs"))
    assert rec["graphs"]["fp32"]["passed"] and rec["modalities"] == ["ct", "mri"]
    assert rec["inputs"] == ["image_ct", "image_mri", "present_ct", "present_mri"]
    o, t = Predictor.from_bundle(path, engine="onnx"), Predictor.from_bundle(path, engine="torch")
    for item in items[:3]:
        po, pt = o.predict(item), t.predict(item)
        assert po.label == pt.label and po.modalities_used == pt.modalities_used
        assert max(abs(po.probabilities[c] - pt.probabilities[c]) for c in CLASSES) <= 1e-4


def test_roi_classifier_exports(tmp_path: Path):
    pytest.importorskip("monai")
    kwargs = {"classifier": {"name": "small_cnn", "kwargs": {"widths": [4, 8, 8]}}}
    path = make_bundle(tmp_path, "roi_classifier", kwargs, 1)
    rec = export_bundle(path, images=CheckImages(images(6), "imgs"))
    assert rec["graphs"]["fp32"]["passed"]
    assert Predictor.from_bundle(path).engine.name == "onnx"


def test_int8_accepted_then_refused_beyond_tolerance(tmp_path: Path):
    path = make_bundle(tmp_path, "small_cnn", {"widths": [4, 8, 8]})
    imgs = CheckImages(images(24), "labelled")
    rec = export_bundle(path, images=imgs, int8=True, max_f1_drop=100.0)
    q = rec["graphs"]["int8"]
    assert q["passed"] and (path / ONNX_INT8).is_file()
    assert q["macro_f1_drop_points"] == pytest.approx(
        100 * (q["macro_f1_fp32"] - q["macro_f1_int8"])
    )
    assert Predictor.from_bundle(path, engine="onnx-int8").engine.name == "onnx-int8"
    assert Predictor.from_bundle(path).engine.name == "onnx"  # auto never picks INT8

    other = make_bundle(tmp_path / "x", "small_cnn", {"widths": [4, 8, 8]})
    with pytest.raises(ExportRefused, match="INT8 export refused"):
        # impossible: the macro-F1 would have to rise by 1000 points
        export_bundle(other, images=imgs, int8=True, max_f1_drop=-1000.0)
    verify_bundle(other)
    assert not (other / ONNX_INT8).exists() and (other / ONNX_FP32).is_file()
    rec = json.loads((other / "export.json").read_text())
    assert rec["graphs"]["int8"]["passed"] is False and "reason" in rec["graphs"]["int8"]
    assert rec["graphs"]["fp32"]["passed"]
    with pytest.raises(MedlensError, match="INT8"):
        Predictor.from_bundle(other, engine="onnx-int8")


def test_fp32_refused_when_parity_fails(tmp_path: Path):
    path = make_bundle(tmp_path, "small_cnn", {"widths": [4, 8, 8]})
    before = verify_bundle(path)
    with pytest.raises(ExportRefused, match="nothing was added"):
        export_bundle(path, images=CheckImages(images(4), "t"), tolerance=-1.0)
    assert verify_bundle(path) == before and not (path / ONNX_FP32).exists()


def test_bundle_refuses_a_changed_graph(tmp_path: Path):
    path = make_bundle(tmp_path, "small_cnn", {"widths": [4, 8, 8]})
    export_bundle(path, images=CheckImages(images(4), "t"))
    graph = path / ONNX_FP32
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx"):
        load_bundle(path)
    # re-sealed by hand: the checksums pass but the record's hash does not, so no engine uses it
    write_sums(path)
    assert verified_graph(load_bundle(path)) is None
    assert Predictor.from_bundle(path).engine.name == "torch"
    with pytest.raises(MedlensError, match="no verified FP32 ONNX graph"):
        Predictor.from_bundle(path, engine="onnx")


def test_not_exportable_model_is_refused_and_recorded(tmp_path: Path):
    # a classical model's bundle (spec only: the export refuses before building anything)
    path = make_bundle(tmp_path, "small_cnn", {"widths": [4, 8, 8]}, spec_name="hog_mlp")
    with pytest.raises(NotExportable, match="classical"):
        export_bundle(path, images=CheckImages(images(2), "t"))
    rec = export_after_training(path, CheckImages(images(2), "t"))
    assert rec["graphs"] == {} and "classical" in rec["not_exported"]
    verify_bundle(path)


def test_validation_images_need_a_run_or_data(tmp_path: Path):
    path = make_bundle(tmp_path, "small_cnn", {"widths": [4, 8, 8]})
    with pytest.raises(MedlensError, match="--calibration-data"):
        export_bundle(path)


@pytest.mark.slow
def test_train_exports_by_default_and_cli_reexports(tmp_path: Path):
    from medlens.cli import main
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe
    from tests.conftest import tiny_recipe_dict

    res = run_recipe(
        parse_recipe(tiny_recipe_dict(), "t.yaml"), tmp_path, progress=False, track=False
    )
    rec = json.loads((res.bundle_dir / "export.json").read_text())
    assert rec["graphs"]["fp32"]["passed"] and "validation split" in rec["check_images"]
    assert Predictor.from_bundle(res.bundle_dir).engine.name == "onnx"
    # `medlens export` finds the same validation images from the run folder's splits.csv
    main(["export", str(res.bundle_dir), "--int8", "--max-f1-drop", "100"])  # exits only on error
    rec2 = json.loads((res.bundle_dir / "export.json").read_text())
    assert rec2["graphs"]["int8"]["passed"]
    assert (
        rec2["graphs"]["fp32"]["parity"]["n_images"] == rec["graphs"]["fp32"]["parity"]["n_images"]
    )
