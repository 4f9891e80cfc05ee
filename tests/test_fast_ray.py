"""``medlens predict --engine ray``: the same predictor as Ray Data actors on a local 2-worker
Ray, with results identical to the plain batch path (CSV byte for byte, unreadable files
included), resumed like it, and fed from a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medlens[ray]'")

from medlens.batch_predict import predict_files  # noqa: E402
from medlens.errors import MedlensError  # noqa: E402
from medlens.inference import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    """A local Ray with 2 CPUs for the module (started once: it takes seconds)."""
    import logging

    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    except Exception as exc:  # e.g. no shared memory in a sandbox
        pytest.skip(f"Ray cannot start on this machine: {exc}")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image

    from medlens.export import CheckImages, export_bundle
    from tests.test_export import images, make_bundle

    root = tmp_path_factory.mktemp("ray")
    bundle = make_bundle(root, "small_cnn", {"widths": [4, 8, 8]})
    export_bundle(bundle, images=CheckImages(images(8), "t"))
    folder = root / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(13):
        Image.fromarray((rng.random((36 + i, 40)) * 255).astype(np.uint8)).save(
            folder / f"img{i:02d}.png"
        )
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "blank.png")  # not assessed
    (folder / "broken.png").write_bytes(b"not a png at all")
    return bundle, folder


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_ray_path_matches_the_plain_path_and_resumes(local_ray, setup, tmp_path: Path):  # type: ignore[no-untyped-def]
    from medlens.ray_predict import predict_files_ray

    bundle, folder = setup
    pred = Predictor.from_bundle(bundle)
    assert pred.engine.name == "onnx"  # auto picks the verified graph, in the actors too
    files = _files(folder)
    plain_csv, ray_csv = tmp_path / "plain.csv", tmp_path / "ray.csv"
    _, plain = predict_files(pred, files, plain_csv, batch_size=4)
    done, got = predict_files_ray(pred, files, ray_csv, batch_size=4, workers=2)
    assert done == files
    assert ray_csv.read_text() == plain_csv.read_text()  # identical rows, identical order
    for a, b in zip(plain, got, strict=True):
        if isinstance(a, MedlensError):
            assert isinstance(b, MedlensError) and str(b) == str(a)
        else:
            assert b.status == a.status and b.decision == a.decision and b.label == a.label
            assert b.source == a.source
            for c, p in a.probabilities.items():
                assert b.probabilities[c] == pytest.approx(p, abs=1e-7)
    assert any(getattr(r, "status", "") == "ungradable" for r in got)

    # Resume: drop the last 5 rows, run again: only those 5 are predicted, CSV identical.
    lines = ray_csv.read_text().splitlines(keepends=True)
    ray_csv.write_text("".join(lines[:-5]))
    again, _ = predict_files_ray(pred, files, ray_csv, batch_size=4, workers=2)
    assert len(again) == 5
    assert sorted(ray_csv.read_text().splitlines()) == sorted(plain_csv.read_text().splitlines())


def test_ray_path_reads_a_manifest(local_ray, setup, tmp_path: Path):  # type: ignore[no-untyped-def]
    from medlens.ray_predict import manifest_paths, predict_files_ray

    bundle, folder = setup
    pngs = [f for f in _files(folder) if f.name.startswith("img")][:6]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{f},a\n" for f in pngs))
    assert manifest_paths([manifest]) == pngs
    pred = Predictor.from_bundle(bundle)
    done, got = predict_files_ray(pred, [manifest], None, batch_size=3, workers=2)
    assert done == pngs
    plain = pred.predict_many([str(f) for f in pngs])
    for a, b in zip(plain, got, strict=True):
        assert b.label == a.label  # type: ignore[union-attr]
        for c, p in a.probabilities.items():  # type: ignore[union-attr]
            assert b.probabilities[c] == pytest.approx(p, abs=1e-7)


def test_cli_predict_engine_ray(local_ray, setup, tmp_path: Path):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from medlens.cli import app

    bundle, folder = setup
    plain, on_ray = tmp_path / "plain.csv", tmp_path / "ray.csv"
    base = ["predict", str(bundle), str(folder), "--batch-size", "4"]
    r1 = CliRunner().invoke(app, [*base, "--out", str(plain), "--skip-unreadable"])
    r2 = CliRunner().invoke(
        app, [*base, "--out", str(on_ray), "--skip-unreadable", "--engine", "ray"]
    )
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    assert on_ray.read_text() == plain.read_text()
