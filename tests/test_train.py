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
