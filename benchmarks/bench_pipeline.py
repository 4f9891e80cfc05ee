"""Core pipeline speed on this machine, printed as JSON (never asserted in tests).

    python benchmarks/bench_pipeline.py [--n 600] [--size 128]

Measures phantom generation, decoding + preprocessing (the recipe's pipeline), small-CNN
training throughput and Predictor latency, all in one run so ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()

    import numpy as np
    import torch

    from medlens.data.io import read_image
    from medlens.data.phantoms import generate_chest_phantoms
    from medlens.models import create_model
    from medlens.recipes import load_recipe

    out: dict = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    recipe = load_recipe("chest_xray")
    pipeline = recipe.pipeline()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        manifest = generate_chest_phantoms(Path(tmp), n=args.n, size=args.size, seed=0)
        dt = time.perf_counter() - t
        out["phantoms_per_s"] = args.n / dt
        files = sorted((manifest.parent / "images").glob("*.png"))
        t = time.perf_counter()
        arrays = [pipeline(read_image(f).array).image for f in files]
        out["decode_preprocess_per_s"] = len(files) / (time.perf_counter() - t)

    x = torch.from_numpy(np.stack(arrays[:32]))
    y = torch.randint(0, 3, (32,))
    model = create_model(recipe.model.name, 3, recipe.in_chans(), **recipe.model.kwargs)
    opt = torch.optim.AdamW(model.parameters())
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    t = time.perf_counter()
    steps = 10
    for _ in range(steps):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    out["train_img_per_s"] = steps * 32 / (time.perf_counter() - t)
    model.eval()
    lat = []
    with torch.inference_mode():
        for a in arrays[:50]:
            t = time.perf_counter()
            model(torch.from_numpy(a[None]))
            lat.append((time.perf_counter() - t) * 1000)
    out["inference_ms_median"] = statistics.median(lat)
    out["input_size"] = list(pipeline.output_size)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
