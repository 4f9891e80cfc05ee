"""Every built-in recipe validates and runs one tiny epoch on its own phantoms, end to end:
split, training (ensemble members, segmenter + ROI classifier, fusion with heads), a verified
bundle, calibration and held-out figures through the Predictor. Then each system's special
promise is checked on the bundle it produced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.inference import Predictor
from medlens.recipes import BUILTIN_RECIPE_DIR, load_recipe
from tests.conftest import shrunk_recipe

RECIPES = sorted(p.stem for p in BUILTIN_RECIPE_DIR.glob("*.yaml"))


def test_the_five_systems_are_there():
    assert {"chest_xray", "brain_tumor", "leukemia", "liver_fibrosis", "sacroiliitis"} <= set(
        RECIPES
    )
    from medlens.models import is_model, model_info

    liver = load_recipe("liver_fibrosis").model
    assert model_info(liver.name).kind == "ensemble"
    # The members are the recipe's to choose: each must be a buildable, non-ensemble model.
    members = liver.members or []
    assert len(members) >= 2
    assert all(is_model(m.name) and model_info(m.name).kind != "ensemble" for m in members)
    leuk = load_recipe("leukemia")
    hybrids = {leuk.model.name, *(c.model.name for c in leuk.candidates)}
    assert all("+" in n and is_model(n) for n in hybrids)  # CNN + sequence readers only
    chest = [c.model.name for c in load_recipe("chest_xray").candidates]
    assert "classical" in {model_info(n).kind for n in chest}  # a HOG baseline to beat


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def _run(name, out):
    from medlens.workflow import run_recipe

    return run_recipe(shrunk_recipe(name), out, progress=False, track=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_one_tiny_epoch(name, runs):
    res = _run(name, runs)
    m = res.metrics
    assert 0 <= m["macro_f1"] <= 1 and m["n"] == res.split_counts["test"] - len(m["unreadable"])
    assert "ci_low" in m["intervals"]["overall"]["macro_f1"]
    p = Predictor.from_bundle(res.bundle_dir)
    r = load_recipe(name)
    assert p.classes == list(r.task.classes)
    report = res.report.read_text()
    assert "clinician" in report
    if name == "brain_tumor":
        assert "Head: stage" in report and "Head: risk" in report
        assert set(m["heads"]) == {"stage", "risk"}
        assert "mae" in m["heads"]["risk"] and m["heads"]["stage"]["kappa_weighting"] == "quadratic"
    if name == "sacroiliitis":
        assert "Segmentation of the region of interest" in report
        assert m["segmentation"]["n"] > 0 and 0 <= m["segmentation"]["dice"]["value"] <= 1
        assert set(m["heads"]) == {"detected"}
    if name == "liver_fibrosis":
        assert "Ensemble members" in report
        assert set(m["members"]) == {mm.key() for mm in r.model.members or []}


@pytest.mark.slow
def test_fusion_bundle_predicts_with_each_modality_missing(runs):
    from medlens.data.manifest import from_csv

    res = _run("brain_tumor", runs)
    p = Predictor.from_bundle(res.bundle_dir)
    assert p.modalities == {"mri": "path", "ct": "ct_path"}
    man = from_csv(
        next((runs / "data").glob("phantoms_brain_tumor*")) / "manifest.csv",
        extra_columns=["ct_path", "stage", "risk"],
        path_columns=["ct_path"],
    )
    s = man.samples[0]
    both = p.predict({"mri": s.path, "ct": s.get("ct_path")})
    mri_only = p.predict({"mri": s.path, "ct": None})
    ct_only = p.predict({"ct": s.get("ct_path")})
    for pred, used in ((both, ["mri", "ct"]), (mri_only, ["mri"]), (ct_only, ["ct"])):
        assert pred.modalities_used == used
        assert abs(sum(pred.probabilities.values()) - 1) < 1e-6
        assert set(pred.heads) == {"stage", "risk"} and "value" in pred.heads["risk"]
        assert abs(sum(pred.heads["stage"]["probabilities"].values()) - 1) < 1e-6
    # a missing modality changes the input the heads see (the learned placeholder stands in)
    assert not np.allclose(both.logits, mri_only.logits) and not np.allclose(
        both.logits, ct_only.logits
    )
    with pytest.raises(Exception, match="no image given"):
        p.predict({"mri": None, "ct": None})


@pytest.mark.slow
def test_ensemble_bundle_probabilities_are_the_weighted_member_mean(runs):
    res = _run("liver_fibrosis", runs)
    p = Predictor.from_bundle(res.bundle_dir)
    model = p.model
    w = np.array(model.weights)
    spec = load_recipe("liver_fibrosis").model
    info = p.bundle.meta["training"]
    if spec.fit_weights:
        assert info["weights_from"].startswith("fitted on validation")
    else:
        given = np.array([mm.weight for mm in spec.members or []])
        assert np.allclose(w, given / given.sum(), atol=1e-6)  # the recipe's weights, normalised
        assert info["weights_from"] == "recipe"
    assert np.isclose(w.sum(), 1.0) and set(info["members"]) == set(model.labels)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 1, 48, 48)).astype(np.float32))
    with torch.inference_mode():
        per_member = model.member_probabilities(x).numpy()
        ens = model(x).softmax(1).numpy()
    assert np.allclose(ens, np.tensordot(w, per_member, axes=1), atol=1e-5)


@pytest.mark.slow
def test_roi_cam_is_focused_on_the_predicted_joint(runs):
    from medlens.explain import compute_cam

    res = _run("sacroiliitis", runs)
    p = Predictor.from_bundle(res.bundle_dir)
    img = next((runs / "data").glob("phantoms_sacroiliitis*")) / "images"
    pre = p.preprocess(sorted(img.iterdir())[0])
    x = torch.from_numpy(pre.image[None])
    cam = compute_cam(p.model, x, "gradcam", target_class=1)
    with torch.inference_mode():
        region = p.model.roi_mask(x)[0, 0].numpy() >= 0.5
    assert cam.options["focus"]["roi"] == "predicted region"
    assert (cam.cam[~region] == 0).all()


def test_binary_ct_screening_merges_tumour_classes(tmp_path):
    from medlens.workflow import recipe_manifest

    r = shrunk_recipe("brain_tumor_ct")
    man = recipe_manifest(r, None, tmp_path)
    assert man.classes == ["notumor", "tumor"] and set(man.counts()) == {"notumor", "tumor"}
    assert all("/ct/" in s.path for s in man.samples)  # CT images, not the MRI column


def test_heads_need_a_multi_head_model():
    from medlens.errors import RecipeError

    r = shrunk_recipe("brain_tumor")
    d = r.model_dump(mode="json", exclude={"source_dir"})
    d["model"] = {"name": "small_cnn"}
    d["data"]["modalities"] = None
    from medlens.recipes import parse_recipe

    with pytest.raises(RecipeError, match=r"task\.heads needs a multi-head model"):
        parse_recipe(d, "x.yaml").model_kwargs()


def test_bad_head_value_names_file_and_column(tmp_path):
    from medlens.data.manifest import Sample
    from medlens.errors import DataError
    from medlens.train.request import head_targets

    r = shrunk_recipe("brain_tumor")
    s = Sample(str(tmp_path / "a.png"), "glioma", extra=(("stage", "7"), ("risk", "0.5")))
    with pytest.raises(DataError, match=r"a.png.*'stage'.*0..3"):
        head_targets(r, [s])
    t = head_targets(r, [Sample("b.png", "glioma", extra=(("stage", ""), ("risk", "0.25")))])
    assert t["stage"][0] == -1 and t["risk"][0] == pytest.approx(0.25)


def test_fusion_training_data_keeps_cases_with_a_missing_modality(tmp_path):
    import csv

    from medlens.data.manifest import load_manifest
    from medlens.data.splits import make_splits
    from medlens.train.dataset import RecordDataset
    from medlens.train.request import prepare_split_data
    from medlens.workflow import ensure_phantoms

    r = shrunk_recipe("brain_tumor")
    src = ensure_phantoms(r, tmp_path / "data")
    rows = list(csv.DictReader(src.open()))
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["ct_path"] = ""  # no CT for every third case
    edited = src.parent / "manifest_missing_ct.csv"
    with edited.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    man = load_manifest(r.data, edited, r.task.classes, r.extra_columns(), r.path_columns())
    splits = make_splits(man, r.split.val, r.split.test, r.split.seed)
    data = prepare_split_data(r, man, splits, tmp_path / "run", progress=False)
    _arr, ok = data.modal["ct"]
    missing = [i for i, s in enumerate(data.samples) if s.get("ct_path") is None]
    assert (
        missing
        and not ok[missing].any()
        and ok[[i for i in range(len(ok)) if i not in missing]].all()
    )
    ds = RecordDataset(
        data.cache.array,
        data.rows["train"],
        [0] * len(data.rows["train"]),
        data.targets,
        data.modal,
        data.main_modality,
    )
    recs = [ds[j] for j in range(len(ds))]
    assert {rec["present"]["ct"] for rec in recs} == {True, False}
    assert all(rec["present"]["mri"] for rec in recs)
    assert (
        set(recs[0]["x"]) == {"mri", "ct"} and recs[0]["t_stage"].dtype.is_floating_point is False
    )
