"""Serving throughput parts (issue #12): the micro-batcher, the pixel budget, the heatmap pool.

Concurrency is real (threads); nothing here measures time — the waits below only give a
blocked thread the chance to show it is blocked, and every join has a timeout so a bug fails
the test instead of hanging it.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medlens.serve.heatmaps import HeatmapPool
from medlens.serve.microbatch import MicroBatcher
from medlens.serve.pixelbudget import BudgetExceeded, BudgetTimeout, PixelBudget

JOIN_S = 20.0


def _threads(n: int, target, *args) -> list[threading.Thread]:  # type: ignore[no-untyped-def]
    ts = [threading.Thread(target=target, args=(i, *args), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    return ts


def _join(ts: list[threading.Thread]) -> None:
    for t in ts:
        t.join(JOIN_S)
        assert not t.is_alive(), "a caller never got its result"


# --------------------------------------------------------------------------------------------
# Micro-batcher
# --------------------------------------------------------------------------------------------


def test_microbatcher_returns_each_caller_its_own_result_and_batches():
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(items):  # type: ignore[no-untyped-def]
        gate.wait(5)  # hold the first batch so the other callers queue behind it
        calls.append(list(items))
        return [x * 10 + 1 for x in items]

    mb = MicroBatcher(run, max_batch=8, max_wait_s=0.05, idle_s=1.0)
    got: dict[int, int] = {}

    def caller(i: int) -> None:
        got[i] = mb.submit(i, timeout=JOIN_S)

    ts = _threads(24, caller)
    time.sleep(0.3)
    gate.set()
    _join(ts)
    assert got == {i: i * 10 + 1 for i in range(24)}
    assert sorted(x for c in calls for x in c) == list(range(24))  # each item run exactly once
    assert len(calls) < 24  # batched: fewer calls than callers
    assert max(len(c) for c in calls) <= 8  # never over max_batch
    assert mb.stats.batches == len(calls) and mb.stats.items == 24


def test_microbatcher_errors_go_only_to_their_caller():
    def run(items):  # type: ignore[no-untyped-def]
        return [ValueError(f"bad {x}") if x % 5 == 0 else x for x in items]

    mb = MicroBatcher(run, max_batch=6, max_wait_s=0.02, idle_s=1.0)
    out: dict[int, object] = {}

    def caller(i: int) -> None:
        try:
            out[i] = mb.submit(i, timeout=JOIN_S)
        except ValueError as exc:
            out[i] = exc

    _join(_threads(20, caller))
    for i in range(20):
        if i % 5 == 0:
            assert isinstance(out[i], ValueError) and str(out[i]) == f"bad {i}"
        else:
            assert out[i] == i


def test_microbatcher_isolates_an_item_that_breaks_the_whole_batch():
    seen: list[int] = []

    def run(items):  # type: ignore[no-untyped-def]
        seen.append(len(items))
        if 7 in items:
            raise RuntimeError("network failed on 7")
        return [-x for x in items]

    mb = MicroBatcher(run, max_batch=16, max_wait_s=0.05, idle_s=1.0)
    out: dict[int, object] = {}

    def caller(i: int) -> None:
        try:
            out[i] = mb.submit(i, timeout=JOIN_S)
        except RuntimeError as exc:
            out[i] = exc

    _join(_threads(12, caller))
    assert isinstance(out[7], RuntimeError)
    assert all(out[i] == -i for i in range(12) if i != 7)
    assert mb.stats.fallbacks >= 1


def test_microbatcher_worker_stops_when_idle_and_restarts():
    mb = MicroBatcher(lambda xs: list(xs), max_batch=4, max_wait_s=0.0, idle_s=0.05)
    assert mb.submit(1) == 1
    deadline = time.monotonic() + 5
    while mb._worker is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mb._worker is None  # no thread kept by an idle batcher
    assert mb.submit(2) == 2


# --------------------------------------------------------------------------------------------
# The batcher in front of a real Predictor (ONNX engine): identical to one image at a time
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from medlens.export import CheckImages, export_bundle
    from tests.test_export import images, make_bundle

    path = make_bundle(tmp_path_factory.mktemp("fastserve"), "small_cnn", {"widths": [4, 8, 8]})
    export_bundle(path, images=CheckImages(images(8), "t"))
    return path


def test_loaded_model_batches_predictions_with_the_single_image_rules(onnx_bundle: Path):
    from medlens.errors import MedlensError
    from medlens.inference import Predictor
    from medlens.serve.engine import LoadedModel

    pred = Predictor.from_bundle(onnx_bundle, engine="onnx")
    model = LoadedModel("k", pred)
    model.start_batching(max_batch=8, max_wait_s=0.02)
    rng = np.random.default_rng(5)
    imgs = [rng.random((40 + i, 44)).astype(np.float32) for i in range(15)]
    imgs[3] = np.zeros((40, 44), np.float32)  # blank: ungradable, a result not an error
    imgs[9] = np.zeros((2, 2, 2), np.float32)  # not an image: an error for its caller only
    expected = []
    for im in imgs:
        try:
            expected.append(pred.predict(im))
        except MedlensError as exc:
            expected.append(exc)
    got: dict[int, object] = {}

    def caller(i: int) -> None:
        try:
            got[i] = model.predict(imgs[i])
        except MedlensError as exc:
            got[i] = exc

    _join(_threads(len(imgs), caller))
    assert model.batcher is not None and model.batcher.stats.batches < len(imgs)
    for i, exp in enumerate(expected):
        if isinstance(exp, Exception):
            assert isinstance(got[i], MedlensError) and str(got[i]) == str(exp)
            continue
        r = got[i]
        assert r.status == exp.status and r.reason == exp.reason  # type: ignore[attr-defined]
        assert r.label == exp.label and r.decision == exp.decision  # type: ignore[attr-defined]
        for c, p in exp.probabilities.items():
            assert r.probabilities[c] == pytest.approx(p, abs=1e-6)  # type: ignore[attr-defined]
    assert got[3].status == "ungradable"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Pixel budget
# --------------------------------------------------------------------------------------------


def test_pixel_budget_queues_instead_of_failing():
    budget = PixelBudget(100)
    a = budget.acquire(50)
    b = budget.acquire(50)
    done = threading.Event()
    failed: list[BaseException] = []

    def third() -> None:
        try:
            with budget.hold(50):
                done.set()
        except BaseException as exc:  # recorded: the test fails on it below
            failed.append(exc)

    t = threading.Thread(target=third, daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set() and t.is_alive()  # waiting, not failed
    assert budget.waiting == 1 and budget.used == 100
    a.release()
    t.join(JOIN_S)
    assert done.is_set() and not failed
    a.release()  # a second release gives nothing back twice
    b.release()
    assert budget.used == 0 and budget.peak == 100 and budget.waits == 1


def test_pixel_budget_refuses_one_image_over_the_whole_budget_and_times_out():
    budget = PixelBudget(100)
    with pytest.raises(BudgetExceeded) as exc:
        budget.acquire(101)
    assert exc.value.status == 413 and "decode budget" in exc.value.message
    with budget.hold(80), pytest.raises(BudgetTimeout) as slow:
        budget.acquire(30, timeout=0.1)
    assert slow.value.status == 503
    assert budget.used == 0


def test_pixel_budget_serves_waiters_in_arrival_order():
    budget = PixelBudget(100)
    big_holder = budget.acquire(90)
    order: list[str] = []

    def take(i: int, name: str, pixels: int) -> None:
        with budget.hold(pixels):
            order.append(name)

    big = threading.Thread(target=take, args=(0, "big", 60), daemon=True)
    big.start()
    time.sleep(0.2)
    small = threading.Thread(target=take, args=(1, "small", 5), daemon=True)
    small.start()  # 5 pixels would fit now, but the big image came first
    time.sleep(0.2)
    assert order == []
    big_holder.release()
    _join([big, small])
    assert order[0] == "big"


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((h, w)) * 255).astype(np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def test_upload_decode_holds_its_pixels_until_released(tmp_path: Path):
    from medlens.serve.uploads import UploadRejected, validate_upload

    budget = PixelBudget(64 * 64 * 2)
    kw = {"max_bytes": 10**7, "max_pixels": 10**7, "tmp_dir": tmp_path, "budget": budget}
    v1 = validate_upload(_png(64, 64), "a.png", **kw)
    v2 = validate_upload(_png(64, 64), "b.png", **kw)
    assert budget.used == 2 * 64 * 64
    got: list[object] = []
    t = threading.Thread(
        target=lambda: got.append(validate_upload(_png(64, 64), "c.png", **kw)), daemon=True
    )
    t.start()
    time.sleep(0.3)
    assert not got and budget.waiting == 1  # the third decode waits for a lease
    v1.release()
    t.join(JOIN_S)
    assert len(got) == 1 and budget.used == 2 * 64 * 64
    del got[:]  # garbage-collected without release: the budget still comes back
    assert budget.used == 64 * 64
    v2.release()
    assert budget.used == 0
    with pytest.raises(UploadRejected) as exc:
        validate_upload(_png(100, 100), "huge.png", **kw)
    assert exc.value.status == 413 and "decode budget" in exc.value.message
    assert budget.used == 0


# --------------------------------------------------------------------------------------------
# Heatmap pool
# --------------------------------------------------------------------------------------------


def test_heatmap_pool_computes_each_result_and_method_once():
    pool = HeatmapPool(workers=2, cache_entries=8)
    runs: list[tuple[str, str]] = []
    release = threading.Event()

    def compute_for(key: tuple[str, str]):  # type: ignore[no-untyped-def]
        def compute() -> tuple[bytes | None, str | None]:
            release.wait(5)
            runs.append(key)
            return f"{key[0]}:{key[1]}".encode(), None

        return compute

    out: dict[int, object] = {}

    def caller(i: int) -> None:
        key = ("r1", "gradcam") if i < 5 else ("r2", "gradcam")
        out[i] = pool.get(key, compute_for(key))

    ts = _threads(8, caller)
    time.sleep(0.2)
    release.set()
    _join(ts)
    assert sorted(runs) == [("r1", "gradcam"), ("r2", "gradcam")]  # once per key
    assert all(out[i] == (b"r1:gradcam", None) for i in range(5))
    assert all(out[i] == (b"r2:gradcam", None) for i in range(5, 8))
    hit = pool.get(("r1", "gradcam"), compute_for(("r1", "gradcam")))  # cache hit
    assert hit == (b"r1:gradcam", None) and len(runs) == 2
    assert pool.computed == 2 and pool.hits == 7
    pool.get(("r1", "eigencam"), compute_for(("r1", "eigencam")))  # another method: computed
    assert len(runs) == 3
    pool.forget("r1")
    pool.get(("r1", "gradcam"), compute_for(("r1", "gradcam")))
    assert len(runs) == 4
    pool.shutdown()


def test_heatmap_pool_does_not_cache_failures():
    pool = HeatmapPool(workers=1)
    n = [0]

    def flaky() -> tuple[bytes | None, str | None]:
        n[0] += 1
        if n[0] == 1:
            raise RuntimeError("CAM library not ready")
        return b"png", None

    first = pool.get(("r", "gradcam"), flaky)
    assert first[0] is None and "CAM library not ready" in str(first[1])
    assert pool.get(("r", "gradcam"), flaky) == (b"png", None)
    pool.shutdown()
