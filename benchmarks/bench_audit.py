"""Dataset-audit speed on this machine, printed as JSON (never asserted in tests).

    python benchmarks/bench_audit.py [--n 2000] [--workers 2] [--phantoms]

Uses ``../shared/data/brain_mri/Training`` (224 px JPEGs), or with ``--phantoms`` (P6 of issue
#12, no shared data needed) ``--n`` brain-MRI phantoms saved as 224-px JPEGs (quality 90) in a
temporary folder; prints a "skipped" line when the shared folder is absent and ``--phantoms``
is not given. Files are read once beforehand so that the numbers measure hashing, not the
disk. Measures, in images per second (worker-pool start-up included):

* ``hash_*``: SHA-256 of the bytes + pHash/dHash (and mirrored) of a reduced-scale JPEG decode:
  what ``duplicate_groups`` and ``make_splits(find_copies=True)`` do. Target: >= 500 images/s
  on 2 cores.
* ``audit_records_*``: the audit's per-file work: full decode (proves the file readable), the
  hashes, a pixel digest and the intensity/exposure/border statistics.
* ``near_search_s``: grouping all records into copy tiers (multi-index hashing, the detail
  check of near-identical candidates, union-find); ``lookalike_pairs`` counts the look-alikes.
* ``audit_total_s``: a whole ``audit()`` of the same images, shortcut probe included.

Each rate also has ``*_cpu_ms_per_image_*`` (CPU time of this process and its workers per
image) and ``*_free_cores_est`` (workers / CPU time per image): on a shared machine whose cores
are busy with other work, the wall-clock rate understates what the code does on free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri" / "Training"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="images to use (spread over classes)")
    ap.add_argument("--workers", type=int, default=2, help="process-pool size to compare")
    ap.add_argument("--phantoms", action="store_true", help="224-px JPEG phantoms, not DATA")
    args = ap.parse_args()
    if args.phantoms:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="medlens-bench-audit-") as tmp:
            run(args, phantom_jpegs(Path(tmp), args.n))
        return
    if not DATA.is_dir():
        print(json.dumps({"skipped": f"{DATA} not found: the benchmark needs the shared data"}))
        return
    run(args, DATA)


def phantom_jpegs(root: Path, n: int) -> Path:
    """``n`` brain-MRI phantoms as 224-px JPEGs in class folders under ``root/jpeg``."""
    from PIL import Image

    from medlens.data.phantoms import generate_phantoms

    manifest = generate_phantoms("brain_tumor", root / "src", n=n, size=224, seed=0)
    out = root / "jpeg"
    import csv

    with manifest.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            src = manifest.parent / row["path"]
            (out / row["label"]).mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im.convert("L" if im.mode in ("L", "I;16", "I") else "RGB").save(
                    out / row["label"] / f"{i:05d}.jpg", quality=90
                )
    return out


def run(args: argparse.Namespace, data: Path) -> None:

    from medlens.data import audit as A
    from medlens.data.audit import copies as C
    from medlens.data.audit import records as R
    from medlens.data.manifest import from_folder

    manifest = from_folder(data)
    step = max(1, len(manifest) // args.n)
    manifest = manifest.subset([manifest.key(s) for s in manifest.samples[::step][: args.n]])
    n = len(manifest)
    for s in manifest.samples:  # warm the page cache: measure hashing, not the disk
        Path(s.path).read_bytes()
    entries = R._entries(manifest, {}, None)
    hash_tasks = R._tasks(entries, None)
    audit_tasks = R._tasks(entries, "data")

    out: dict = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "images": n,
        "data": "224-px JPEG phantoms (brain_tumor)" if args.phantoms else str(data),
    }

    def cpu() -> float:
        """CPU seconds of this process and its reaped children (the pool's workers)."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def rate(name: str, tasks: list, workers: int) -> list:
        """Wall-clock images/s, and CPU ms per image (independent of other load)."""
        t, c = time.perf_counter(), cpu()
        recs = R._compute_records(tasks, workers, None)
        out[f"{name}_per_s_{workers}proc"] = n / (time.perf_counter() - t)
        out[f"{name}_cpu_ms_per_image_{workers}proc"] = 1000 * (cpu() - c) / n
        return recs

    R._record(hash_tasks[0])  # imports (imagehash, scipy.fft, PIL plugins) outside the timing
    rate("hash", hash_tasks, 1)
    rate("hash", hash_tasks, args.workers)
    rate("audit_records", audit_tasks, 1)
    recs = rate("audit_records", audit_tasks, args.workers)
    # What the wall-clock rate would be with the cores to ourselves (other load on a shared
    # machine slows the wall clock, not the CPU time each image needs).
    for name in ("hash", "audit_records"):
        ms = out[f"{name}_cpu_ms_per_image_{args.workers}proc"]
        out[f"{name}_per_s_{args.workers}_free_cores_est"] = args.workers * 1000 / ms
    t = time.perf_counter()
    found = C._find_copies([r for r in recs if r.ok], A.DEFAULT_NEAR_THRESHOLD)
    out["near_search_s"] = time.perf_counter() - t
    out["copy_groups"] = len(found.groups)
    out["lookalike_pairs"] = len(found.lookalike)
    t = time.perf_counter()
    report = A.audit(manifest, progress=False, workers=args.workers)
    out["audit_total_s"] = time.perf_counter() - t
    out["audit_severity"] = report.severity
    out["target_hash_per_s"] = 500
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
