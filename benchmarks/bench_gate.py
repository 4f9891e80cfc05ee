"""Input gate on a chest phantom bundle: does it refuse what the model was not made for?

Loads a trained chest bundle (``--run-dir``: a ``medlens train``/``demo`` run folder holding
``bundle/`` and ``splits.csv``) or trains one on phantoms (``--train``, a few epochs), and runs
every image through the bundle's own :class:`~medlens.inference.Predictor` — the stored input
gate (``gate.json``/``gate.safetensors``, fitted by the run) and conformal sets
(``conformal.json``), exactly as ``medlens predict`` and the service apply them. Prints JSON:

- ``other_modalities``: share flagged of real brain MRI, blood smear and liver ultrasound images
  from ``../shared/data`` (skipped when absent) and of other recipes' phantoms (target ≥ 99 %);
- ``blank_or_broken``: share of NaN / infinite / constant / tiny / saturated images flagged
  ``ungradable`` (target 100 %);
- ``own_test_flagged``: share of the run's own test images flagged (target ≤ 2 %);
- accuracy on the test images that pass, beside accuracy on all;
- ``conformal_90``: class-conditional 90 % sets fitted on validation, coverage on test;
- ``comparison``: the same shares for each feature score (kNN, Mahalanobis, energy) alone and
  for the acquisition test alone, refitted here on the same embeddings
  (:meth:`Predictor.embed`) — the measurement behind the gate's choice of score.

    .venv/bin/python benchmarks/bench_gate.py --run-dir /tmp/trust_demo/chest_xray
    .venv/bin/python benchmarks/bench_gate.py --train --epochs 8 --out /tmp/bench_gate
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medlens.evaluate.conformal import coverage_report
from medlens.evaluate.gate import FEATURE_SCORES, InputGate
from medlens.prediction import STATUSES

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REAL_SETS = {
    "brain_mri": "brain_mri/Training",
    "blood_smear": "all_blood_smear",
    "liver_us": "liver_us",
}
PHANTOMS = ("liver_fibrosis", "leukemia", "brain_tumor", "sacroiliitis")


def _sample_files(root: Path, n: int, seed: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if len(files) > n:
        pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def _embed(predictor, paths: list[Path], batch: int = 64):
    """features, logits, acquisition properties through the Predictor's own path."""
    keep, f, lg, acq = predictor.embed(paths, batch)
    return f, lg, acq, keep


def _blank_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    nan = np.full((128, 128), np.nan, np.float32)
    part_nan = rng.random((128, 128)).astype(np.float32)
    part_nan[:10] = np.nan
    inf = rng.random((128, 128)).astype(np.float32)
    inf[5, 5] = np.inf
    sat = np.zeros((256, 256), np.uint8)
    sat[:, 200:] = 255
    sat[0, 0] = 128
    one_pixel = np.zeros((512, 512), np.float32)
    one_pixel[3, 3] = 1.0
    return {
        "all_nan": nan,
        "some_nan": part_nan,
        "one_inf": inf,
        "all_zero_2048": np.zeros((2048, 2048), np.uint8),
        "grey_1x1": np.full((1, 1), 128, np.uint8),
        "tiny_8x8": rng.integers(0, 255, (8, 8), dtype=np.uint8),
        "constant_grey": np.full((300, 300), 77, np.uint8),
        "one_bright_pixel": one_pixel,
        "black_white_saturated": sat,
    }


def _run_dir_from_training(out: Path, epochs: int) -> Path:
    from medlens.recipes import load_recipe
    from medlens.workflow import run_recipe

    recipe = load_recipe("chest_xray")
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": epochs})})
    return run_recipe(recipe, out, progress=False, track=False).run_dir


def _split_paths(run_dir: Path) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    rows = list(csv.DictReader((run_dir / "splits.csv").open()))
    key0 = rows[0]["key"]
    roots = [p.parent for p in run_dir.parent.rglob("manifest.csv") if (p.parent / key0).exists()]
    if not roots:
        raise SystemExit(f"cannot find the images of {run_dir / 'splits.csv'} near {run_dir}")
    paths: dict[str, list[Path]] = {}
    labels: dict[str, list[str]] = {}
    for r in rows:
        paths.setdefault(r["split"], []).append(roots[0] / r["key"])
        labels.setdefault(r["split"], []).append(r["label"])
    return paths, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, help="a trained chest run folder (bundle/, splits.csv)")
    ap.add_argument("--train", action="store_true", help="train a chest phantom bundle first")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="where --train writes (default: temp)")
    ap.add_argument("--n-real", type=int, default=150, help="images per real other-modality set")
    ap.add_argument("--n-phantom", type=int, default=40)
    ap.add_argument("--val-pass", type=float, default=0.99)
    ap.add_argument("--method", default="mahalanobis", choices=FEATURE_SCORES)
    args = ap.parse_args(argv)

    from medlens.data.phantoms import generate_phantoms
    from medlens.inference import Predictor

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gate_"))
    run_dir = args.run_dir
    if run_dir is None:
        if not args.train:
            ap.error("give --run-dir of a trained chest run, or --train")
        run_dir = _run_dir_from_training(args.out or tmp / "run", args.epochs)
    predictor = Predictor.from_bundle(run_dir / "bundle")
    classes = list(predictor.classes)
    paths, labels = _split_paths(run_dir)
    emb = {s: _embed(predictor, paths[s]) for s in ("train", "val", "test")}
    y_of = {s: np.array([classes.index(labels[s][i]) for i in emb[s][3]]) for s in emb}
    y_train = y_of["train"]
    y_test = np.array([classes.index(c) for c in labels["test"]])

    others: dict[str, tuple] = {}
    other_files: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    for name, rel in REAL_SETS.items():
        root = SHARED / rel
        if not root.is_dir():
            skipped[name] = f"{root} absent"
            continue
        other_files[name] = _sample_files(root, args.n_real, seed=0)
    for kind in PHANTOMS:
        man = generate_phantoms(kind, tmp / kind, n=args.n_phantom, size=64, seed=1)
        files = sorted((man.parent).rglob("*.png"))
        other_files[f"phantom_{kind}"] = [f for f in files if "mask" not in f.parts[-2]][
            : args.n_phantom
        ]
    for name, files in other_files.items():
        others[name] = _embed(predictor, files)

    def fit(method: str) -> InputGate:
        use = 1 if method == "energy" else 0  # energy scores the logits
        return InputGate.fit(
            emb["train"][use],
            emb["train"][2],
            emb["val"][use],
            emb["val"][2],
            args.val_pass,
            method=method,
            train_labels=y_train,
        )

    comparison: dict[str, dict[str, float]] = {}
    gates = {m: fit(m) for m in FEATURE_SCORES}
    sets = {"own_test": emb["test"], **others}
    for m, g in gates.items():
        use = 1 if m == "energy" else 0
        comparison[m] = {
            name: float(np.mean(g.feature_scores(e[use]) > g.feature_threshold))
            for name, e in sets.items()
        }
        comparison[m]["threshold"] = g.feature_threshold
    g0 = gates[args.method]
    comparison["acquisition"] = {
        name: float(np.mean(g0.acquisition_z(e[2]).max(axis=1) > g0.acq_threshold))
        for name, e in sets.items()
    }
    combined = {}
    for m, g in gates.items():
        use = 1 if m == "energy" else 0
        combined[m] = {name: float(np.mean(g.score(e[use], e[2])[1])) for name, e in sets.items()}

    # The stored gate and sets, applied by the Predictor as every channel applies them.
    gate = predictor.gate
    if gate is None:
        raise SystemExit(f"{run_dir / 'bundle'} has no input gate: train it with this medlens")
    test_preds = predictor.predict_many(paths["test"])
    flags_test = np.array([getattr(p, "status", "unreadable") != "ok" for p in test_preds])
    pred = np.array(
        [int(np.argmax(p.logits)) if getattr(p, "logits", None) else -1 for p in test_preds]
    )
    blanks = {name: predictor.predict(arr) for name, arr in _blank_cases().items()}
    other_flag = {}
    for name, files in other_files.items():
        preds = predictor.predict_many(files)
        other_flag[name] = float(np.mean([getattr(p, "status", "") != "ok" for p in preds]))
    if predictor.sets is not None:
        p_test = predictor.probabilities(emb["test"][1])
        conformal = {
            "sets": predictor.sets.to_dict(),
            "test": coverage_report(
                predictor.sets.predict_sets(p_test),
                y_of["test"],
                classes,
                1000,
                predicted=p_test.argmax(axis=1),
                target=predictor.sets.coverage,
            ),
        }
    else:
        conformal = {"sets": None, "note": "the bundle has no conformal sets"}
    uncertain = [p.uncertain for p in test_preds if p.status == "ok"]
    out = {
        "bundle": str(run_dir / "bundle"),
        "method": args.method,
        "n": {s: len(paths[s]) for s in ("train", "val", "test")}
        | {k: len(v[0]) for k, v in others.items()},
        "gate": "stored in the bundle, applied by Predictor",
        "val_pass_achieved": gate.val_pass_achieved,
        "thresholds": {"feature": gate.feature_threshold, "acquisition": gate.acq_threshold},
        "other_modalities_flagged": other_flag,
        "other_modalities_flagged_min": min(other_flag.values()) if other_flag else None,
        "blank_or_broken_flagged": float(
            np.mean([b.status == "ungradable" for b in blanks.values()])
        ),
        "blank_reasons": {k: b.reason for k, b in blanks.items()},
        "own_test_flagged": float(np.mean(flags_test)),
        "own_test_status": {
            s: int(sum(getattr(p, "status", "") == s for p in test_preds)) for s in STATUSES
        },
        "accuracy_all_test": float(np.mean(pred == y_test)),
        "accuracy_passing_test": float(np.mean(pred[~flags_test] == y_test[~flags_test])),
        "uncertain_share_test": float(np.mean(uncertain)) if uncertain else None,
        "conformal": conformal,
        "comparison_feature_only": comparison,
        "comparison_combined": combined,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    json.dump(out, sys.stdout, indent=2, default=float)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
