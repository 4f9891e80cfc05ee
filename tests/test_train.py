from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from medlens.recipes import AugmentConfig
from medlens.train.dataset import Augment
from medlens.train.losses import FocalLoss, balanced_class_weights, build_loss
from medlens.train.module import warmup_cosine


def test_balanced_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 10 + [1] * 30 + [2] * 60)
    ours = balanced_class_weights(y, 3)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(ours, ref)


def test_focal_loss_reduces_to_ce_at_gamma_zero_and_downweights_easy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, y), ce)
    easy = torch.tensor([[8.0, 0.0, 0.0]])
    hard = torch.tensor([[0.0, 0.0, 0.0]])
    t = torch.tensor([0])
    ratio_focal = FocalLoss(2.0)(easy, t) / FocalLoss(2.0)(hard, t)
    ratio_ce = torch.nn.functional.cross_entropy(easy, t) / torch.nn.functional.cross_entropy(
        hard, t
    )
    assert ratio_focal < ratio_ce
    w = build_loss("cross_entropy", [1.0, 2.0, 3.0], 0.1, 2.0)
    assert torch.allclose(w.weight, torch.tensor([1.0, 2.0, 3.0]))


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 0.05


def test_augment_identity_flip_and_black_fill():
    x = torch.rand(4, 1, 16, 16)
    x_norm = (x - 0.5) / 0.25
    none = AugmentConfig(
        hflip=0, rotate_degrees=0, scale=(1.0, 1.0), translate=0, brightness=0, contrast=0
    )
    assert torch.allclose(Augment(none, [0.5], [0.25])(x_norm), x_norm, atol=1e-6)
    flip = none.model_copy(update={"hflip": 1.0})
    assert torch.allclose(Augment(flip, [0.5], [0.25])(x_norm), x_norm.flip(-1), atol=1e-6)
    black = (torch.zeros(2, 1, 16, 16) - 0.5) / 0.25
    geo = none.model_copy(update={"rotate_degrees": 30, "translate": 0.2, "scale": (0.8, 1.2)})
    out = Augment(geo, [0.5], [0.25])(black)
    assert torch.allclose(out, black, atol=1e-5)  # padding is black, not the normalised zero
    full = AugmentConfig()
    y = Augment(full, [0.5], [0.25])(x_norm)
    assert y.shape == x_norm.shape and not torch.allclose(y, x_norm)


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    """A run stopped after epoch 1 (no 'done' marker) continues at epoch 2, not from scratch."""
    from medlens.data.splits import load_or_make_splits
    from medlens.recipes import parse_recipe
    from medlens.train.trainer import DONE, fit
    from medlens.workflow import recipe_manifest
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict()
    d["train"]["epochs"] = 1
    recipe = parse_recipe(d, "tiny.yaml")
    manifest = recipe_manifest(recipe, None, tmp_path)
    run_dir = tmp_path / "run"
    splits, _ = load_or_make_splits(manifest, recipe.split, run_dir / "splits.csv")
    first = fit(recipe, manifest, splits, run_dir, progress=False)
    assert not first.resumed and (run_dir / "checkpoints" / "last.ckpt").is_file()
    (run_dir / DONE).unlink()  # as if the process died before finishing
    recipe.train.epochs = 2
    second = fit(recipe, manifest, splits, run_dir, progress=False)
    assert second.resumed
    import csv

    def epochs_logged(version: int) -> set[str]:
        with (run_dir / "logs" / f"version_{version}" / "metrics.csv").open() as fh:
            return {r["epoch"] for r in csv.DictReader(fh)}

    assert epochs_logged(0) == {"0"}
    assert epochs_logged(1) == {"1"}  # the resumed fit ran only the second epoch
    assert json.loads((run_dir / DONE).read_text())["epochs"] == 2


@pytest.fixture
def toy_kind():
    """A model kind that exists only in this test: a registry entry plus a fitter, nothing else."""
    from medlens.models import register_model, unregister_model
    from medlens.train.fitters import FITTERS, register_fitter
    from medlens.train.request import FitResult, StagedFit

    calls: list = []

    @register_model("toy_kind_model", kind="toy")
    def toy_kind_model(num_classes, in_chans=1, pretrained=False, **kw):
        return torch.nn.Linear(in_chans, num_classes)

    @register_model("toy_kind_inner", kind="toy_inner")
    def toy_kind_inner(num_classes, in_chans=1, pretrained=False, **kw):
        return torch.nn.Linear(in_chans, num_classes)

    def fit_toy(req):
        calls.append(("toy", req))
        model = toy_kind_model(len(req.recipe.task.classes))
        result = FitResult(model, req.run_dir, 0.5, 1, False, {})
        return StagedFit(result, {"toy": True}, {"fitted_by": "toy"})

    @register_fitter("toy_inner")
    def fit_inner(req):
        calls.append(("toy_inner", req))
        return fit_toy(req)

    register_fitter("toy")(fit_toy)
    yield calls
    for name in ("toy_kind_model", "toy_kind_inner"):
        unregister_model(name)
    for kind in ("toy", "toy_inner"):
        FITTERS.pop(kind, None)


def _toy_recipe(model_name: str):
    from medlens.recipes import parse_recipe
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict()
    d["model"] = {"name": model_name}
    return parse_recipe(d, "toy.yaml")


def test_a_new_model_kind_is_a_registry_entry_plus_a_fitter(toy_kind, tmp_path):
    from medlens.models import model_info
    from medlens.workflow import train_model

    recipe = _toy_recipe("toy_kind_model")
    assert model_info("toy_kind_model").kind == "toy"
    manifest, splits = object(), object()  # the toy fitter reads neither
    staged = train_model(recipe, manifest, splits, tmp_path, progress=False)  # type: ignore[arg-type]
    assert staged.info == {"fitted_by": "toy"} and staged.model_kwargs == {"toy": True}
    ((kind, req),) = toy_kind
    assert kind == "toy" and req.recipe is recipe and req.run_dir == tmp_path
    assert req.manifest is manifest and req.splits is splits and req.progress is False


def test_stages_are_fitted_by_their_own_kind(toy_kind, tmp_path):
    """A composite model's stage (an ensemble member) goes through the table, not a name test."""
    from medlens.recipes import ModelConfig
    from medlens.train.fitters import FitRequest, fit_model

    outer = _toy_recipe("toy_kind_model")
    inner = outer.with_model(ModelConfig(name="toy_kind_inner"), {}, "inner")
    shared = object()  # prepared data: handed to the stage, never prepared again
    req = FitRequest(outer, object(), object(), tmp_path, False, data=shared)  # type: ignore[arg-type]
    fit_model(req)
    staged_req = toy_kind[0][1]
    staged = staged_req.stage(inner, tmp_path / "members" / "inner")
    assert staged.info == {"fitted_by": "toy"}
    kind, got = toy_kind[1]
    assert (
        kind == "toy_inner" and got.data is shared and got.run_dir == tmp_path / "members" / "inner"
    )


def test_a_kind_without_a_fitter_is_named(tmp_path):
    from medlens.errors import RecipeError
    from medlens.models import register_model, unregister_model
    from medlens.workflow import train_model

    register_model("toy_no_fitter", kind="unfitted")(
        lambda num_classes, in_chans=1, pretrained=False: torch.nn.Identity()
    )
    try:
        with pytest.raises(RecipeError, match=r"toy_no_fitter.*'unfitted'.*register_fitter"):
            train_model(_toy_recipe("toy_no_fitter"), object(), object(), tmp_path)  # type: ignore[arg-type]
    finally:
        unregister_model("toy_no_fitter")


def test_progress_bar_hides_v_num():
    from medlens.train.runner import progress_bar

    bar = progress_bar()

    from types import SimpleNamespace

    # what get_metrics reads from a Lightning trainer: its loggers and the logged bar metrics
    trainer = SimpleNamespace(
        loggers=[SimpleNamespace(version=3)], progress_bar_metrics={"train_loss": 0.5}
    )
    from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics

    assert get_standard_metrics(trainer) == {"v_num": 3}  # what Lightning would show
    items = bar.get_metrics(trainer, None)
    assert "v_num" not in items and items["train_loss"] == 0.5
