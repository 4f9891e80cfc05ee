"""Training throughput: ``medlens train``'s Lightning runner vs a bare PyTorch loop, per option.

    nice python benchmarks/bench_train.py [--recipe chest_xray] [--n 480] [--size 64]
                                          [--epochs 3] [--repeats 3] [--options all]

Both sides train the same recipe's model on the same cached, preprocessed phantom images (the
cache is built once, before any clock runs), with the same seed, batch order, augmentation,
loss, AdamW + warm-up/cosine schedule, gradient clipping and one validation pass per epoch.
The medlens side is :func:`medlens.train.trainer.fit` (the runner of ``medlens train``: Lightning,
best/last checkpoints, early stopping, CSV log); the bare side is a plain ``for`` loop with no
checkpoint, log or progress bar. images/s = training images seen / wall seconds of the fit (median over
repeats; ``_best`` from the fastest repeat, the less load-sensitive figure on shared cores).

Options tried on the medlens side (each against the default in the same process, repeats
interleaved so a burst of load from elsewhere hits both alike):

* ``channels_last``: model and batches in NHWC memory format;
* ``bf16``: ``precision: bf16-mixed`` (autocast to bfloat16 on CPU);
* ``compile``: ``torch.compile`` of the network (first-call compile time included);
* ``workers2``: ``num_workers: 2`` with persistent workers (pin memory is a GPU-only gain);
* ``threads1`` / ``threads2``: ``torch.set_num_threads``;
* ``progress``: the progress bar ``medlens train`` shows (off in every other row).

"identical" compares every option's last-epoch weights and validation logits (of the weights the
runner returns, the best epoch's) with the default's: max absolute difference, 0.0 meaning
bit-identical; ``same_best_epoch`` says whether the same epoch was chosen. Figures depend on the cores free at the time:
the JSON records the load average before and after, read them beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OPTIONS = ("progress", "channels_last", "bf16", "compile", "workers2", "threads1", "threads2")


def setup(recipe_name: str, n: int, size: int, epochs: int, root: Path) -> tuple[Any, ...]:
    """The recipe cut to the benchmark's size, its phantoms, split and preprocessed cache."""
    from medlens.recipes import load_recipe, parse_recipe
    from medlens.train.request import prepare_split_data
    from medlens.workflow import leakage_checked_splits, recipe_manifest

    r = load_recipe(recipe_name)
    d = r.model_dump(mode="json", exclude={"source_dir"})
    d["data"]["phantoms"].update({"n": n, "size": max(size, 32)})
    for step in d["preprocess"]:
        if step["step"] == "resize":
            step["size"] = size
    d["train"].update({"epochs": epochs, "early_stopping_patience": None})
    recipe = parse_recipe(d, f"{recipe_name} (bench)", r.source_dir)
    manifest = recipe_manifest(recipe, None, root)
    splits, _, _ = leakage_checked_splits(recipe, manifest, root)
    data = prepare_split_data(recipe, manifest, splits, root / "prep", progress=False)
    return recipe, manifest, splits, data


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _variant(recipe: Any, option: str | None) -> tuple[Any, Callable[[Any], None] | None]:
    """The recipe (and a ``prepare`` hook for the built network) that turns ``option`` on."""
    import torch

    d = recipe.model_dump(mode="json", exclude={"source_dir"})
    prepare = None
    if option == "bf16":
        d["train"]["precision"] = "bf16-mixed"
    elif option == "workers2":
        d["train"]["num_workers"] = 2
    elif option == "channels_last":

        def prepare(net: Any) -> None:
            net.to(memory_format=torch.channels_last)

    elif option == "compile":

        def prepare(net: Any) -> None:
            net.compile()  # in place: the forward is compiled, the state dict keeps its keys

    from medlens.recipes import parse_recipe

    return parse_recipe(d, recipe.name, recipe.source_dir), prepare


def run_medlens(recipe: Any, manifest: Any, splits: Any, data: Any, option: str | None) -> dict:
    """One fit through the runner of ``medlens train``; seconds, images and the result."""
    import torch

    from medlens.train.trainer import fit

    rec, prepare = _variant(recipe, option)
    n_threads = {"threads1": 1, "threads2": 2}.get(option or "")
    with tempfile.TemporaryDirectory() as tmp, threads(n_threads):
        t0 = time.perf_counter()
        show = option == "progress"
        with contextlib.redirect_stdout(sys.stderr):  # the bar draws on stderr, JSON on stdout
            res = fit(rec, manifest, splits, Path(tmp), progress=show, prepare=prepare, data=data)
        seconds = time.perf_counter() - t0
        net = res.model
        state = {
            k.removeprefix("_orig_mod."): v.detach().float().clone()
            for k, v in net.state_dict().items()
        }
        logits = _val_logits(net, data, recipe)
        ckpt = torch.load(Path(tmp) / "checkpoints" / "last.ckpt", weights_only=False)
        last = {
            k.removeprefix("model.").replace("_orig_mod.", ""): v.float()
            for k, v in ckpt["state_dict"].items()
            if k.startswith("model.")
        }
    n = len(data.rows["train"]) * res.epochs_run
    return {
        "seconds": seconds,
        "images": n,
        "state": state,
        "logits": logits,
        "last": last,
        "best_score": res.best_score,
    }


def _val_logits(net: Any, data: Any, recipe: Any) -> Any:
    import torch

    rows = data.rows["val"]
    x = torch.from_numpy(data.cache.array[rows]).float()
    net.eval()
    with torch.no_grad():
        if data.modal:
            main = data.main_modality or "image"
            inputs = {main: x}
            for m, (arr, _) in data.modal.items():
                inputs[m] = torch.from_numpy(arr[rows]).float()
            out = net(inputs, {m: torch.from_numpy(ok[rows]) for m, (_, ok) in data.modal.items()})
        else:
            out = net(x)
    if isinstance(out, dict):
        out = out[getattr(net, "primary", "class")]
    return out.float()


def run_bare(recipe: Any, data: Any) -> dict:
    """The same training as plain PyTorch: no Lightning, checkpoint, log or progress bar."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from medlens.train.dataset import CachedDataset, RecordDataset
    from medlens.train.request import class_weights
    from medlens.train.trainer import classifier_module, recipe_augment

    cfg = recipe.train
    rows, labels = data.rows, data.labels
    tr = [labels[i] for i in rows["train"]]
    va = [labels[i] for i in rows["val"]]
    if data.targets or data.modal:
        args = (data.targets, data.modal, data.main_modality)
        train_ds: Any = RecordDataset(data.cache.array, rows["train"], tr, *args)
        val_ds: Any = RecordDataset(data.cache.array, rows["val"], va, *args)
    else:
        train_ds = CachedDataset(data.cache.array, rows["train"], tr)
        val_ds = CachedDataset(data.cache.array, rows["val"], va)
    augment = recipe_augment(recipe)
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > cfg.batch_size,
        generator=gen,
    )
    val_dl = DataLoader(val_ds, batch_size=recipe.evaluate.batch_size, shuffle=False)
    module = classifier_module(recipe, class_weights(recipe, tr), len(train_dl))
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    seen = 0
    for _ in range(cfg.epochs):
        module.train()
        for batch in train_dl:
            if isinstance(batch, dict):
                x = batch["x"]
                if augment is not None:
                    x = {m: augment(v) for m, v in x.items()} if isinstance(x, dict) else augment(x)
                batch = {**batch, "x": x}
                y = batch["y"]
            else:
                x, y = batch
                batch = (augment(x) if augment is not None else x, y)
            out, y = module._outputs(batch)
            loss = module._loss(out, y, batch, module.criterion)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            seen += int(y.shape[0])
        module.eval()
        with torch.no_grad():
            for batch in val_dl:
                out, y = module._outputs(batch)
                module._primary(out).argmax(1)
    seconds = time.perf_counter() - t0
    net = module.model.eval()
    state = {k: v.detach().float().clone() for k, v in net.state_dict().items()}
    return {
        "seconds": seconds,
        "images": len(rows["train"]) * cfg.epochs,
        "seen": seen,
        "state": state,
        "logits": _val_logits(net, data, recipe),
    }


def _diff(a: dict, b: dict) -> dict[str, Any]:
    w = max(float((a["last"][k] - b["last"][k]).abs().max()) for k in a["last"])
    lg = float((a["logits"] - b["logits"]).abs().max())
    return {
        "max_last_weight_diff": w,
        "same_best_score": a["best_score"] == b["best_score"],
        "max_val_logit_diff": lg,
        "same_val_predictions": bool((a["logits"].argmax(1) == b["logits"].argmax(1)).all()),
        "identical": w == 0.0 and lg == 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="chest_xray")
    ap.add_argument("--n", type=int, default=480, help="phantom images (all splits)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--options", default="all", help=f"comma list of {', '.join(OPTIONS)}")
    a = ap.parse_args()
    options = list(OPTIONS) if a.options == "all" else [o for o in a.options.split(",") if o]
    import torch

    from medlens.train.runner import quiet_lightning

    quiet_lightning()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        recipe, manifest, splits, data = setup(a.recipe, a.n, a.size, a.epochs, Path(tmp))
        times: dict[str, list[float]] = {"bare": [], "default": [], **{o: [] for o in options}}
        results: dict[str, dict] = {}
        images: dict[str, int] = {}
        run_bare(recipe, data)  # warm-up (allocator, kernels, imports): not timed
        run_medlens(recipe, manifest, splits, data, None)
        for _ in range(a.repeats):
            b = run_bare(recipe, data)
            bare = b
            times["bare"].append(b["seconds"])
            images["bare"] = b["images"]
            for name in ("default", *options):
                r = run_medlens(recipe, manifest, splits, data, None if name == "default" else name)
                times[name].append(r["seconds"])
                images[name] = r["images"]
                results.setdefault(name, r)
    load_after = os.getloadavg()

    def ips(name: str, best: bool = False) -> float:
        return images[name] / (min(times[name]) if best else statistics.median(times[name]))

    base = results["default"]
    # The runner against the plain loop: the last epoch's weights (the runner returns the best).
    vs_bare = max(float((base["last"][k] - bare["state"][k]).abs().max()) for k in base["last"])
    rows: dict[str, Any] = {}
    for name in ("default", *options):
        rows[name] = {
            "images_per_s": round(ips(name), 1),
            "images_per_s_best": round(ips(name, True), 1),
            "vs_default": round(ips(name) / ips("default"), 3),
            "vs_default_best": round(ips(name, True) / ips("default", True), 3),
            "vs_bare_loop": round(ips(name) / ips("bare"), 3),
            "seconds": [round(t, 2) for t in times[name]],
            **({} if name == "default" else _diff(results[name], base)),
        }
    out = {
        "benchmark": "train",
        "recipe": a.recipe,
        "model": recipe.model.name,
        "train_images": len(data.rows["train"]),
        "val_images": len(data.rows["val"]),
        "size": a.size,
        "epochs": a.epochs,
        "batch_size": recipe.train.batch_size,
        "repeats": a.repeats,
        "bare_loop": {
            "images_per_s": round(ips("bare"), 1),
            "images_per_s_best": round(ips("bare", True), 1),
            "seconds": [round(t, 2) for t in times["bare"]],
        },
        "medlens_train": rows,
        "medlens_vs_bare": round(ips("default") / ips("bare"), 3),
        "medlens_vs_bare_best": round(ips("default", True) / ips("bare", True), 3),
        "medlens_vs_bare_max_weight_diff": vs_bare,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
