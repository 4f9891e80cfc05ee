"""Per-modality explanations of a fusion model's fused decision (issue #16, item 4).

A tiny CT + MRI fusion model learns, in a few steps, a class marked by a bright blob that both
modalities show at the same place; each modality's heatmap is then read from its own encoder for
the fused output and must have the image's size, carry structure and favour the blob. Withholding
a modality (its learned placeholder instead) must change the output, and the contribution
reported must be exactly that change. A shrunk brain_tumor run must write the per-modality
report section, and the result page of a CT + MRI upload must show two heatmaps.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
import torch

from medlens.explain.modalities import explain_modalities, modality_contributions
from medlens.models import create_model, model_info

SIZE = 32


def _blob_batch(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class 1: a bright 8 x 8 blob at a random place in both images; class 0: noise only."""
    y = torch.randint(0, 2, (n,), generator=gen)
    mri = torch.randn(n, 1, SIZE, SIZE, generator=gen) * 0.3
    ct = torch.randn(n, 1, SIZE, SIZE, generator=gen) * 0.3
    for i in range(n):
        if y[i]:
            r, c = (int(v) for v in torch.randint(2, SIZE - 10, (2,), generator=gen))
            mri[i, :, r : r + 8, c : c + 8] += 2.0
            ct[i, :, r : r + 8, c : c + 8] += 1.5
    return {"mri": mri, "ct": ct}, y


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    m = create_model(
        "fusion",
        num_classes=2,
        in_chans=1,
        encoders={"mri": "small_cnn", "ct": "small_cnn"},
        proj_dim=16,
        modality_dropout=0.25,
    )
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(25):
        x, y = _blob_batch(16, gen)
        loss = torch.nn.functional.cross_entropy(m(x)["class"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _case() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    mri = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 0.3
    ct = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(6)) * 0.3
    mri[..., 4:12, 18:26] += 2.0
    ct[..., 4:12, 18:26] += 1.5
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:12, 18:26] = True
    return {"mri": mri, "ct": ct}, mask


def test_the_registry_says_fusion_is_explained_per_modality():
    info = model_info("fusion")
    assert info.cam == "modalities" and info.inputs == "modalities" and info.explainable


def test_each_modality_gets_its_own_nontrivial_map(trained):
    x, mask = _case()
    res = explain_modalities(trained, x, "gradcam++", target_class=1)
    assert set(res.modalities) == {"mri", "ct"}
    for m, e in res.modalities.items():
        assert e.given and e.cam is not None
        assert e.cam.shape == (SIZE, SIZE)  # the image's size
        assert np.isfinite(e.cam).all() and e.cam.min() >= 0 and e.cam.max() <= 1
        assert e.cam.std() > 0.05  # structure, not a flat map
        assert e.layer.startswith(f"encoders.{m}.")  # read from that modality's own encoder
        # the map favours the blob both images share: more mass there than a uniform map
        assert e.cam[mask].sum() / e.cam.sum() > mask.mean()


def test_withholding_a_modality_changes_the_output_and_is_reported(trained):
    x, _ = _case()
    res = explain_modalities(trained, x, "gradcam++")
    cls = res.target_class
    with torch.no_grad():
        p_all = torch.softmax(trained(x)["class"], 1)[0, cls].item()
        for m in ("mri", "ct"):
            present = {m: torch.zeros(1, dtype=torch.bool)}
            p_without = torch.softmax(trained(x, present)["class"], 1)[0, cls].item()
            e = res.modalities[m]
            assert abs(p_without - p_all) > 1e-4  # withholding changes the output
            assert e.probability_without == pytest.approx(p_without, abs=1e-5)
            assert e.contribution == pytest.approx(p_all - p_without, abs=1e-5)
    assert res.probability == pytest.approx(p_all, abs=1e-5)
    # A modality that was not given has no map and nothing to withhold.
    one = explain_modalities(trained, {"mri": x["mri"], "ct": None}, "gradcam")
    assert one.modalities["ct"].cam is None and one.modalities["ct"].contribution is None
    assert "placeholder" in (one.modalities["ct"].note or "")
    assert one.modalities["mri"].cam.shape == (SIZE, SIZE)
    # Temperature scales the reported probabilities (a bundle's calibration), not the class.
    cls_t, p_t, _ = modality_contributions(trained, x, cls, temperature=2.0)
    assert cls_t == cls and p_t != pytest.approx(p_all)


def test_single_image_models_are_refused():
    from medlens.explain.targets import ExplainError

    net = create_model("small_cnn", num_classes=2, in_chans=1)
    with pytest.raises(ExplainError, match="fusion"):
        explain_modalities(net, {"mri": torch.zeros(1, 1, SIZE, SIZE)})


# ---- a fusion run: report section, bundle, page ----------------------------------------------


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory):
    from medlens.workflow import run_recipe
    from tests.conftest import shrunk_recipe

    return run_recipe(
        shrunk_recipe("brain_tumor", n=40, size=48),
        tmp_path_factory.mktemp("fusion_run"),
        progress=False,
        track=False,
    )


@pytest.mark.slow
def test_fusion_run_report_has_the_per_modality_section(fusion_run):
    import json

    report = fusion_run.report.read_text()
    assert "Explanations per modality" in report
    assert "Contribution of each modality" in report
    assert "Not computed" not in report
    summary = json.loads((fusion_run.run_dir / "explanations.json").read_text())
    assert summary["modalities"] == ["mri", "ct"] and summary["cases"]
    for m in ("mri", "ct"):
        c = summary["contributions"][m]
        assert c["n"] == len(summary["cases"]) and c["value"] is not None
    # The phantoms carry tumour masks: localisation is scored per modality beside the baselines.
    from medlens.explain.scores import BASELINES

    methods = summary["localisation"]["methods"]
    assert {"mri · gradcam++", "ct · gradcam++", *BASELINES} <= set(methods)
    assert report.count('alt="mri heatmap') >= 1 and report.count('alt="ct heatmap') >= 1


def _png_bytes(path: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_result_page_shows_a_heatmap_per_modality(fusion_run, tmp_path):
    from tests.test_serve_support import csrf, make_app, new_client, signup

    app = make_app(tmp_path / "ws", [fusion_run.bundle_dir])
    with new_client(app):
        alice = signup(app, "alice")
        page = alice.get("/upload").text
        assert 'name="companion"' in page and 'value="ct"' in page
        found = next(fusion_run.run_dir.parent.glob("**/phantoms_brain_tumor*/manifest.csv"))
        with found.open(newline="") as fh:
            row = next(r for r in csv.DictReader(fh) if r["label"] != "notumor" and r["ct_path"])
        mri_path, ct_path = (str(found.parent / row[c]) for c in ("path", "ct_path"))
        r = alice.post(
            "/upload",
            data={
                "csrf_token": csrf(page),
                "model": "",
                "companion_modality": ["ct"],
            },
            files=[
                ("file", ("mri.png", _png_bytes(mri_path), "image/png")),
                ("companion", ("ct.png", _png_bytes(ct_path), "image/png")),
            ],
        )
        assert r.status_code == 303, r.text[:800]
        rid = r.headers["location"].rsplit("/", 1)[-1]
        html = alice.get(f"/results/{rid}").text
        urls = re.findall(r'src="(/results/[0-9a-f]+/heatmap/(?:mri|ct)\.png\?method=[^"]+)"', html)
        assert len(urls) == 2  # two heatmaps, side by side
        assert "MRI heatmap" in html and "CT heatmap" in html
        assert len(re.findall(r"contribution [+-]\d+\.\d points", html)) == 2
        for u in urls:
            img = alice.get(u.replace("&amp;", "&"))
            assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
        # An MRI alone: the CT is said to be missing, never drawn.
        only = alice.post(
            "/upload",
            data={"csrf_token": csrf(page), "model": ""},
            files=[("file", ("mri.png", _png_bytes(mri_path), "image/png"))],
        )
        html1 = alice.get(only.headers["location"]).text
        assert "/heatmap/ct.png" not in html1 and "CT: not given" in html1
