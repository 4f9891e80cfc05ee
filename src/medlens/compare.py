"""`medlens compare`: the recipe's model and each of its candidates trained on one split, ranked.

Each candidate is a full run (:func:`medlens.workflow.run_recipe`); this module only arranges
them on the same held-out images and writes the leaderboard.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from medlens.common import json_safe
from medlens.errors import DataError
from medlens.recipes import CandidateConfig, Recipe
from medlens.workflow import run_recipe

log = logging.getLogger(__name__)


def compare_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    data: str | Path | None = None,
    progress: bool = True,
    track: bool = True,
    only: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Train the recipe's model and each of its ``candidates`` on one split; a leaderboard.

    The first run draws (or reuses) the split; every other candidate starts from a copy of that
    ``splits.csv``, so all are tested on the same held-out images. Rows are ranked by test
    macro-F1 but carry intervals: overlapping intervals mean the data cannot tell them apart.
    Writes ``compare.json`` and ``compare.csv`` under ``out_dir/<recipe>-compare``.
    """

    root = Path(out_dir).expanduser().resolve() / f"{recipe.name}-compare"
    root.mkdir(parents=True, exist_ok=True)
    own = CandidateConfig(label=recipe.model.name.replace("+", "-"), model=recipe.model)
    candidates = [own, *recipe.candidates]
    if only:
        unknown = sorted(set(only) - {c.label for c in candidates})
        if unknown:
            raise DataError(
                f"--only names {unknown}; candidates are {[c.label for c in candidates]}"
            )
        candidates = [c for c in candidates if c.label in only]
    rows: list[dict[str, Any]] = []
    first_splits: Path | None = None
    for cand in candidates:
        r = recipe.with_model(cand.model, cand.train, f"{recipe.name}-{cand.label}")
        run_dir = root / r.name
        if first_splits is not None and not (run_dir / "splits.csv").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(first_splits, run_dir / "splits.csv")
        log.info("compare: %s (%s)", cand.label, cand.model.name)
        res = run_recipe(r, root, data=data, progress=progress, track=track)
        first_splits = first_splits or res.run_dir / "splits.csv"
        m = res.metrics
        ov = m["intervals"]["overall"]
        meta = json.loads((res.bundle_dir / "bundle.json").read_text())
        rows.append(
            {
                "label": cand.label,
                "model": cand.model.name,
                "macro_f1": ov["macro_f1"],
                "balanced_accuracy": ov["balanced_accuracy"],
                "macro_roc_auc": ov["macro_roc_auc"],
                "ece_calibrated": (m.get("calibration") or {}).get("test_after", {}).get("ece"),
                "val_macro_f1": meta["training"].get("best_checkpoint_score"),
                "n_test": m["n"],
                "seconds": round(res.seconds, 1),
                "run_dir": str(res.run_dir),
            }
        )
    rows.sort(key=lambda row: -float(row["macro_f1"]["value"]))
    (root / "compare.json").write_text(json.dumps(json_safe(rows), indent=2))
    with (root / "compare.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "model", "test_macro_f1", "ci_low", "ci_high", "seconds"])
        for row in rows:
            f1 = row["macro_f1"]
            w.writerow(
                [
                    row["label"],
                    row["model"],
                    f1["value"],
                    f1["ci_low"],
                    f1["ci_high"],
                    row["seconds"],
                ]
            )
    return rows
