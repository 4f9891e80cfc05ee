"""Explanations that can be checked (medlens.explain).

A small CNN is trained for a few seconds on chest phantoms whose lesion masks are known; its
Grad-CAM / Grad-CAM++ heatmaps must then find the lesions clearly more often than heatmaps that
never look at the image (smooth random noise, a centred Gaussian), on the same held-out images,
with the bootstrap intervals saying so. A deliberately random heatmap must score like the random
baseline and be flagged unfaithful. Every model family in the registry must resolve a layer.
"""

from __future__ import annotations

import csv
import gc
import json
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medlens.data.io import read_image, read_mask
from medlens.explain.cam import METHODS, compute_cam, explain, normalise_method
from medlens.explain.draw import focus, focus_box, overlay, save_png
from medlens.explain.faithfulness import FaithfulnessScorer
from medlens.explain.images import (
    align_mask,
    evaluate_explanations,
    explain_images,
    localisation_summary,
)
from medlens.explain.scores import (
    CENTRE,
    RANDOM,
    LocalisationScorer,
    box_mask,
    centre_prior_cam,
    energy_in_mask,
    pointing_game,
    random_cam,
    topk_iou,
)
from medlens.explain.section import explanation_section_html
from medlens.explain.targets import ExplainError, TokenReshape, resolve_target_layer
from medlens.models import create_model
from tests.conftest import tiny_recipe_dict

CLASSES = ["normal", "pneumonia", "tuberculosis"]
EPOCHS = 24  # ~15 s on one core; clearly above chance (3 classes)
N_TEST = 150  # held-out phantoms: 100 with a lesion


@dataclass
class Trained:
    predictor: object
    model: nn.Module
    pipeline: object
    test_rows: list[dict]  # path, mask_path (absolute), label
    accuracy: float


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    workers waiting on each other make a 4 ms heatmap take hundreds; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A small CNN trained 24 epochs on 240 phantoms (64 px), saved as a real bundle."""
    from medlens.bundle import save_bundle
    from medlens.data.phantoms.chest import generate_chest_phantoms
    from medlens.inference import Predictor
    from medlens.recipes import parse_recipe

    tmp = tmp_path_factory.mktemp("explain")
    d = tiny_recipe_dict()
    d["preprocess"][4] = {"step": "resize", "size": 64}
    d["model"] = {"name": "small_cnn", "kwargs": {"widths": [16, 32, 64]}}
    recipe = parse_recipe(d, "tiny.yaml")
    pipeline = recipe.pipeline()

    def load(root: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        manifest = generate_chest_phantoms(root, n=n, size=64, seed=seed)
        rows = []
        for r in csv.DictReader(manifest.open()):
            rows.append(
                {
                    "path": root / r["path"],
                    "mask_path": root / r["mask_path"],
                    "label": CLASSES.index(r["label"]),
                }
            )
        x = np.stack([pipeline(read_image(r["path"]).array).image for r in rows])
        return torch.from_numpy(x), torch.tensor([r["label"] for r in rows]), rows

    x_tr, y_tr, _ = load(tmp / "train", 240, 0)
    x_te, y_te, rows_te = load(tmp / "test", N_TEST, 1)
    epochs, bs = EPOCHS, 32
    steps = epochs * ((len(x_tr) + bs - 1) // bs)
    with torch.random.fork_rng(devices=[]):  # seeded init, shuffles, flips and dropout
        torch.manual_seed(0)
        model = create_model("small_cnn", 3, 1, widths=[16, 32, 64])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(x_tr))
            for i in range(0, len(x_tr), bs):
                idx = perm[i : i + bs]
                xb, yb = x_tr[idx], y_tr[idx]
                flip = torch.rand(len(xb)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    assert acc >= 0.5, f"the fixture model did not learn (test accuracy {acc:.2f}, chance 0.33)"

    bundle = save_bundle(
        tmp / "bundle",
        model,
        name="explain_test",
        model_spec={
            "name": "small_cnn",
            "num_classes": 3,
            "in_chans": 1,
            "kwargs": {"widths": [16, 32, 64]},
        },
        classes=CLASSES,
        task=recipe.task.model_dump(mode="json"),
        preprocess=pipeline.to_config(),
        recipe_yaml=recipe.to_yaml(),
        data_fingerprint={"note": "explain test phantoms"},
        intended_use="tests",
    )
    predictor = Predictor.from_bundle(bundle)
    return Trained(predictor, predictor.model, pipeline, rows_te, acc)


@pytest.fixture(scope="module")
def evaluation(trained: Trained) -> dict:
    """Localisation of Grad-CAM / Grad-CAM++ on every held-out disease image (+ ROAD on 10)."""
    disease = [r for r in trained.test_rows if r["label"] > 0]
    summary = evaluate_explanations(
        trained.predictor,
        [r["path"] for r in disease],
        [r["mask_path"] for r in disease],
        methods=("gradcam", "gradcam++"),
        faithfulness_images=10,
        road_percentiles=(50,),
        n_bootstrap=1000,
        seed=0,
    )
    print("\nfixture test accuracy", round(trained.accuracy, 3))
    print(json.dumps(_brief(summary), indent=1))
    return summary


def _brief(summary: dict) -> dict:
    out = {}
    for m, res in summary["localisation"]["methods"].items():
        out[m] = {
            mt: [round(res[mt][k], 3) for k in ("value", "ci_low", "ci_high")]
            for mt in ("pointing_game", "energy_in_mask", "topk_iou")
        }
    for m, res in (summary["faithfulness"] or {})["methods"].items():
        out.setdefault(m, {})["road"] = [
            round(res["road"][k], 4) for k in ("value", "ci_low", "ci_high")
        ]
        out[m]["faithful"] = res.get("faithful")
    for m in summary["methods"]:
        vs = summary["localisation"]["methods"][m]["vs_baselines"]
        out[m]["minus"] = {
            b: {
                mt: [round(vs[b][mt][k], 3) for k in ("value", "ci_low", "ci_high")]
                for mt in ("pointing_game", "energy_in_mask")
            }
            for b in vs
        }
    return out


# --------------------------------------------------------------------------------------------
# Localisation and faithfulness of a trained model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_pointing_game_beats_both_baselines(evaluation: dict, method: str):
    loc = evaluation["localisation"]["methods"]
    res = loc[method]
    # A flat map (every contribution negative, zero after the ReLU) is skipped and counted.
    assert res["n"] >= 50 and res["n"] + sum(res["skipped"].values()) == N_TEST * 2 // 3
    assert set(res["skipped"]) <= {"flat_cam"}
    pg = res["pointing_game"]
    for b in (RANDOM, CENTRE):
        assert pg["value"] > loc[b]["pointing_game"]["value"] + 0.05
        d = res["vs_baselines"][b]["pointing_game"]
        # The paired 95 % interval of the difference lies above zero: a real, not lucky, win.
        assert d["better"] is True and d["ci_low"] > 0, (b, d)
        assert d["n"] == res["n"]
    # Energy and IoU are reported with ordered intervals (not asserted to win: small lesions).
    for mt in ("energy_in_mask", "topk_iou"):
        m = res[mt]
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1


@pytest.mark.slow
def test_gradcam_is_faithful_by_road(evaluation: dict):
    faith = evaluation["faithfulness"]["methods"]
    assert faith["gradcam"]["n"] == 10
    assert faith["gradcam"]["faithful"] is True, faith["gradcam"]["reason"]
    assert faith["gradcam"]["road"]["value"] > faith[RANDOM]["road"]["value"]


@pytest.mark.slow
def test_deliberately_random_cam_scores_at_baseline_and_is_flagged(
    trained: Trained, evaluation: dict
):
    disease = [r for r in trained.test_rows if r["label"] > 0]
    scorer = LocalisationScorer(seed=0)
    rng = np.random.default_rng(12345)
    for i, r in enumerate(disease):
        pre = trained.predictor.preprocess(r["path"])
        mask = align_mask(read_mask(r["mask_path"]), trained.pipeline, pre.info)
        scorer.update("deliberately random", str(i), random_cam(mask.shape, rng), mask)
        scorer.update_baselines(str(i), mask)
    res = scorer.compute()["methods"]["deliberately random"]
    for mt in ("pointing_game", "energy_in_mask"):
        d = res["vs_baselines"][RANDOM][mt]
        assert d["better"] is False and d["worse"] is False, (mt, d)
        assert d["ci_low"] <= 0 <= d["ci_high"]
    # Faithfulness: a random heatmap is no better than the random baseline -> flagged.
    f = FaithfulnessScorer(trained.model, percentiles=(50,), seed=0)
    for i, r in enumerate(disease[:8]):
        x = torch.from_numpy(trained.predictor.preprocess(r["path"]).image[None])
        cls = int(trained.model(x).argmax(1))
        f.update("deliberately random", str(i), x, random_cam((64, 64), rng), cls)
        f.update_random(str(i), x, cls)
    verdict = f.compute()["methods"]["deliberately random"]
    assert verdict["faithful"] is False
    assert "random" in verdict["reason"]


@pytest.mark.slow
def test_focus_is_zero_outside_mask_and_box_is_labelled(trained: Trained):
    r = next(r for r in trained.test_rows if r["label"] > 0)
    pre = trained.predictor.preprocess(r["path"])
    mask = align_mask(read_mask(r["mask_path"]), trained.pipeline, pre.info)
    cam = explain(trained.model, torch.from_numpy(pre.image[None]), "gradcam++")
    f = focus(cam, mask, roi="lesion mask")
    assert np.all(f.cam[~mask] == 0.0)
    assert f.cam.max() == pytest.approx(1.0) and f.cam.min() >= 0.0
    assert f.meta["roi"] == "lesion mask"
    assert f.meta["energy_kept"] == pytest.approx(energy_in_mask(cam, mask))
    b = focus_box(cam, (10, 10, 30, 40))
    assert b.meta["roi"] == "fixed box" and b.meta["box"] == [10.0, 10.0, 30.0, 40.0]
    outside = np.ones_like(mask)
    outside[10:40, 10:30] = False
    assert np.all(b.cam[outside] == 0.0)
    assert np.array_equal(np.asarray(b), b.cam)
    # An empty region gives zeros, not a renormalised speck.
    assert not focus(cam, np.zeros_like(mask)).cam.any()


@pytest.mark.slow
def test_every_method_on_trained_model(trained: Trained):
    r = next(r for r in trained.test_rows if r["label"] > 0)
    x = torch.from_numpy(trained.predictor.preprocess(r["path"]).image[None])
    for method in METHODS:
        res = compute_cam(trained.model, x, method, n_samples=4, batch_size=4)
        assert res.cam.shape == (64, 64) and res.cam.dtype == np.float32
        assert np.isfinite(res.cam).all() and res.cam.min() >= 0 and res.cam.max() <= 1
        assert res.layer == "features"
    aug = explain(trained.model, x, "gradcam", aug_smooth=True)
    assert aug.shape == (64, 64)
    a = explain(trained.model, x, "smoothgradcam++", n_samples=6, noise=0.2, seed=3)
    b = explain(trained.model, x, "smoothgradcam++", n_samples=6, noise=0.2, seed=3)
    plain = explain(trained.model, x, "gradcam++")
    assert np.array_equal(a, b) and not np.allclose(a, plain)
    # Explicit class and layer; no gradients or train flags left behind.
    res = compute_cam(trained.model, x, "gradcam", target_class=2, target_layer="features.6")
    assert res.target_class == 2 and res.layer == "features.6"
    assert all(p.grad is None for p in trained.model.parameters())
    assert not trained.model.training
    with pytest.raises(ExplainError, match="outside"):
        explain(trained.model, x, "gradcam", target_class=7)
    assert _hooks(trained.model) == 0


@pytest.mark.slow
def test_explain_images_writes_overlays_and_html(
    trained: Trained, evaluation: dict, tmp_path: Path
):
    rows = [r for r in trained.test_rows if r["label"] > 0][:4]
    rows += [r for r in trained.test_rows if r["label"] == 0][:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    images = [r["path"] for r in rows] + [bad]
    masks = [r["mask_path"] for r in rows] + [None]
    recs = explain_images(trained.predictor, images, "Grad-CAM++", tmp_path / "out", masks)
    assert len(recs) == 7
    for rec, r in zip(recs[:6], rows, strict=True):
        assert rec.error is None and rec.method == "gradcam++"
        assert rec.predicted in CLASSES and 0 < rec.probability <= 1
        png = read_image(rec.png).array
        assert png.shape == (64, 64, 3)
        if r["label"] > 0:
            assert set(rec.scores) == {"pointing_game", "energy_in_mask", "topk_iou"}
            assert set(rec.baseline_scores) == {RANDOM, CENTRE}
        else:
            assert rec.scores is None and rec.skipped == "empty_mask"
    assert recs[6].error and recs[6].png is None
    summary = localisation_summary(recs, n_bootstrap=200)
    assert summary["methods"]["gradcam++"]["n"] == 4
    assert summary["methods"]["gradcam++"]["skipped"] == {"empty_mask": 2}

    html = explanation_section_html(recs, evaluation, n_examples=4, n_worst=2)
    assert html.startswith("<section") and html.endswith("</section>")
    assert html.count("data:image/png;base64,") == 6  # 4 examples + 2 worst-localised
    for text in (
        "Worst-localised",
        "centre prior",
        "random (smooth noise)",
        "Faithful",
        "ROAD",
        "Lesions cover",
    ):
        assert text in html
    assert "broken.png" in html  # the failure is listed, not hidden
    # Without a summary the records' own scores are summarised.
    assert "Pointing game" in explanation_section_html(recs)


# --------------------------------------------------------------------------------------------
# Layers, hooks, heads
# --------------------------------------------------------------------------------------------

FAMILIES = [
    ("small_cnn", {"widths": [8, 16, 16]}, 1, 64, "SmallCNN"),
    ("resnet18", {}, 3, 64, "ResNet"),
    ("convnextv2_atto", {}, 3, 64, "ConvNeXt"),
    ("efficientnet_b0", {}, 3, 64, "EfficientNet"),
    ("mobilenetv3_small_050", {}, 3, 64, "MobileNetV3"),
    ("densenet121", {}, 3, 64, "DenseNet"),
    ("xception41", {}, 3, 64, "XceptionAligned"),
    ("legacy_xception", {}, 3, 64, "Xception"),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 3, 64, "Swin"),
    ("deit_tiny_patch16_224", {"img_size": 64}, 3, 64, "VisionTransformer"),
    ("deit_tiny_distilled_patch16_224", {"img_size": 64}, 3, 64, "VisionTransformer"),
]


@pytest.mark.parametrize(("name", "kwargs", "chans", "size", "family"), FAMILIES)
def test_every_family_resolves_a_layer(name, kwargs, chans, size, family):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=chans, pretrained=False, **kwargs)
    x = torch.randn(1, chans, size, size)
    res = compute_cam(model, x, "gradcam")
    assert res.layer_rule.startswith("family rule: ") and family in res.layer_rule
    assert res.cam.shape == (size, size)
    assert np.isfinite(res.cam).all() and res.cam.min() >= 0 and res.cam.max() <= 1
    assert _hooks(model) == 0


def test_generic_fallback_probe_and_token_grids():
    class Odd(nn.Module):  # no family rule: the probe must find `body.2` (last map > 1 x 1)
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.body(x)).flatten(1))

    m = Odd()
    x = torch.randn(1, 1, 20, 24)
    choice = resolve_target_layer(m, x)
    assert choice.rule.startswith("probe") and choice.name == "body"
    assert explain(m, x, "gradcam++").shape == (20, 24)
    # Token grids from the count and the input's aspect, prefix tokens dropped.
    t = torch.randn(2, 1 + 24, 5)
    out = TokenReshape(num_prefix_tokens=1, input_hw=(64, 96))(t)
    assert out.shape == (2, 5, 4, 6)
    assert torch.equal(out[:, :, 0, 1], t[:, 2, :])
    assert TokenReshape(2, grid_size=(3, 3))(torch.randn(1, 11, 4)).shape == (1, 4, 3, 3)
    assert TokenReshape(channels_last=True)(torch.randn(1, 2, 3, 7)).shape == (1, 7, 2, 3)
    assert TokenReshape()(torch.randn(1, 7, 2, 3)).shape == (1, 7, 2, 3)  # a map already
    with pytest.raises(ExplainError):
        TokenReshape(input_hw=(10, 10))(torch.randn(1, 7, 4))
    # Non-square ViT input: the grid follows the model, not a fixed 14 x 14.
    vit = create_model("deit_tiny_patch16_224", 2, 3, img_size=(64, 96))
    xv = torch.randn(1, 3, 64, 96)
    assert explain(vit, xv, "gradcam").shape == (64, 96)
    # An explicit conv layer inside a ViT is already a map: it passes through unreshaped.
    assert explain(vit, xv, "gradcam", target_layer="patch_embed.proj").shape == (64, 96)


def test_multi_head_models_pick_an_output():
    class TwoHeads(nn.Module):
        def __init__(self, as_dict: bool) -> None:
            super().__init__()
            self.as_dict = as_dict
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor):
            f = self.features(x).mean((2, 3))
            return (
                {"finding": self.a(f), "side": self.b(f)}
                if self.as_dict
                else (self.a(f), self.b(f))
            )

    x = torch.randn(1, 1, 16, 16)
    m = TwoHeads(as_dict=True)
    res = compute_cam(m, x, "gradcam", head="side", target_class=1)
    assert res.cam.shape == (16, 16) and res.target_class == 1
    with pytest.raises(ExplainError, match="finding"):
        explain(m, x, "gradcam")
    with pytest.raises(ExplainError, match="outside"):
        explain(m, x, "gradcam", head="side", target_class=2)
    t = TwoHeads(as_dict=False)
    assert explain(t, x, "gradcam++", head=1).shape == (16, 16)
    with pytest.raises(ExplainError, match="head="):
        explain(t, x, "gradcam", head=5)
    assert _hooks(m) == 0 and _hooks(t) == 0


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_hooks_released_and_no_growth_over_1000_calls():
    model = create_model("small_cnn", 2, 1, widths=[4, 4, 4])
    x = torch.randn(1, 1, 16, 16)
    for _ in range(20):  # warm-up: caches, lazy imports
        explain(model, x, "gradcam")
    gc.collect()
    objects, tensors = len(gc.get_objects()), _live_tensors()
    for i in range(1000):
        explain(model, x, "gradcam" if i % 2 else "gradcam++")
        if i % 100 == 0:
            assert _hooks(model) == 0
    gc.collect()
    assert _hooks(model) == 0
    assert _live_tensors() <= tensors, "tensors (activations/gradients) kept alive"
    assert len(gc.get_objects()) - objects < 500, "Python objects accumulate per call"
    # Byte-level check on a traced window (tracemalloc slows each call ~8x, hence 100 calls).
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        explain(model, x, "gradcam")
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes retained over 100 calls"
    # Hooks are released when the call fails too.
    with pytest.raises(ExplainError):
        explain(model, x, "gradcam", target_layer="features.99")
    with pytest.raises(ExplainError):
        explain(model, x, "gradcam", target_class=-1)
    assert _hooks(model) == 0


def test_explain_inside_inference_mode():
    """Serving code runs under inference_mode; the heatmap call re-enables autograd itself."""
    model = create_model("small_cnn", 2, 1, widths=[4, 4, 4])
    with torch.inference_mode():
        x = torch.randn(1, 1, 32, 32)
        cam = explain(model, x, "eigencam")
        assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)
        assert explain(model, x.numpy()[0], "gradcam++").shape == (32, 32)  # C x H x W array
    assert _hooks(model) == 0


def test_method_names():
    assert normalise_method("Grad-CAM++") == "gradcam++"
    assert normalise_method("smoothgradcampp") == "smoothgradcam++"
    assert normalise_method("score_cam") == "scorecam"
    with pytest.raises(ExplainError, match="gradcam"):
        normalise_method("gradcan")
    with pytest.raises(ExplainError, match="1 x C x H x W"):
        explain(create_model("small_cnn", 2, 1), torch.randn(2, 1, 16, 16))


# --------------------------------------------------------------------------------------------
# Pure scores, baselines, aggregation
# --------------------------------------------------------------------------------------------


def test_pure_scores_on_known_maps():
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True  # 16 px = 4 %
    cam = np.zeros((20, 20), np.float32)
    cam[3, 3] = 1.0
    assert pointing_game(cam, mask) == 1.0
    assert energy_in_mask(cam, mask) == 1.0
    cam2 = np.zeros((20, 20), np.float32)
    cam2[15, 15] = 1.0
    cam2[3, 3] = 0.5
    assert pointing_game(cam2, mask) == 0.0
    assert energy_in_mask(cam2, mask) == pytest.approx(0.5 / 1.5)
    # Ties at the maximum: the expected hit, not the first pixel in scan order.
    tie = np.zeros((20, 20), np.float32)
    tie[3, 3] = tie[15, 15] = 1.0
    assert pointing_game(tie, mask) == 0.5
    # Top-k IoU: exactly k pixels; a perfect 16-pixel map at 4 % is IoU 1.
    perfect = mask.astype(np.float32) + 0.01 * np.random.default_rng(0).random((20, 20))
    assert topk_iou(perfect, mask, top_fraction=0.04) == pytest.approx(1.0)
    assert topk_iou(perfect, mask, top_fraction=0.08) == pytest.approx(0.5)
    # Degenerate inputs are skipped, never scored.
    assert pointing_game(cam, np.zeros_like(mask)) is None
    assert energy_in_mask(np.ones((20, 20)), mask) is None
    with pytest.raises(ValueError, match="same H x W"):
        pointing_game(cam, mask[:10])


def test_scorer_counts_skips_and_orders_intervals():
    s = LocalisationScorer(seed=0, n_bootstrap=500)
    rng = np.random.default_rng(1)
    for i in range(30):
        mask = np.zeros((32, 32), bool)
        r, c = rng.integers(2, 24, size=2)
        mask[r : r + 6, c : c + 6] = True
        good = np.zeros((32, 32), np.float32)
        good[r : r + 6, c : c + 6] = 1.0
        good += 0.05 * random_cam((32, 32), rng)
        s.update("oracle", str(i), good, mask)
        s.update_baselines(str(i), mask)
    s.update("oracle", "empty", good, np.zeros((32, 32), bool))
    s.update_baselines("empty", np.zeros((32, 32), bool))
    out = s.compute()
    o = out["methods"]["oracle"]
    assert o["n"] == 30 and o["skipped"] == {"empty_mask": 1}
    assert out["methods"][RANDOM]["skipped"] == {"empty_mask": 1}
    assert o["pointing_game"]["value"] == 1.0
    assert out["mean_mask_fraction"] == pytest.approx(36 / 1024)  # the empty mask is not counted
    for b in (RANDOM, CENTRE):
        for mt in ("pointing_game", "energy_in_mask", "topk_iou"):
            assert o["vs_baselines"][b][mt]["better"] is True
    for res in out["methods"].values():
        for mt in ("pointing_game", "energy_in_mask", "topk_iou"):
            m = res[mt]
            assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
    # Seeded: the same calls give the same summary.
    assert s.compute() == out
    assert s.worst("oracle", n=2)[0] in {str(i) for i in range(30)}


def test_baseline_maps_and_boxes():
    c = centre_prior_cam((40, 60))
    assert c.shape == (40, 60) and c.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(c), c.shape) in {(19, 29), (19, 30), (20, 29), (20, 30)}
    r1 = random_cam((40, 60), np.random.default_rng(0))
    r2 = random_cam((40, 60), np.random.default_rng(0))
    assert np.array_equal(r1, r2) and r1.min() == 0 and r1.max() == pytest.approx(1.0)
    m = box_mask((64, 64), [(0, 0, 128, 64), (float("nan"),) * 4], ref_size=(256, 256))
    assert m.sum() == 32 * 16 and m[:16, :32].all()
    assert not box_mask((64, 64), []).any()


# --------------------------------------------------------------------------------------------
# Overlay, mask alignment, import weight
# --------------------------------------------------------------------------------------------


def test_overlay_blends_and_saves(tmp_path: Path):
    img = np.full((32, 48), 0.5, np.float32)
    cam = np.zeros((8, 12), np.float32)
    assert np.all(overlay(img, cam, alpha=0.0) == 128)
    full = overlay(img, np.ones((32, 48), np.float32), colormap="jet", alpha=1.0)
    assert full.shape == (32, 48, 3) and full.dtype == np.uint8
    assert tuple(full[0, 0]) == (128, 0, 0)  # jet's top is dark red
    rgb = overlay(np.stack([img] * 3, axis=2), cam, colormap="viridis")
    assert rgb.shape == (32, 48, 3)
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, cam, colormap="no-such-map")
    p = save_png(tmp_path / "o" / "x.png", rgb)
    assert read_image(p).array.shape == (32, 48, 3)


def test_align_mask_follows_crop_and_letterbox():
    from medlens.preprocess import Pipeline

    pipe = Pipeline.from_config(
        [
            {"step": "grayscale"},
            {"step": "crop_border"},
            {"step": "resize", "size": 32, "keep_aspect": True},
        ]
    )
    img = np.zeros((60, 100), np.float32)
    img[10:50, 20:100] = 0.3  # content 40 x 80 after the crop: letterboxed to 16 x 32
    img[20:30, 40:60] = 0.9  # a bright "lesion"
    lesion = np.zeros_like(img, dtype=bool)
    lesion[20:30, 40:60] = True
    pre = pipe(img)
    aligned = align_mask(lesion, pipe, pre.info)
    assert aligned.shape == (32, 32)
    assert np.array_equal(aligned, pre.display > 0.6)


def test_import_is_light():
    code = (
        "import sys, medlens.explain as e; "
        "assert 'torch' not in sys.modules and 'pytorch_grad_cam' not in sys.modules; "
        "assert callable(e.pointing_game); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
