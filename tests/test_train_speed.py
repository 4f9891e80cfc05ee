"""Training speed settings never change what is learned (issue #16, item 6; no timing here).

``benchmarks/bench_train.py`` measures images/s of the runner of ``medlens train`` against a
plain PyTorch loop and each speed option; this file checks the other half of the rule "keep only
what is faster with identical results": on a tiny seed-fixed run the runner, with every setting
it uses by default (checkpoints, logging, validation), ends an epoch with exactly the weights of
the plain loop (same data order, loss, class weights, schedule and clipping), and the progress
bar - on for ``medlens train``, off in tests - changes nothing. None of the options measured
(channels-last, bf16 autocast, torch.compile, loader workers, thread count) kept results
identical, so none is on by default (see the benchmark's JSON).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    bench = _bench()
    root = tmp_path_factory.mktemp("speed")
    recipe, manifest, splits, data = bench.setup("chest_xray", n=60, size=32, epochs=2, root=root)
    d = recipe.model_dump(mode="json", exclude={"source_dir"})
    d["train"]["batch_size"] = 8
    # Augmentation and dropout draw from the global random stream, whose order the runner's
    # validation loader also touches (a new iterator draws a seed): without them the two loops
    # must agree bit for bit, so any difference left would be the runner's own arithmetic.
    d["train"]["augment"] = None
    d["model"]["kwargs"]["dropout"] = 0.0
    from medlens.recipes import parse_recipe

    recipe = parse_recipe(d, recipe.name, recipe.source_dir)
    return bench, recipe, manifest, splits, data


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _fit(tiny, run_dir: Path, progress: bool) -> dict[str, torch.Tensor]:
    from medlens.train.trainer import fit

    _, recipe, manifest, splits, data = tiny
    fit(recipe, manifest, splits, run_dir, progress=progress, data=data)
    return _last_weights(run_dir)


def test_last_checkpoint_is_the_latest_epoch(tiny, tmp_path):
    """What a resumed fit continues from: the last epoch run, whether or not it was the best."""
    _, recipe, *_ = tiny
    _fit(tiny, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == recipe.train.epochs - 1


def test_runner_learns_exactly_what_a_plain_loop_learns(tiny, tmp_path):
    """One epoch (the runner creates its loader iterators at other moments than a naive loop,
    which shifts the shuffle stream from the second epoch on: an order, not arithmetic)."""
    from medlens.recipes import parse_recipe

    bench, recipe, manifest, splits, data = tiny
    d = recipe.model_dump(mode="json", exclude={"source_dir"})
    d["train"]["epochs"] = 1
    recipe = parse_recipe(d, recipe.name, recipe.source_dir)
    runner = _fit((bench, recipe, manifest, splits, data), tmp_path / "runner", progress=False)
    bare = bench.run_bare(recipe, data)["state"]
    assert set(runner) == set(bare)
    for k, v in runner.items():
        assert torch.equal(v.float(), bare[k]), k  # bit-identical, not merely close
    # and training did move the weights (the comparison is not between two untrained nets)
    assert any(not torch.equal(v, bare[k]) for k, v in _untrained(tiny).items())


def _untrained(tiny) -> dict[str, torch.Tensor]:
    """The untrained network as the runner builds it (same seed)."""
    import lightning as L

    from medlens.models import create_model

    _, recipe, _, _, _ = tiny
    L.seed_everything(recipe.train.seed, workers=True, verbose=False)
    net = create_model(
        recipe.model.name,
        num_classes=len(recipe.task.classes),
        in_chans=recipe.in_chans(),
        **recipe.model_kwargs(),
    )
    return {k: v.float() for k, v in net.state_dict().items()}


def test_progress_bar_changes_nothing(tiny, tmp_path):
    quiet = _fit(tiny, tmp_path / "quiet", progress=False)
    shown = _fit(tiny, tmp_path / "shown", progress=True)
    assert all(torch.equal(quiet[k], shown[k]) for k in quiet)
