"""``medlens predict`` over a folder vs raw ONNX Runtime on pre-decoded tensors (issue #12: P3),
and ``medlens --help`` wall time (P0).

P3 — ``--n`` small PNG phantoms (``--size`` px) and a small-CNN bundle (random weights, its
checked ONNX graph exported): images/s of

- ``cli``: the command itself, ``medlens predict BUNDLE FOLDER --out CSV`` (a fresh process:
  imports, bundle verification and session start included);
- ``in_process``: :func:`medlens.batch_predict.predict_files` (decode pool, preprocessing,
  input checks, calibration, policy, the CSV written as it goes);
- ``raw_ort``: the same session options on the already decoded and preprocessed tensors,
  batches of 32 — the ceiling.

P0 — median wall time of ``medlens --help`` over 5 runs.

    nice .venv/bin/python benchmarks/bench_predict.py --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDLENS = [sys.executable, "-m", "medlens"]


def p0(runs: int = 5) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*MEDLENS, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "runs": [round(t, 3) for t in times]}


def _bundle(root: Path, size: int) -> Path:
    import torch

    from medlens.bundle import save_bundle
    from medlens.data.manifest import load_manifest
    from medlens.export import CheckImages, export_bundle
    from medlens.models import create_model
    from medlens.recipes import load_recipe

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_chans=1).eval()
    pre = [
        {"step": "grayscale"},
        {"step": "resize", "size": size},
        {"step": "normalize", "mean": [0.5], "std": [0.25]},
    ]
    classes = ["normal", "pneumonia", "tuberculosis"]
    path = save_bundle(
        root / "bundle",
        model,
        name="bench",
        model_spec={"name": "small_cnn", "num_classes": 3, "in_chans": 1, "kwargs": {}},
        classes=classes,
        task={"classes": classes},
        preprocess=pre,
        recipe_yaml="name: bench\n",
        data_fingerprint={"n_samples": 0},
        intended_use="benchmark",
    )
    recipe = load_recipe("chest_xray")
    manifest = load_manifest(recipe.data, root / "data" / "manifest.csv", classes)
    export_bundle(path, images=CheckImages(manifest.samples[:64], "benchmark phantoms"))
    return path


def p3(n: int, size: int, workers: int) -> dict[str, Any]:
    from medlens.batch_predict import predict_files
    from medlens.cli.cmd_predict import collect_files
    from medlens.data.phantoms import generate_phantoms
    from medlens.inference import Predictor

    root = Path(tempfile.mkdtemp(prefix="bench_p3_"))
    generate_phantoms("chest_xray", root / "data", n=n, size=size, seed=0)
    bundle = _bundle(root, size)
    files = collect_files([root / "data" / "images"])  # not the lesion masks beside them
    out: dict[str, Any] = {"n_images": len(files), "size": size, "workers": workers}

    csv = root / "cli.csv"
    t0 = time.perf_counter()
    cmd = [*MEDLENS, "predict", str(bundle), str(root / "data" / "images"), "--out", str(csv)]
    subprocess.run(
        [*cmd, "--workers", str(workers), "--no-progress"], check=True, capture_output=True
    )
    out["cli_images_per_s"] = round(len(files) / (time.perf_counter() - t0), 1)

    predictor = Predictor.from_bundle(bundle)
    assert predictor.engine.name == "onnx"
    predict_files(predictor, files[:64], None)  # warm
    t0 = time.perf_counter()
    predict_files(predictor, files, root / "inproc.csv", batch_size=32, workers=workers)
    out["in_process_images_per_s"] = round(len(files) / (time.perf_counter() - t0), 1)

    tensors = np.stack([predictor.preprocess(f).image for f in files]).astype(np.float32)
    sess = predictor.engine.session
    sess.run(None, {"image": tensors[:32]})
    t0 = time.perf_counter()
    for i in range(0, len(tensors), 32):
        sess.run(None, {"image": tensors[i : i + 32]})
    out["raw_ort_images_per_s"] = round(len(files) / (time.perf_counter() - t0), 1)
    out["cli_vs_raw"] = round(out["cli_images_per_s"] / out["raw_ort_images_per_s"], 3)
    out["in_process_vs_raw"] = round(
        out["in_process_images_per_s"] / out["raw_ort_images_per_s"], 3
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["P0", "P3"], default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res: dict[str, Any] = {"load_before": os.getloadavg()}
    if a.only in (None, "P0"):
        res["P0"] = p0()
    if a.only in (None, "P3"):
        res["P3"] = p3(a.n, a.size, a.workers)
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
