"""Engine choice and the batch prediction path: identical decisions, lazy torch model, the CSV
written as it goes and an interrupted run resumed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from medlens.batch_predict import predict_files
from medlens.engines import default_threads, make_engine, set_default_engine
from medlens.errors import MedlensError
from medlens.export import CheckImages, export_bundle
from medlens.inference import Predictor
from tests.test_export import images, make_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_bundle(tmp_path_factory.mktemp("eng"), "small_cnn", {"widths": [4, 8, 8]})
    export_bundle(path, images=CheckImages(images(8), "t"))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    for i in range(23):
        a = (rng.random((36 + i, 40)) * 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"img{i:02d}.png")
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


def test_engine_names_threads_and_env(exported: Path, monkeypatch: pytest.MonkeyPatch):
    from medlens.bundle import load_bundle

    b = load_bundle(exported)
    with pytest.raises(MedlensError, match="choose one of"):
        make_engine(b, "tensorrt")
    monkeypatch.setenv("MEDLENS_ENGINE", "torch")
    assert Predictor.from_bundle(exported).engine.name == "torch"
    monkeypatch.delenv("MEDLENS_ENGINE")
    set_default_engine("onnx")
    try:
        assert Predictor.from_bundle(exported).engine.name == "onnx"
    finally:
        monkeypatch.delenv("MEDLENS_ENGINE", raising=False)
    monkeypatch.setenv("MEDLENS_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("MEDLENS_THREADS", "many")
    with pytest.raises(MedlensError, match="MEDLENS_THREADS"):
        default_threads()


def test_onnx_predictor_builds_torch_only_for_heatmaps(exported: Path):
    p = Predictor.from_bundle(exported)
    assert p.engine.name == "onnx" and p.engine._model is None
    assert p.model_info.kind == "network"  # answered without building the torch model
    pre = p.view(np.random.default_rng(0).random((40, 40)).astype(np.float32))
    assert p.engine._model is None
    overlay = p.heatmap(pre, "gradcam", None)
    assert overlay.dtype == np.uint8 and p.engine._model is not None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_batch_predict_matches_and_resumes(exported: Path, folder: Path, tmp_path: Path):
    from medlens.cli.cmd_predict import collect_files

    files = collect_files([folder])
    onnx_p = Predictor.from_bundle(exported, engine="onnx")
    torch_p = Predictor.from_bundle(exported, engine="torch")
    full = tmp_path / "full.csv"
    done, results = predict_files(onnx_p, files, full, batch_size=5, workers=2)
    assert done == files and len(_rows(full)) == len(files)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and "broken.png" in _rows(full)[0]["path"]  # sorted first
    # same decisions as the torch engine on the plain path
    plain = torch_p.predict_many(files)
    for a, b in zip(results, plain, strict=True):
        assert type(a) is type(b)
        if not isinstance(a, Exception):
            assert a.label == b.label and a.decision == b.decision

    # an interrupted run: the header and the first 9 rows were written
    part = tmp_path / "part.csv"
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(lines[:10]), encoding="utf-8")
    done2, _ = predict_files(onnx_p, files, part, batch_size=4, workers=1)
    assert done2 == files[9:]
    rows = _rows(part)
    assert [r["path"] for r in rows] == [str(f) for f in files]
    by_path = {r["path"]: r for r in _rows(full)}
    for r in rows:
        assert r == by_path[r["path"]]

    # --no-resume starts over; a CSV of another model is refused
    again, _ = predict_files(onnx_p, files[:3], part, resume=False)
    assert again == files[:3] and len(_rows(part)) == 3
    alien = tmp_path / "alien.csv"
    alien.write_text("path,something_else\nx,y\n", encoding="utf-8")
    with pytest.raises(MedlensError, match="other columns"):
        predict_files(onnx_p, files, alien)


def test_cli_predict_engine_and_resume(exported: Path, folder: Path, tmp_path: Path):
    from medlens.cli import main

    out = tmp_path / "p.csv"
    args = ["predict", str(exported), str(folder), "--out", str(out), "--engine", "torch"]
    args += ["--batch-size", "4", "--workers", "2", "--skip-unreadable", "--no-progress"]
    main(args)
    n = len(_rows(out))
    main(args)  # everything already written: nothing predicted twice
    assert len(_rows(out)) == n == 24
