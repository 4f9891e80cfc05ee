"""Served-path overhead and concurrency (issue #12, P2 and P5), printed as JSON (never asserted).

    nice python benchmarks/bench_concurrency.py [--model resnet18] [--size 224] [--n 40]
        [--clients 16] [--requests 256] [--images 64]

A bundle of ``--model`` (random weights, 1 channel, ``--size`` px, its FP32 ONNX graph checked
and added) and ``--images`` phantom PNGs are made in a temporary folder. A real server
(uvicorn, the service's own app) is started in a child process on 127.0.0.1 with an API token
created directly in its database; it stops by itself after ``--server-s`` seconds at most, and
this script stops it (by its process id) when done.

* **P2** (one request at a time): p50 of ``POST /api/v1/predict`` against p50 of the model's
  own work in this process (``Predictor.predict`` on the file: decode, preprocessing, forward,
  same engine); and p50 of predict + ``GET .../explain?method=gradcam`` against
  ``Predictor.predict`` + ``Predictor.heatmap``. Target: overhead <= 50 %.
* **P5** (``--clients`` threads, ``--requests`` uploads in all, bounded): errors (target 0),
  images/s against ``medlens predict``'s path (:func:`medlens.batch_predict.predict_files`) on
  the same images in this process (target >= 80 %), p50/p95 latency, and the server's batch
  sizes (``/api/v1/health`` does not show them: the server prints them to its log file).

The machine's load average is printed beside the figures: the CPU is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PASSWORD = "benchmark passphrase 123"


# --------------------------------------------------------------------------------------------
# Fixtures: a bundle with its ONNX graph, phantom images
# --------------------------------------------------------------------------------------------


def make_bundle(root: Path, model: str, size: int) -> Path:
    """Random-weight ``model`` bundle (3 classes, grey ``size`` px) with its checked ONNX graph."""
    from dataclasses import dataclass

    import numpy as np
    import torch

    from medlens.bundle import save_bundle
    from medlens.export import CheckImages, export_bundle
    from medlens.models import create_model

    @dataclass
    class Img:
        array: Any
        label: str

        def load(self) -> Any:
            return self.array

    classes = ["normal", "benign", "malignant"]
    torch.manual_seed(0)
    net = create_model(model, num_classes=3, in_chans=1).eval()
    pre = [
        {"step": "grayscale"},
        {"step": "resize", "size": size},
        {"step": "normalize", "mean": [0.5], "std": [0.25]},
    ]
    path = save_bundle(
        root / "bundle",
        net,
        name="bench",
        model_spec={"name": model, "num_classes": 3, "in_chans": 1, "kwargs": {}},
        classes=classes,
        task={"classes": classes},
        preprocess=pre,
        recipe_yaml="name: bench\n",
        data_fingerprint={"n_samples": 0},
        intended_use="benchmark",
    )
    rng = np.random.default_rng(0)
    imgs = [Img(rng.random((size, size)).astype(np.float32), classes[i % 3]) for i in range(8)]
    export_bundle(path, images=CheckImages(imgs, "bench"))
    return path


def make_images(root: Path, n: int, size: int) -> list[Path]:
    """``n`` brain-MRI phantom PNGs of ``size`` px."""
    from medlens.data.phantoms import generate_phantoms

    manifest = generate_phantoms("brain_tumor", root / "phantoms", n=n, size=size, seed=0)
    return sorted(manifest.parent.rglob("*.png"))[:n]


# --------------------------------------------------------------------------------------------
# A loopback server in a child process that stops by itself
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_child(args: argparse.Namespace) -> None:
    """(Child process.) Create the app, an account and a token, serve on 127.0.0.1 until
    ``--server-s`` seconds have passed or the parent stops us."""
    import uvicorn

    from medlens.serve import ServeSettings, create_app
    from medlens.serve.accounts import create_api_token, create_user

    settings = ServeSettings(
        bundles=[Path(args.bundle)],
        workspace=Path(args.workspace),
        warm_explanations=True,
        batch_worker=False,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
    )
    app = create_app(settings)
    state = app.state.medlens
    with state.db() as db:
        user = create_user(db, "bench", PASSWORD, role=None, min_password_length=10)
        _, token = create_api_token(db, user, "bench")
    Path(args.token_file).write_text(token)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    stop_at = time.monotonic() + args.server_s

    def watchdog() -> None:
        while time.monotonic() < stop_at and not server.should_exit:
            time.sleep(0.5)
        server.should_exit = True

    def report() -> None:  # batch sizes, for the parent to read after the run
        while not server.should_exit:
            time.sleep(1.0)
            stats = {m.key: m.batcher.stats.as_dict() for m in state.models if m.batcher}
            from medlens.serve import pixelbudget

            stats["pixel_budget"] = pixelbudget.shared().describe()  # type: ignore[assignment]
            stats["heatmaps"] = state.models.heatmaps.describe()  # type: ignore[assignment]
            Path(args.token_file + ".stats").write_text(json.dumps(stats))

    threading.Thread(target=watchdog, daemon=True).start()
    threading.Thread(target=report, daemon=True).start()
    server.run()


class Server:
    """The child server: started, waited for, stopped by its own process id."""

    def __init__(self, bundle: Path, root: Path, server_s: float, **opts: Any) -> None:
        self.port = free_port()
        self.token_file = root / "token"
        self.log = (root / "server.log").open("w")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve().parent / "bench_concurrency.py"),
            "--serve",
            "--bundle",
            str(bundle),
            "--workspace",
            str(root / "ws"),
            "--port",
            str(self.port),
            "--token-file",
            str(self.token_file),
            "--server-s",
            str(server_s),
            "--batch-max",
            str(opts.get("batch_max", 8)),
            "--batch-wait-ms",
            str(opts.get("batch_wait_ms", 2.0)),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> str:
        import requests

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            if self.token_file.is_file():
                try:
                    if requests.get(self.base + "/api/v1/health", timeout=2).status_code < 500:
                        return self.token_file.read_text()
                except requests.RequestException:
                    pass
            time.sleep(0.3)
        raise RuntimeError("server did not start in time")

    def stats(self) -> dict[str, Any]:
        p = Path(str(self.token_file) + ".stats")
        time.sleep(1.2)
        return json.loads(p.read_text()) if p.is_file() else {}

    def rss_mb(self) -> dict[str, float]:
        """The server process's resident memory now and at its peak (Linux /proc)."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key = "rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"
                out[key] = round(int(line.split()[1]) / 1024, 1)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def stats_ms(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    if not s:
        return {"n": 0}
    return {
        "p50_ms": round(1000 * statistics.median(s), 1),
        "p95_ms": round(1000 * s[min(len(s) - 1, int(0.95 * len(s)))], 1),
        "n": len(s),
    }


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def p2(base: str, token: str, predictor: Any, files: list[Path], n: int) -> dict[str, Any]:
    import requests

    client = requests.Session()
    hdr = {"Authorization": f"Bearer {token}"}
    own, own_heat, api, api_heat = [], [], [], []
    for i in range(n + 2):  # the first two warm both sides (CAM library, caches)
        f = files[i % len(files)]
        t0 = time.perf_counter()
        pred = predictor.predict(f)
        t1 = time.perf_counter()
        target = predictor.classes.index(pred.decision or pred.label)
        predictor.heatmap(predictor.view(f), "gradcam", target)
        t2 = time.perf_counter()
        r = client.post(
            base + "/api/v1/predict",
            headers=hdr,
            files={"file": (f.name, f.read_bytes(), "image/png")},
        )
        t3 = time.perf_counter()
        assert r.status_code == 201, r.text[:300]
        h = client.get(
            f"{base}/api/v1/results/{r.json()['id']}/explain?method=gradcam", headers=hdr
        )
        t4 = time.perf_counter()
        assert h.status_code == 200, h.text[:300]
        if i >= 2:
            own.append(t1 - t0)
            own_heat.append(t2 - t0)
            api.append(t3 - t2)
            api_heat.append(t4 - t2)
    out: dict[str, Any] = {
        "load_avg_1min": load(),
        "model_predict": stats_ms(own),
        "api_predict": stats_ms(api),
        "model_predict_plus_heatmap": stats_ms(own_heat),
        "api_predict_plus_explain": stats_ms(api_heat),
    }
    m, a = statistics.median(own), statistics.median(api)
    mh, ah = statistics.median(own_heat), statistics.median(api_heat)
    out["overhead_no_heatmap_pct"] = round(100 * (a - m) / m, 1)
    out["overhead_with_heatmap_pct"] = round(100 * (ah - mh) / mh, 1)
    out["target_overhead_pct"] = 50
    return out


def p5(
    base: str, token: str, predictor: Any, files: list[Path], clients: int, requests: int
) -> dict[str, Any]:
    import requests as http

    from medlens.batch_predict import predict_files

    # medlens predict's path on the same images (this process, server idle meanwhile)
    todo = [files[i % len(files)] for i in range(requests)]
    t0 = time.perf_counter()
    predict_files(predictor, todo, None, batch_size=32, workers=2)
    cli_rate = requests / (time.perf_counter() - t0)
    cli_load = load()

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    payloads = {f: f.read_bytes() for f in files}

    def client() -> None:
        with http.Session() as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                f = files[i % len(files)]
                t = time.perf_counter()
                try:
                    r = c.post(
                        base + "/api/v1/predict",
                        headers={"Authorization": f"Bearer {token}"},
                        files={"file": (f.name, payloads[f], "image/png")},
                        timeout=300,
                    )
                    ok = r.status_code == 201
                    msg = "" if ok else f"{r.status_code} {r.text[:120]}"
                except http.RequestException as exc:
                    ok, msg = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    lat.append(time.perf_counter() - t)
                    if not ok:
                        errors.append(msg)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    rate = requests / wall
    return {
        "load_avg_1min": load(),
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "error_examples": errors[:3],
        "api_images_per_s": round(rate, 2),
        "medlens_predict_images_per_s": round(cli_rate, 2),
        "medlens_predict_load_avg_1min": cli_load,
        "ratio_pct": round(100 * rate / cli_rate, 1),
        "target_ratio_pct": 80,
        "latency": stats_ms(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bundle")
    ap.add_argument("--workspace")
    ap.add_argument("--port", type=int)
    ap.add_argument("--token-file")
    ap.add_argument("--server-s", type=float, default=900, help="the server stops after this")
    ap.add_argument("--batch-max", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=2.0)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--n", type=int, default=40, help="P2 sequential requests")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=256, help="P5 uploads in all")
    ap.add_argument("--skip", default="", help="comma list of p2,p5 to skip")
    args = ap.parse_args()
    if args.serve:
        serve_child(args)
        return

    from medlens.inference import Predictor

    out: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="medlens-bench-conc-") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root, args.model, args.size)
        files = make_images(root, args.images, args.size)
        out.update(model=args.model, size=args.size, engine="onnx", images=len(files))
        server = Server(bundle, root, args.server_s, batch_max=args.batch_max,
                        batch_wait_ms=args.batch_wait_ms)  # fmt: skip
        try:
            token = server.wait_ready()
            out["server_at_start"] = server.rss_mb()
            predictor = Predictor.from_bundle(bundle)
            out["engine"] = predictor.engine.name
            predictor.warm_up()
            if "p2" not in args.skip:
                out["P2"] = p2(server.base, token, predictor, files, args.n)
            if "p5" not in args.skip:
                out["P5"] = p5(server.base, token, predictor, files, args.clients, args.requests)
            out["server"] = {**server.rss_mb(), **server.stats()}
        finally:
            server.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
