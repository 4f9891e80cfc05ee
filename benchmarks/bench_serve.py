"""Latency of the clinician web service on this machine, printed as JSON (never asserted).

    python benchmarks/bench_serve.py [--n 20] [--bundle runs/chest_xray/bundle --images DIR] [--cold]

Without ``--bundle`` a tiny chest X-ray bundle is trained first (about 20 s). Then, through
FastAPI's TestClient (in-process, no network), one user uploads ``--n`` images and the script
reports median and 90th-percentile times of: the upload request (validate, decode, store,
predict, save), the result page (which computes the Grad-CAM++ heatmap on first view), the two
together (upload-to-result, what a clinician waits for), and the REST ``/api/v1/predict`` call.
Start-up warms every model with one prediction (``warm_up_s``); ``--cold`` skips that, so the
first upload's time (``first_request_s``) shows what the warm-up saves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PASSWORD = "benchmark passphrase 123"


def tiny_bundle(root: Path) -> tuple[Path, Path]:
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe

    recipe = {
        "name": "bench_cxr",
        "task": {
            "classes": ["normal", "pneumonia", "tuberculosis"],
            "positive": ["pneumonia", "tuberculosis"],
            "priority": ["tuberculosis", "pneumonia"],
        },
        "data": {"source": "phantoms", "phantoms": {"kind": "chest_xray", "n": 60, "size": 64}},
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "preprocess": [
            {"step": "grayscale"},
            {"step": "crop_border"},
            {"step": "exposure_check"},
            {"step": "clahe", "only_if_flagged": True},
            {"step": "resize", "size": 64},
            {"step": "normalize", "mean": [0.5], "std": [0.25]},
        ],
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16, 16]}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "early_stopping_patience": None},
        "evaluate": {"batch_size": 16, "n_bootstrap": 50},
    }
    res = run_recipe(parse_recipe(recipe, "bench.yaml"), root, progress=False, track=False)
    return Path(res.bundle_dir), next(root.glob("data/phantoms_*/images"))


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median_ms": round(1000 * statistics.median(s), 1),
        "p90_ms": round(1000 * s[min(len(s) - 1, int(0.9 * len(s)))], 1),
        "n": len(s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--images", type=Path)
    ap.add_argument("--cold", action="store_true", help="no model warm-up at start-up")
    args = ap.parse_args()

    import torch
    from fastapi.testclient import TestClient

    from medlens.serve import ServeSettings, create_app

    out: dict = {"machine": platform.machine(), "cpus": os.cpu_count()}
    out["torch_threads"] = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        if args.bundle:
            bundle, images = args.bundle, args.images
        else:
            bundle, images = tiny_bundle(root / "train")
            out["train_s"] = round(time.perf_counter() - t, 1)
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".dcm"))
        t = time.perf_counter()
        app = create_app(
            ServeSettings(
                bundles=[bundle],
                workspace=root / "ws",
                warm_explanations=False,
                warm_models=not args.cold,
            )
        )
        out["startup_s"] = round(time.perf_counter() - t, 2)
        out["warm_up_s"] = [
            None if m.warm_seconds is None else round(m.warm_seconds, 2)
            for m in app.state.medlens.models
        ]
        with TestClient(app, follow_redirects=False) as c:
            tok = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/signup").text)[1]
            c.post(
                "/signup",
                data={
                    "csrf_token": tok,
                    "username": "bench",
                    "password": PASSWORD,
                    "password2": PASSWORD,
                },
            )
            tok = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/upload").text)[1]

            def one(path: Path) -> tuple[float, float]:
                t0 = time.perf_counter()
                r = c.post(
                    "/upload",
                    data={"csrf_token": tok},
                    files={"file": (path.name, path.read_bytes())},
                )
                assert r.status_code == 303, r.text[:300]
                t1 = time.perf_counter()
                page = c.get(r.headers["location"])
                assert page.status_code == 200
                return t1 - t0, time.perf_counter() - t1

            t = time.perf_counter()
            one(files[0])  # first request: imports the CAM library, warms caches
            out["first_request_s"] = round(time.perf_counter() - t, 2)
            uploads, pages = [], []
            for i in range(args.n):
                u, p = one(files[1 + i % (len(files) - 1)])
                uploads.append(u)
                pages.append(p)
            out["upload_request"] = stats(uploads)
            out["result_page_with_heatmap"] = stats(pages)
            out["upload_to_result"] = stats([u + p for u, p in zip(uploads, pages, strict=True)])

            tok = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/tokens").text)[1]
            page = c.post("/tokens", data={"csrf_token": tok, "name": "bench"}).text
            token = re.search(r'value="(mlt_[^"]+)"', page)[1]
            api = []
            for i in range(args.n):
                t0 = time.perf_counter()
                r = c.post(
                    "/api/v1/predict",
                    headers={"Authorization": f"Bearer {token}"},
                    files={
                        "file": (files[i % len(files)].name, files[i % len(files)].read_bytes())
                    },
                )
                assert r.status_code == 201, r.text[:300]
                api.append(time.perf_counter() - t0)
            out["api_predict"] = stats(api)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
