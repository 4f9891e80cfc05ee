"""Optimism of internal figures: look-alikes kept together without patient ids, bounded; the
bootstrap resamples patients; few test patients and missing ids are said first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.common import json_safe
from medlens.data.audit.copies import copy_grouping, lookalike_cap
from medlens.data.manifest import Manifest, Sample, from_folder
from medlens.data.splits import lookalikes_wanted, make_splits, split_grouping
from medlens.evaluate.caveats import FEW_PATIENTS, model_warnings
from medlens.evaluate.heldout import Fitted, Scores, evaluate_test
from medlens.evaluate.intervals import metrics_with_intervals
from medlens.recipes import SplitConfig


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(rng.normal(0, 1, (size, size)), 2.0)
    return 128 + 60 * base / base.std()


def _scan(
    rng: np.random.Generator,
    folder: Path,
    name: str,
    n: int,
    step: float,
    size: int = 64,
    mode: str = "nearest",
) -> None:
    """``n`` adjacent-slice-like images of one "scan": one texture, shifted a little further on
    each slice, with fresh noise: not copies of one another, look-alikes."""
    from scipy.ndimage import shift

    folder.mkdir(parents=True, exist_ok=True)
    base = _texture(rng, size)
    for j in range(n):
        img = shift(base, (step * j, 0.5 * step * j), mode=mode)
        img = img + rng.normal(0, 6.0, base.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{name}_{j}.png")


def _scans(root: Path, n_scans: int = 12, n_slices: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        for k in range(n_scans):
            _scan(rng, root / c, f"scan{k}", n_slices, step=1.0)
    return root


def _scan_of(m: Manifest, s: Sample) -> str:
    return m.key(s).rsplit("_", 1)[0]  # "a/scan3_2.png" -> "a/scan3"


def _scans_crossing(m: Manifest, assignment: dict[str, str]) -> int:
    where: dict[str, set[str]] = {}
    for s in m.samples:
        where.setdefault(_scan_of(m, s), set()).add(assignment[m.key(s)])
    return sum(len(v) > 1 for v in where.values())


def test_without_patient_ids_lookalike_slices_share_a_split(tmp_path: Path):
    m = from_folder(_scans(tmp_path / "d"))
    assert not any(s.patient_id for s in m.samples)
    cfg = SplitConfig()  # group_lookalikes: auto
    assert cfg.group_lookalikes == "auto" and lookalikes_wanted(m, cfg)
    grouping = split_grouping(m, cfg)
    assert grouping is not None
    # the slices are look-alikes, not copies: the copy tiers alone keep almost none together
    assert len(grouping.copies) < 0.2 * len(m)
    assert grouping.info["images_tied_by_lookalikes"] >= 0.7 * len(m)
    assert grouping.info["largest_group"] <= 5  # ties never join two scans here
    loose = make_splits(m, seed=0, copies=grouping.copies)
    tight = make_splits(m, seed=0, copies=grouping.groups)
    crossing_loose = _scans_crossing(m, loose.assignment)
    crossing_tight = _scans_crossing(m, tight.assignment)
    assert crossing_loose >= 10  # of 24 scans: slices of one scan scattered over the splits
    assert crossing_tight <= crossing_loose // 2  # measured 7-8 of 24 vs 18-21
    # every tied group sits in one split
    for gid in set(grouping.groups.values()):
        keys = [k for k, g in grouping.groups.items() if g == gid]
        assert len({tight.assignment[k] for k in keys}) == 1


def test_patient_ids_switch_auto_off_and_false_is_respected(tmp_path: Path):
    m = from_folder(_scans(tmp_path / "d", n_scans=3))
    with_ids = Manifest(
        [Sample(s.path, s.label, patient_id=f"P{i}") for i, s in enumerate(m.samples)],
        m.classes,
        m.root,
    )
    assert not lookalikes_wanted(with_ids, SplitConfig())
    assert not lookalikes_wanted(m, SplitConfig(group_lookalikes=False))
    assert lookalikes_wanted(with_ids, SplitConfig(group_lookalikes=True))
    off = split_grouping(m, SplitConfig(group_lookalikes=False))
    assert off is not None and off.groups == off.copies
    assert off.info["lookalikes_grouped"] is False and off.info["patient_ids"] is False


def test_a_chain_of_lookalikes_is_bounded_and_reported(tmp_path: Path):
    """One long sweep (60 frames, each like the next) would chain into one group of all the
    data; the cap keeps every group at most lookalike_cap(n) and counts what it refused."""
    rng = np.random.default_rng(1)
    _scan(rng, tmp_path / "d" / "a", "sweep", 60, step=0.7, mode="wrap")
    _scan(rng, tmp_path / "d" / "b", "other", 6, step=0.7, mode="wrap")
    m = from_folder(tmp_path / "d")
    g = copy_grouping(m, group_lookalikes=True)
    cap = lookalike_cap(len(m))
    assert cap == 10
    sizes = np.unique(list(g.groups.values()), return_counts=True)[1]
    assert sizes.max() <= cap
    assert g.info["largest_group"] == sizes.max()
    assert g.info["ties_refused"] > 0 and g.info["images_in_refused_ties"] > 0
    assert g.info["images_tied_by_lookalikes"] > 0.5 * len(m)
    # the split stays possible: no group too large for the training split
    make_splits(m, seed=0, copies=g.groups)


def _clustered(n_patients: int, per_patient: int, seed: int):
    """Scores whose errors are shared within a patient (a patient effect), both classes mixed."""
    rng = np.random.default_rng(seed)
    y, p, groups = [], [], []
    for i in range(n_patients):
        label = i % 2
        effect = rng.normal(0, 1.5)  # one patient reads high or low on every image
        for _ in range(per_patient):
            z = (1.0 if label else -1.0) + effect + rng.normal(0, 0.3)
            q = 1 / (1 + np.exp(-z))
            y.append(label)
            p.append([1 - q, q])
            groups.append(f"P{i}")
    return np.array(y), np.array(p), groups


def _width(m: dict, key: str) -> float:
    return m["overall"][key]["ci_high"] - m["overall"][key]["ci_low"]


def test_patient_bootstrap_is_wider_when_images_of_a_patient_are_correlated():
    y, p, groups = _clustered(20, 10, seed=0)
    by_image = metrics_with_intervals(y, p, ["n", "p"], n_bootstrap=300, seed=0)
    by_patient = metrics_with_intervals(y, p, ["n", "p"], n_bootstrap=300, seed=0, groups=groups)
    assert by_patient["n_patients"] == 20 and by_image["n_patients"] is None
    assert "patients" in by_patient["bootstrap"]
    for key in ("accuracy", "macro_f1"):
        assert by_patient["overall"][key]["value"] == by_image["overall"][key]["value"]
        assert _width(by_patient, key) > 1.5 * _width(by_image, key)


def test_patient_bootstrap_equals_image_bootstrap_with_one_image_each():
    y, p, _ = _clustered(60, 1, seed=2)
    by_image = metrics_with_intervals(y, p, ["n", "p"], n_bootstrap=200, seed=7)
    singles = metrics_with_intervals(
        y, p, ["n", "p"], n_bootstrap=200, seed=7, groups=[f"P{i}" for i in range(len(y))]
    )
    assert singles["overall"] == by_image["overall"]
    assert singles["per_class"] == by_image["per_class"]


def _scores(groups: list[str | None], seed: int = 0) -> tuple[Scores, dict[str, str | None]]:
    rng = np.random.default_rng(seed)
    n = len(groups)
    y = np.arange(n) % 2
    logits = np.stack([-(y * 2 - 1) + rng.normal(0, 1, n), (y * 2 - 1) + rng.normal(0, 1, n)], 1)
    sources = [f"img{i}.png" for i in range(n)]
    return Scores(sources, y, logits), dict(zip(sources, groups, strict=True))


def _fitted() -> Fitted:
    return Fitted(1.0, {"method": "none", "temperature": 1.0}, None)


def test_few_test_patients_lead_the_warnings():
    scores, patients = _scores([f"S{i % 3}" for i in range(30)])
    m = evaluate_test(scores, _fitted(), ["n", "p"], n_bootstrap=100, patients=patients)
    assert m["test_patients"] == {"ids": True, "n_images": 30, "n_patients": 3}
    first = m["warnings"][0]
    assert first["code"] == "few_test_patients" and first["n_patients"] == 3
    assert first["message"].startswith("Test = 3 patients (30 images): figures are anecdotal")
    # enough patients: nothing to say
    scores, patients = _scores([f"S{i}" for i in range(2 * FEW_PATIENTS)])
    m = evaluate_test(scores, _fitted(), ["n", "p"], n_bootstrap=100, patients=patients)
    assert not [w for w in m["warnings"] if w["code"] == "few_test_patients"]


def test_no_patient_ids_caveat_is_in_the_report_json():
    scores, patients = _scores([None] * 40)
    m = evaluate_test(scores, _fitted(), ["n", "p"], n_bootstrap=100, patients=patients)
    assert m["test_patients"]["ids"] is False
    assert m["intervals"]["n_patients"] is None  # images resampled: nothing to group by
    m["leakage"] = {"grouping": {"lookalikes_grouped": True, "images_tied_by_lookalikes": 12}}
    stored = json.loads(json.dumps(json_safe(m)))  # what metrics.json holds
    codes = [w["code"] for w in stored["warnings"]]
    assert codes[0] == "no_patient_ids"
    text = stored["warnings"][0]["message"]
    assert "no patient ids: internal figures may be optimistic; validate externally" in (
        text.lower()
    )
    # the report recomputes the warnings from the stored figures, with the grouping's counts
    again = model_warnings(stored)
    assert "12 images tied" in again[0]["message"]
    # no mapping given: nothing is claimed either way
    m = evaluate_test(scores, _fitted(), ["n", "p"], n_bootstrap=100)
    assert m["test_patients"] is None
    assert not [w for w in m["warnings"] if w["code"] in ("no_patient_ids", "few_test_patients")]


@pytest.mark.parametrize("bad", [[], ["P0"]])
def test_groups_must_match_the_cases(bad):
    y, p, _ = _clustered(4, 1, seed=0)
    with pytest.raises(ValueError, match="one id per case"):
        metrics_with_intervals(y, p, ["n", "p"], n_bootstrap=10, groups=bad)
