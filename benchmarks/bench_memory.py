"""Server memory under load (issue #12, P7), printed as JSON (never asserted).

    nice python benchmarks/bench_memory.py [--requests 1000] [--clients 4] [--big-side 7000]

The same loopback server and bundle as ``bench_concurrency.py`` (it stops by itself). Sends
``--requests`` uploads of phantom PNGs from ``--clients`` threads; after a tenth of them, three
``--big-side``² grey PNGs (7000² = 49 megapixels, tens of KB on disk, about 1 GB once decoded
and preprocessed) are uploaded at once while the small uploads go on. The pixel budget makes
the three decodes take turns. Reports the server's resident memory (VmRSS) at start, after
the first half (``big_done_at_request`` says whether the big images were finished by then),
and at the end, its peak (VmHWM), the growth over the
last half, errors, and how often decodes queued. Targets: <= 1.5 GB after the run, no growth
over the last half (we call anything under 50 MB noise).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_concurrency import Server, load, make_bundle, make_images, stats_ms


def big_png(side: int) -> bytes:
    """A ``side`` x ``side`` grey PNG with some structure (so it is gradable), tiny on disk."""
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.new("L", (side, side), 40)
    d = ImageDraw.Draw(im)
    for k in range(8):
        r = side // 2 - k * side // 20
        d.ellipse([side // 2 - r, side // 2 - r, side // 2 + r, side // 2 + r], fill=60 + 20 * k)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    del im
    _ = np  # numpy import kept for symmetry with the other benchmarks
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--big-side", type=int, default=7000)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--server-s", type=float, default=1500)
    args = ap.parse_args()
    import requests as http

    out: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="medlens-bench-mem-") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root, args.model, args.size)
        files = make_images(root, 32, args.size)
        payloads = [(f.name, f.read_bytes()) for f in files]
        big = big_png(args.big_side)
        out.update(model=args.model, big_png_kb=round(len(big) / 1024, 1),
                   big_megapixels=round(args.big_side**2 / 1e6, 1))  # fmt: skip
        server = Server(bundle, root, args.server_s)
        try:
            token = server.wait_ready()
            hdr = {"Authorization": f"Bearer {token}"}
            out["rss_at_start"] = server.rss_mb()
            lock = threading.Lock()
            counter = iter(range(args.requests))
            lat: list[float] = []
            errors: list[str] = []
            half = threading.Event()
            marks: dict[str, Any] = {}

            def post(c: Any, name: str, data: bytes) -> tuple[bool, str]:
                try:
                    r = c.post(base + "/api/v1/predict", headers=hdr,
                               files={"file": (name, data, "image/png")}, timeout=600)  # fmt: skip
                    return r.status_code == 201, f"{r.status_code} {r.text[:120]}"
                except http.RequestException as exc:
                    return False, f"{type(exc).__name__}: {exc}"

            base = server.base

            def client() -> None:
                with http.Session() as c:
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return
                        if i == args.requests // 10:
                            half.set()  # the three big images go now
                        name, data = payloads[i % len(payloads)]
                        t = time.perf_counter()
                        ok, msg = post(c, name, data)
                        with lock:
                            lat.append(time.perf_counter() - t)
                            if not ok:
                                errors.append(msg)
                        if i == args.requests // 2 + args.clients:
                            marks["rss_after_first_half"] = server.rss_mb()

            big_results: list[tuple[bool, str, float]] = []

            def big_client() -> None:
                half.wait(1200)
                with http.Session() as c:
                    t = time.perf_counter()
                    ok, msg = post(c, "big.png", big)
                    big_results.append((ok, msg, round(time.perf_counter() - t, 1)))
                with lock:
                    marks["big_done_at_request"] = len(lat)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
            threads += [threading.Thread(target=big_client, daemon=True) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(1500)
            out["wall_s"] = round(time.perf_counter() - t0, 1)
            out["load_avg_1min"] = load()
            time.sleep(2)
            out["rss_after_first_half"] = marks.get("rss_after_first_half")
            out["big_done_at_request"] = marks.get("big_done_at_request")
            out["rss_at_end"] = server.rss_mb()
            first = (out["rss_after_first_half"] or {}).get("rss_mb")
            if first is not None:
                out["growth_last_half_mb"] = round(out["rss_at_end"]["rss_mb"] - first, 1)
            out["errors"] = len(errors)
            out["error_examples"] = errors[:3]
            out["big_uploads"] = [{"ok": ok, "s": s, "msg": "" if ok else m}
                                  for ok, m, s in big_results]  # fmt: skip
            out["latency"] = stats_ms(lat)
            out["server"] = server.stats()
            out["targets"] = {"rss_at_end_mb": 1536, "growth_last_half_mb": "~0 (< 50 noise)"}
        finally:
            server.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
