"""Trust on new images, end to end: a chest bundle refuses what it was not made for.

One chest phantom bundle (trained once for this module, a few epochs) carries its input gate,
conformal sets and heatmap evidence; every channel — Predictor, ``medlens predict``, the API,
the web page, a batch — must say "not assessed" (with the reason) for other modalities and for
blank or broken images, and give no class for them.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, tiny_recipe_dict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# The module's model is tiny (48 px, 4 epochs): it flags 10 of 12 liver images and all brain
# MRI and smears; benchmarks/bench_gate.py measures the demo-sized model against the ≥ 99 % target.
MIN_FLAGGED = 0.75
REAL_OTHERS = {
    "brain MRI": "brain_mri/Training",
    "blood smear": "all_blood_smear",
    "liver ultrasound": "liver_us",
}


def _sample(root: Path, n: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    step = max(1, len(files) // n)
    return files[::step][:n]


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """A chest phantom run big enough for a validation split to choose thresholds on."""
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe

    d = tiny_recipe_dict(name="trust_cxr")
    d["data"]["phantoms"].update({"n": 300, "size": 48})
    d["train"].update({"epochs": 4})
    root = tmp_path_factory.mktemp("trust_chest")
    res = run_recipe(parse_recipe(d, "trust.yaml"), root, progress=False, track=False)
    images = next(root.glob("data/phantoms_*/images"))
    return {"res": res, "bundle": Path(res.bundle_dir), "images": images, "root": root}


@pytest.fixture(scope="module")
def predictor(chest):
    from medlens.inference import Predictor

    return Predictor.from_bundle(chest["bundle"])


def _broken() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inf = rng.random((96, 96)).astype(np.float32)
    inf[3, 3] = np.inf
    return {
        "all NaN": np.full((96, 96), np.nan, np.float32),
        "one inf": inf,
        "constant": np.zeros((700, 700), np.uint8),
        "tiny 1x1": np.full((1, 1), 128, np.uint8),
    }


def test_bundle_carries_gate_sets_and_evidence_in_its_sums(chest, tmp_path):
    from medlens.bundle import verify_bundle
    from medlens.errors import BundleError

    sums = verify_bundle(chest["bundle"])
    for name in ("gate.json", "gate.safetensors", "conformal.json"):
        assert name in sums
    gate = json.loads((chest["bundle"] / "gate.json").read_text())
    assert gate["val_pass_achieved"] >= 0.99 and gate["min_size"] == 16
    copy = tmp_path / "b"
    shutil.copytree(chest["bundle"], copy)
    (copy / "gate.json").write_text(json.dumps({**gate, "feature_threshold": 1e9}))
    with pytest.raises(BundleError, match=r"SHA-256|bytes"):  # a loosened gate is refused
        verify_bundle(copy)


def test_own_test_images_mostly_pass_and_coverage_is_near_target(chest):
    trust = chest["res"].metrics["trust"]
    assert trust["input_check"] == "present" and trust["prediction_sets"] == "present"
    assert trust["gate"]["share_flagged"] <= 0.10
    cov = trust["conformal"]["test"]
    assert cov["n"] >= 50
    assert abs(cov["marginal_coverage"]["value"] - 0.9) <= 0.12
    assert 1.0 <= cov["mean_set_size"]["value"] <= 3.0
    rows = list(csv.DictReader((chest["res"].run_dir / "test_predictions.csv").open()))
    assert {"status", "reason", "prediction_set"} <= set(rows[0])


@pytest.mark.parametrize("name", list(REAL_OTHERS))
def test_other_modalities_from_shared_data_are_out_of_distribution(predictor, name):
    root = SHARED_DATA / REAL_OTHERS[name]
    if not root.is_dir():
        pytest.skip(f"{root} absent (real images are not shipped with the project)")
    preds = predictor.predict_many(_sample(root, 12))
    statuses = [p.status for p in preds]
    assert statuses.count("out_of_distribution") >= MIN_FLAGGED * len(statuses), statuses
    for p in preds:
        if p.status != "ok":
            assert p.decision is None and p.label == "" and p.probabilities == {}
            assert p.reason and p.prediction_set is None and p.decision_rule == "not assessed"


@pytest.mark.parametrize("kind", ["brain_tumor", "leukemia", "liver_fibrosis"])
def test_other_recipes_phantoms_are_out_of_distribution(predictor, tmp_path, kind):
    from medlens.data.phantoms import generate_phantoms

    man = generate_phantoms(kind, tmp_path / kind, n=12, size=64, seed=3)
    files = [f for f in sorted(man.parent.rglob("*.png")) if "mask" not in str(f)][:12]
    preds = predictor.predict_many(files)
    flagged = sum(p.status == "out_of_distribution" for p in preds)
    assert flagged >= MIN_FLAGGED * len(preds), [p.reason for p in preds]


@pytest.mark.parametrize("name", list(_broken()))
def test_blank_or_broken_images_are_ungradable(predictor, name):
    p = predictor.predict(_broken()[name])
    assert p.status == "ungradable" and p.reason
    assert p.decision is None and p.probabilities == {} and p.logits == []
    d = p.to_dict()
    assert d["status"] == "ungradable" and d["decision"] is None and d["label"] is None


def test_in_distribution_images_get_a_set_and_the_uncertain_flag(predictor, chest):
    files = sorted(chest["images"].glob("*.png"))[:40]
    preds = [p for p in predictor.predict_many(files) if p.assessed]
    assert len(preds) >= 36
    for p in preds:
        assert p.prediction_set and set(p.prediction_set) <= set(predictor.classes)
        assert p.uncertain == (len(p.prediction_set) != 1)
        assert p.gate["score"] <= p.gate["threshold"]


def test_cli_predict_writes_status_reason_and_set_and_exits_0(chest, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from medlens.cli import app
    from medlens.data.phantoms import generate_phantoms

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(folder / "blank.png")
    man = generate_phantoms("leukemia", tmp_path / "smear", n=4, size=64, seed=2)
    smear = next(f for f in sorted(man.parent.rglob("*.png")) if "mask" not in str(f))
    shutil.copy(smear, folder / "smear.png")
    shutil.copy(sorted(chest["images"].glob("*.png"))[0], folder / "chest.png")
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        app, ["predict", str(chest["bundle"]), str(folder), "--out", str(out), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert "not assessed" in r.output
    rows = {Path(x["path"]).name: x for x in csv.DictReader(out.open())}
    assert rows["blank.png"]["status"] == "ungradable" and rows["blank.png"]["decision"] == ""
    assert "constant" in rows["blank.png"]["reason"]
    assert rows["smear.png"]["status"] == "out_of_distribution"
    assert rows["smear.png"]["p_normal"] == "" and rows["smear.png"]["prediction_set"] == ""
    assert "prediction_set" in rows["chest.png"] and "uncertain" in rows["chest.png"]


def test_old_bundle_without_trust_files_loads_and_says_absent(chest, tmp_path):
    from medlens.bundle import write_sums
    from medlens.explain.section import NO_EVIDENCE
    from medlens.inference import Predictor
    from medlens.trust_state import GATE_ABSENT

    old = tmp_path / "old"
    shutil.copytree(chest["bundle"], old)
    for name in ("gate.json", "gate.safetensors", "conformal.json", "explanations.json"):
        (old / name).unlink(missing_ok=True)
    write_sums(old)
    p = Predictor.from_bundle(old)
    assert p.trust.gate_status == "absent" and p.trust.sets_status == "absent"
    assert GATE_ABSENT in p.trust.notes
    assert p.trust.evidence_line("gradcam") == NO_EVIDENCE
    pred = p.predict(sorted(chest["images"].glob("*.png"))[0])
    assert pred.status == "ok" and pred.gate is None and pred.prediction_set is None
    assert p.predict(np.full((64, 64), np.nan, np.float32)).status == "ungradable"


def test_heatmap_evidence_travels_with_the_bundle(chest, predictor):
    from medlens.explain.section import VERDICTS, heatmap_verdicts

    run_summary = json.loads((chest["res"].run_dir / "explanations.json").read_text())
    stored = json.loads((chest["bundle"] / "explanations.json").read_text())
    assert stored["verdicts"] == json.loads(json.dumps(heatmap_verdicts(run_summary)))
    for method, v in stored["verdicts"].items():
        assert v["verdict"] in VERDICTS
        line = predictor.trust.evidence_line(method)
        assert line.startswith(f"Heatmap evidence ({method}): {v['verdict']}")
    assert "No localisation evidence for hirescam" in predictor.trust.evidence_line("hirescam")


# --------------------------------------------------------------------------------------------
# The service: API, result page, batch worklist
# --------------------------------------------------------------------------------------------


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory, chest):
    from tests.test_serve_support import make_app, new_client, signup

    app = make_app(tmp_path_factory.mktemp("ws_trust"), [chest["bundle"]])
    with new_client(app):
        yield {"app": app, "user": signup(app, "trust_user")}


def _smear_png(tmp_path: Path) -> bytes:
    from medlens.data.phantoms import generate_phantoms

    man = generate_phantoms("leukemia", tmp_path / "s", n=4, size=64, seed=5)
    return next(f for f in sorted(man.parent.rglob("*.png")) if "mask" not in str(f)).read_bytes()


def test_api_returns_status_reason_and_no_decision(service, chest, tmp_path):
    from tests.test_serve_support import api_token, new_client

    token = api_token(service["user"])
    api = new_client(service["app"], headers={"Authorization": f"Bearer {token}"})
    blank = api.post(
        "/api/v1/predict", files={"file": ("blank.png", _png(np.zeros((128, 128), np.uint8)))}
    )
    assert blank.status_code in (201, 422), blank.text
    if blank.status_code == 201:
        b = blank.json()
        assert b["status"] == "ungradable" and b["decision"] is None and b["reason"]
    smear = api.post("/api/v1/predict", files={"file": ("smear.png", _smear_png(tmp_path))})
    assert smear.status_code == 201, smear.text
    s = smear.json()
    assert s["status"] == "out_of_distribution" and s["decision"] is None
    assert s["prediction_set"] is None and s["gate"]["score"] > s["gate"]["threshold"]
    assert "Not assessed" in [x["heading"] for x in s["summary"]]
    chest_png = sorted(chest["images"].glob("*.png"))[1].read_bytes()
    ok = api.post("/api/v1/predict", files={"file": ("cxr.png", chest_png)}).json()
    if ok["status"] == "ok":
        assert ok["decision"] in ok["probabilities"] and isinstance(ok["uncertain"], bool)
        assert ok["prediction_set"] and ok["input_check"] == "present"


def test_result_page_says_not_assessed_and_why(service, tmp_path):
    from tests.test_serve_support import upload_ok

    client = service["user"]
    rid = upload_ok(client, _smear_png(tmp_path), "smear.png")
    page = client.get(f"/results/{rid}").text
    assert "Not assessed" in page and "out of distribution" in page
    assert "priority finding" not in page and "heatmap.png" not in page
    pdf = client.get(f"/results/{rid}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_batch_worklist_puts_not_assessed_first(service, chest, tmp_path):
    from tests.test_serve_support import make_zip, wait_for_job

    client = service["user"]
    chest_pngs = sorted(chest["images"].glob("*.png"))[2:4]
    entries = {f"c{i}.png": p.read_bytes() for i, p in enumerate(chest_pngs)}
    entries["zz_smear.png"] = _smear_png(tmp_path)
    from tests.test_serve_support import api_token, new_client

    api = new_client(service["app"], headers={"Authorization": f"Bearer {api_token(client)}"})
    job = api.post(
        "/api/v1/batch", files=[("files", ("b.zip", make_zip(entries), "application/zip"))]
    )
    assert job.status_code == 202, job.text
    wait_for_job(client, job.json()["id"])
    csv_text = client.get(f"/batch/{job.json()['id']}/worklist.csv").text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert rows[0]["file"] == "zz_smear.png" and rows[0]["status"] == "out_of_distribution"
    assert rows[0]["decision"] == ""


def test_summary_of_a_model_without_input_check_says_so():
    from medlens.serve.summary import GATE_ABSENT_TEXT, SummaryInput, summary_sections

    base = dict(
        model_name="m",
        decision="normal",
        label="normal",
        probabilities={"normal": 0.8, "pneumonia": 0.2},
        decision_threshold=None,
        calibrated=True,
        priority=["pneumonia"],
        borderline=[],
        preprocess_info={},
    )
    old = dict(summary_sections(SummaryInput(**base, input_check="absent")))
    assert old["Input check"] == GATE_ABSENT_TEXT
    unsure = summary_sections(
        SummaryInput(**base, prediction_set=["normal", "pneumonia"], uncertain=True, coverage=0.9)
    )
    assert "{normal, pneumonia}" in dict(unsure)["Uncertain — human review"]
    refused = dict(
        summary_sections(SummaryInput(**base, status="out_of_distribution", reason="unlike"))
    )
    assert refused["Why"] == "unlike" and "What was found" not in refused
