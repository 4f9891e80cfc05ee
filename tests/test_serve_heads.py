"""Multi-task heads and fusion modalities through the clinician service: API, pages, PDF, CSV.

Three small untrained bundles are served side by side (a plain single-head CNN, a multi-task
model with a stage and a risk head, a CT+MRI fusion model) so each output a clinician sees can be
checked for the extra heads, the model that produced them and the "a clinician decides" framing,
and the plain bundle for being unchanged. Untrained weights are enough: the tests check that
what the predictor returned reaches every output, not what it says.
"""

from __future__ import annotations

import base64
import csv
import io
import re
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.test_serve_support import (
    api_token,
    make_app,
    make_zip,
    new_client,
    signup,
    upload_ok,
    wait_for_job,
)

pytestmark = pytest.mark.timeout(300)

CLASSES = ["normal", "pneumonia", "tuberculosis"]
PREPROCESS = [{"step": "grayscale"}, {"step": "resize", "size": 32}]
MULTITASK = {
    "backbone": "resnet18",
    "heads": {"class": 3, "stage": 4, "risk": "regression"},
    "primary": "class",
}
STAGES = ["s0", "s1", "s2", "s3"]
FUSION = {
    "encoders": {"mri": "small_cnn", "ct": "small_cnn"},
    "heads": {"class": 3},
    "primary": "class",
}


def _bundle(root: Path, name: str, model: str, kwargs: dict, **extra: Any) -> Path:
    import torch

    from medlens.bundle import save_bundle
    from medlens.models import create_model

    torch.manual_seed(0)
    net = create_model(model, num_classes=3, in_chans=1, **kwargs).eval()
    task: dict[str, Any] = {"classes": CLASSES}
    if model == "multitask":
        task["heads"] = {
            "stage": {"type": "classification", "classes": STAGES},
            "risk": {"type": "regression"},
        }
    return save_bundle(
        root / name,
        net,
        name=name,
        model_spec={"name": model, "num_classes": 3, "in_chans": 1, "kwargs": kwargs},
        classes=CLASSES,
        task=task,
        preprocess=PREPROCESS,
        recipe_yaml=f"name: {name}\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
        extra=extra or None,
    )


def _png(seed: int, size: int = 48) -> bytes:
    from PIL import Image

    a = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def pdf_text(pdf: bytes) -> str:
    """The text drawn in a reportlab PDF: content streams decoded, string operands joined.

    reportlab writes streams as ASCII85 over Flate; text is ``(...) Tj`` with PDF string escapes
    and WinAnsi (cp1252) bytes. Good enough to find sentences and table cells in a report.
    """
    out = []
    for m in re.finditer(
        rb"/Filter \[ /ASCII85Decode /FlateDecode \][^>]*>>\s*stream\r?\n(.*?)~>", pdf, re.S
    ):
        try:
            raw = zlib.decompress(base64.a85decode(m.group(1), adobe=False))
        except (ValueError, zlib.error):
            continue  # an image stream
        for s in re.finditer(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", raw, re.S):
            out.append(_pdf_string(s.group(1)))
    return re.sub(r"\s+", " ", " ".join(out))


def _pdf_string(b: bytes) -> str:
    def esc(m: re.Match[bytes]) -> bytes:
        c = m.group(1)
        if c[:1].isdigit():
            return bytes([int(c, 8)])
        return {b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(c, c)

    return re.sub(rb"\\([0-7]{1,3}|.)", esc, b).decode("cp1252", "replace")


def _pct(p: float) -> str:
    from medlens.serve.formatting import pct

    return pct(p)


@pytest.fixture(scope="module")
def head_bundles(tmp_path_factory):
    """Trained once per module, served on each database backend."""
    root = tmp_path_factory.mktemp("serve_heads")
    plain = _bundle(root, "plain_cxr", "small_cnn", {"widths": [4, 8]})
    multi = _bundle(root, "staged_cxr", "multitask", MULTITASK)
    fused = _bundle(
        root, "fused_mri_ct", "fusion", FUSION, modalities={"mri": "path", "ct": "ct_path"}
    )
    return root, plain, multi, fused


@pytest.fixture(scope="module")
def env(tmp_path_factory, head_bundles, database_url):
    _root, plain, multi, fused = head_bundles
    ws = tmp_path_factory.mktemp("ws_heads")
    app = make_app(ws, [plain, multi, fused], database_url=database_url)
    with new_client(app):
        alice = signup(app, "alice")
        api = new_client(app, headers={"Authorization": f"Bearer {api_token(alice)}"})
        keys = {m["name"]: m["key"] for m in api.get("/api/v1/models").json()}
        yield {"app": app, "alice": alice, "api": api, "keys": keys}


def _predict(env, name: str, seed: int) -> dict[str, Any]:
    r = env["api"].post(
        "/api/v1/predict",
        files={"file": (f"{name}-{seed}.png", _png(seed))},
        data={"model": env["keys"][name]},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _expected(heads: dict[str, Any]) -> tuple[str, str]:
    stage = heads["stage"]
    return (
        f"stage: {stage['label']} ({_pct(stage['confidence'])})",
        f"risk score: {heads['risk']['value']:.2f}",
    )


def test_models_endpoint_describes_heads_and_modalities(env):
    models = {m["name"]: m for m in env["api"].get("/api/v1/models").json()}
    assert models["staged_cxr"]["heads"] == {
        "stage": {"type": "classification", "classes": STAGES},
        "risk": {"type": "regression", "classes": None},
    }
    assert models["fused_mri_ct"]["modalities"] == ["mri", "ct"]
    assert models["plain_cxr"]["heads"] == {} and models["plain_cxr"]["modalities"] is None


def test_api_returns_heads_and_plain_bundle_has_none(env):
    res = _predict(env, "staged_cxr", 1)
    heads = res["heads"]
    assert set(heads) == {"stage", "risk"}
    assert heads["stage"]["label"] in STAGES
    assert set(heads["stage"]["probabilities"]) == set(STAGES)
    assert abs(sum(heads["stage"]["probabilities"].values()) - 1) < 1e-6
    assert heads["stage"]["confidence"] == max(heads["stage"]["probabilities"].values())
    assert isinstance(heads["risk"]["value"], float)
    assert res["modalities_used"] is None
    assert res["model"] == "staged_cxr (multitask)"
    other = next(s["text"] for s in res["summary"] if s["heading"] == "Other findings")
    for text in _expected(heads):
        assert text in other
    assert "staged_cxr (multitask)" in other and "a clinician decides" in other
    # Stored, not recomputed: the result reads back the same.
    again = env["api"].get(f"/api/v1/results/{res['id']}").json()
    assert again["heads"] == heads

    plain = _predict(env, "plain_cxr", 2)
    assert plain["heads"] == {} and plain["modalities_used"] is None
    # "Input check" (the bundle's input gate, issue #16) may sit among them; no head section.
    assert [s["heading"] for s in plain["summary"] if s["heading"] != "Input check"] == [
        "What was found",
        "How sure",
        "What to check",
        "Who decides",
    ]


def test_result_page_history_and_pdf_show_heads(env):
    alice = env["alice"]
    rid = upload_ok(alice, _png(3), "staged.png", model=env["keys"]["staged_cxr"])
    res = env["api"].get(f"/api/v1/results/{rid}").json()
    stage, risk = _expected(res["heads"])

    html = alice.get(f"/results/{rid}").text
    block = html[html.index('aria-labelledby="findings-') :]
    block = block[: block.index("</section>")]
    assert "Other findings" in block and stage in block and risk in block
    assert "staged_cxr (multitask)" in block and "a clinician decides" in block
    assert "not calibrated" in block
    # The block follows the decision and the probabilities and precedes the images.
    assert html.index("Probabilities") < html.index("findings-") < html.index('id="img-h"')
    assert "Images used" not in html  # not a fusion model

    hist = alice.get("/history?q=staged.png").text
    assert "Other findings (model outputs)" in hist and stage in hist and risk in hist

    text = pdf_text(alice.get(f"/results/{rid}/report.pdf").content)
    assert "Other findings" in text and "a clinician decides" in text
    assert stage in text and risk in text  # the summary sentence
    label = res["heads"]["stage"]["label"]
    assert f"stage {label} ({_pct(res['heads']['stage']['confidence'])})" in text  # table row


def test_plain_bundle_pages_have_no_findings_block(env):
    alice = env["alice"]
    rid = upload_ok(alice, _png(4), "plain.png", model=env["keys"]["plain_cxr"])
    html = alice.get(f"/results/{rid}").text
    assert "Other findings" not in html and "Images used" not in html
    text = pdf_text(alice.get(f"/results/{rid}/report.pdf").content)
    assert "Decision" in text and "Other findings" not in text


def test_fusion_upload_reports_modalities_used(env):
    res = _predict(env, "fused_mri_ct", 5)
    assert res["modalities_used"] == ["mri"]
    assert res["heads"] == {}
    used = next(s["text"] for s in res["summary"] if s["heading"] == "Images used")
    assert "MRI only — CT missing" in used and "placeholder" in used

    alice = env["alice"]
    html = alice.get(f"/results/{res['id']}").text
    assert "Images used</span> MRI only — CT missing" in html
    assert "/heatmap/ct.png" not in html and "CT: not given" in html  # per-modality heatmaps
    pre = alice.get(f"/results/{res['id']}/preprocessed.png")
    assert pre.status_code == 200 and pre.content.startswith(b"\x89PNG")
    assert "Images used: MRI only — CT missing" in alice.get("/history").text
    text = pdf_text(alice.get(f"/results/{res['id']}/report.pdf").content)
    assert "Images used: MRI only — CT missing" in text


def test_batch_worklist_and_csv_carry_heads(env):
    alice = env["alice"]
    zipped = make_zip({f"case{i}.png": _png(10 + i) for i in range(2)})
    job = env["api"].post(
        "/api/v1/batch",
        files=[("files", ("cases.zip", zipped, "application/zip"))],
        data={"model": env["keys"]["staged_cxr"]},
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert wait_for_job(alice, job_id)["status"] == "done"
    done = env["api"].get(f"/api/v1/batch/{job_id}").json()
    assert all(set(it["result"]["heads"]) == {"stage", "risk"} for it in done["worklist"])
    assert "Other findings (model outputs)" in alice.get(f"/batch/{job_id}").text
    rows = list(csv.DictReader(io.StringIO(alice.get(f"/batch/{job_id}/worklist.csv").text)))
    assert len(rows) == 2
    for row in rows:
        assert (
            row["other_findings"].startswith("stage: ") and "risk score: " in row["other_findings"]
        )
        assert row["modalities_used"] == ""


def test_findings_and_modalities_wording():
    from medlens.serve.summary import head_findings, modalities_text

    rows = head_findings(
        {
            "stage": {"label": "stage 2", "confidence": 0.71, "probabilities": {}},
            "risk": {"value": 0.42},
            "severity_score": {"value": float("nan")},
            "lesion_size": {"value": None},
        }
    )
    assert [r.text for r in rows] == [
        "stage: stage 2 (71%)",
        "risk score: 0.42",
        "severity score: not available",
        "lesion size score: not available",
    ]
    assert head_findings(None) == [] and head_findings({}) == []
    assert modalities_text(None, ["mri", "ct"]) is None
    assert modalities_text(["mri"], ["mri", "ct"]) == "MRI only — CT missing"
    assert modalities_text(["mri", "ct"], ["mri", "ct"]) == "MRI + CT (all modalities)"
    assert modalities_text(["ct"], None) == "CT used"  # the model is no longer loaded


def test_ensemble_recognised_by_the_registry_not_the_name():
    from medlens.models.registry import ModelInfo
    from medlens.serve.engine import LoadedModel

    def loaded(name: str, kind: str) -> LoadedModel:
        info = ModelInfo(name, kind=kind)  # type: ignore[arg-type]
        return LoadedModel("k", SimpleNamespace(model_info=info))  # type: ignore[arg-type]

    assert loaded("soft_voting", "ensemble").is_ensemble
    assert not loaded("my_ensemble", "network").is_ensemble  # the name says nothing
    assert not loaded("multitask", "multitask").is_ensemble


def test_served_models_ask_the_registry_for_their_kind(env):
    """The kind of each served bundle is the registry's entry for the model it rebuilt."""
    from medlens.models.registry import model_info

    for m in env["app"].state.medlens.models:
        assert m.predictor.model_info.kind == model_info(m.meta["model"]["name"]).kind
        assert m.is_ensemble is (m.predictor.model_info.kind == "ensemble")


def _alembic(engine, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    import medlens.serve.db as dbm

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(dbm.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def test_existing_database_upgrades_and_downgrades(tmp_path):
    """A database at revision 0001 with a result and a worklist item gains the nullable columns
    (heads and modalities in 0002, the image's accession number in 0003), keeps its rows (the old
    result reads back with no heads, its image with no accession), and downgrades cleanly."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect, text

    from medlens.serve.db import Base, Result, StoredImage, make_engine, migrate, session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    _alembic(engine, "upgrade", "0001")
    now = "2026-01-02 03:04:05"
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, is_active, created_at) "
                "VALUES (1, 'u', 'x', 'clinician', 1, :t)"
            ),
            {"t": now},
        )
        c.execute(
            text(
                "INSERT INTO images VALUES ('i1', 1, 'k1', 'old.png', 'png', 8, 8, 10, 'ab', 0, :t)"
            ),
            {"t": now},
        )
        c.execute(
            text("INSERT INTO batch_jobs VALUES ('j1', 1, 'm', 'done', 1, 1, 0, :t, NULL, NULL)"),
            {"t": now},
        )
        c.execute(
            text(
                "INSERT INTO results VALUES ('r1', 1, 'i1', 'j1', :t, 'm', 'old', 'ab', 'old (x)', "
                "'normal', 0.9, 'normal', 'argmax', NULL, 0, '{\"normal\": 0.9}', '{}', '[]', "
                "0, 0.1, 'summary', NULL)"
            ),
            {"t": now},
        )
        c.execute(text("INSERT INTO batch_items VALUES (1, 'j1', 0, 'old.png', 'r1', NULL)"))

    migrate(engine)
    with engine.connect() as c:  # the finished worklist item joins the durable queue as done
        assert c.execute(text("SELECT status FROM batch_items")).scalar() == "done"
    cols = {c["name"] for c in inspect(engine).get_columns("results")}
    assert {"heads", "modalities_used"} <= cols
    assert "accession" in {c["name"] for c in inspect(engine).get_columns("images")}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with session_factory(engine)() as db:
        old = db.get(Result, "r1")
        assert old is not None and old.heads is None and old.modalities_used is None
        assert db.get(StoredImage, "i1").accession is None  # stored only when given
        old.heads = {"risk": {"value": 0.5}}
        old.modalities_used = ["mri"]
        db.commit()
    with session_factory(engine)() as db:
        r = db.get(Result, "r1")
        assert r.heads == {"risk": {"value": 0.5}} and r.modalities_used == ["mri"]

    _alembic(engine, "downgrade", "0001")
    assert "accession" not in {c["name"] for c in inspect(engine).get_columns("images")}
    assert not {"heads", "modalities_used"} & {
        c["name"] for c in inspect(engine).get_columns("results")
    }
    with engine.connect() as c:
        # the worklist still points at its result (no table rebuild nulled the foreign key)
        assert c.execute(text("SELECT result_id FROM batch_items")).scalar() == "r1"
    engine.dispose()
