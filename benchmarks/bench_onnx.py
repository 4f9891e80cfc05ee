"""ONNX Runtime vs eager PyTorch on the same weights, and INT8 vs FP32 (issue #12: P1, P1q).

P1 — ms/image at batch 1 and batch 32, 224 px, 3 channels, ``pretrained=False`` (random weights:
speed does not depend on them): the graph is what ``medlens export`` writes (logits + features)
and runs in the session medlens serves with (:func:`medlens.engines.onnx_session`); torch runs
the same module eagerly under ``inference_mode``. Both use every core (``--threads``).
P1q — ``resnet50`` and ``efficientnet_b0`` trained briefly on chest phantoms (``--q-size`` px,
``--q-epochs`` epochs) by ``medlens train``'s own code path, then ``medlens export --int8``:
validation macro-F1 of FP32 vs INT8 from ``export.json`` and ms/image at batch 32 of both graphs.

Prints one JSON object; nothing is asserted. Note the load average printed with it.

    nice .venv/bin/python benchmarks/bench_onnx.py                      # P1 and P1q
    nice .venv/bin/python benchmarks/bench_onnx.py --only P1 --models small_cnn resnet50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

P1_MODELS = [
    "small_cnn",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "resnet50",
    "convnextv2_tiny",
    "deit_small_patch16_224",
]


def _time(fn: Any, x: Any, budget_s: float, min_runs: int = 3) -> float:
    """Median seconds of ``fn(x)`` after one warm-up call, within about ``budget_s``."""
    fn(x)
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times)


def _engines(model: Any, tmp: Path, size: int, threads: int) -> tuple[Any, Any, Path]:
    import torch

    from medlens.engines import call_with_features, onnx_session
    from medlens.export.graph import export_graph

    model.eval()
    example = np.random.default_rng(0).random((2, 3, size, size)).astype(np.float32)
    path = tmp / "m.onnx"
    export_graph(model, example, path, None, None, [])
    sess = onnx_session(path, threads)

    def run_torch(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return call_with_features(model, lambda: model(torch.from_numpy(x)), None)

    def run_ort(x: np.ndarray) -> Any:
        return sess.run(None, {"image": x})

    return run_torch, run_ort, path


def p1(models: list[str], size: int, threads: int, budget: float) -> list[dict[str, Any]]:
    import torch

    from medlens.models import create_model

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model = create_model(name, num_classes=3, in_chans=3, pretrained=False)
        with tempfile.TemporaryDirectory() as tmp:
            run_torch, run_ort, _ = _engines(model, Path(tmp), size, threads)
            row: dict[str, Any] = {"model": name}
            for bs in (1, 32):
                x = np.random.default_rng(bs).random((bs, 3, size, size)).astype(np.float32)
                t = _time(run_torch, x, budget) / bs * 1e3
                o = _time(run_ort, x, budget) / bs * 1e3
                row[f"torch_ms_b{bs}"] = round(t, 3)
                row[f"ort_ms_b{bs}"] = round(o, 3)
                row[f"speedup_b{bs}"] = round(t / o, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def p1q(models: list[str], size: int, epochs: int, n: int, threads: int) -> list[dict[str, Any]]:
    from medlens.engines import onnx_session
    from medlens.export import export_bundle
    from medlens.recipes import load_recipe, parse_recipe
    from medlens.workflow import run_recipe

    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench_p1q_"))
    for name in models:
        r = load_recipe("chest_xray")
        d = r.model_dump(mode="json", exclude={"source_dir"})
        d["name"] = f"p1q_{name}"
        d["data"].update({"source": "phantoms"})
        d["data"]["phantoms"].update({"n": n, "size": size})
        d["preprocess"] = [
            {"step": "rgb"},
            {"step": "resize", "size": size},
            {"step": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        ]
        d["model"] = {"name": name, "kwargs": {}}
        d["candidates"] = []
        d["train"].update({"epochs": epochs, "batch_size": 16, "early_stopping_patience": None})
        d["evaluate"].update({"n_bootstrap": 20})
        d["explain"]["enabled"] = False
        recipe = parse_recipe(d, f"p1q {name}", r.source_dir)
        t0 = time.perf_counter()
        res = run_recipe(recipe, root, progress=False, track=False, export_onnx=False)
        train_s = time.perf_counter() - t0
        rec = export_bundle(res.bundle_dir, int8=True, max_f1_drop=100.0, threads=threads)
        q = rec["graphs"]["int8"]
        x = np.random.default_rng(0).random((32, 3, size, size)).astype(np.float32)
        ms = {}
        for which, fname in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
            sess = onnx_session(res.bundle_dir / fname, threads)
            ms[which] = _time(lambda a, s=sess: s.run(None, {"image": a}), x, 6.0) / 32 * 1e3
        row = {
            "model": name,
            "size": size,
            "train_epochs": epochs,
            "train_s": round(train_s, 1),
            "val_images": q["n_images"],
            "macro_f1_fp32": round(q["macro_f1_fp32"], 4),
            "macro_f1_int8": round(q["macro_f1_int8"], 4),
            "f1_drop_points": round(q["macro_f1_drop_points"], 2),
            "decisions_changed": q["decisions_changed"],
            "fp32_ms_b32": round(ms["fp32"], 3),
            "int8_ms_b32": round(ms["int8"], 3),
            "speedup": round(ms["fp32"] / ms["int8"], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["P1", "P1q"], default=None)
    ap.add_argument("--models", nargs="*", default=P1_MODELS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per timing")
    ap.add_argument("--q-models", nargs="*", default=["resnet50", "efficientnet_b0"])
    ap.add_argument("--q-size", type=int, default=128)
    ap.add_argument("--q-epochs", type=int, default=2)
    ap.add_argument("--q-n", type=int, default=160, help="phantom images for P1q")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict[str, Any] = {"threads": a.threads, "load_before": os.getloadavg()}
    if a.only in (None, "P1"):
        out["P1"] = p1(a.models, a.size, a.threads, a.budget)
    if a.only in (None, "P1q"):
        out["P1q"] = p1q(a.q_models, a.q_size, a.q_epochs, a.q_n, a.threads)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
