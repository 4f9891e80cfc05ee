"""Heatmap latency per method, printed as JSON (never asserted in tests).

    python benchmarks/bench_explain.py [--repeats 20] [--threads N]

Milliseconds per heatmap (one image, hooks registered and released each call, as
:func:`medlens.explain.explain` does in serving) for every method, on the small CNN at 64 px
(1 channel) and resnet18 at 128 px (3 channels). Random weights: the cost does not depend on them.
ScoreCAM runs one forward per channel of the target layer, so it is timed with fewer repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()

    import torch

    from medlens.explain.cam import METHODS, explain
    from medlens.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "unit": "ms per heatmap (median)",
        "smoothgradcam++": "n_samples=8, noise=0.1",
        "models": {},
    }
    for name, chans, size in (("small_cnn", 1, 64), ("resnet18", 3, 128)):
        torch.manual_seed(0)
        model = create_model(name, num_classes=3, in_chans=chans, pretrained=False).eval()
        x = torch.randn(1, chans, size, size)
        explain(model, x, "gradcam")  # warm-up: lazy imports, allocator
        res: dict[str, float] = {}
        for method in METHODS:
            reps = max(2, args.repeats // 5) if method == "scorecam" else args.repeats
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                explain(model, x, method)
                times.append((time.perf_counter() - t) * 1000.0)
            res[method] = round(statistics.median(times), 2)
        t = time.perf_counter()
        for _ in range(args.repeats):
            explain(model, x, "gradcam", aug_smooth=True)
        res["gradcam+aug_smooth"] = round((time.perf_counter() - t) * 1000.0 / args.repeats, 2)
        out["models"][f"{name}@{size}px"] = res
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
