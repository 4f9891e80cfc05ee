"""Experiment tracking with MLflow (optional), a leaderboard and promotion of a run's bundle.

Every training run is logged — parameters, held-out metrics with their intervals, per-epoch
curves (train/validation loss, validation macro-F1, read from the run's Lightning CSV logs), the
report and the verified bundle as artifacts — to a local SQLite store (``<runs>/mlflow.db``,
artifacts in ``<runs>/mlartifacts``) that works offline; ``MLFLOW_TRACKING_URI`` points it
elsewhere. MLflow is imported only here and only when used: without it, training still runs and
says tracking is off.

The local store keeps no absolute path. Its experiment's artifact location is MLflow's proxied
root ``mlflow-artifacts:/``, which medlens resolves against ``<runs>/mlartifacts`` and which
``mlflow ui`` resolves against its ``--artifacts-destination`` (default ``./mlartifacts``): the
runs folder can be moved or copied to another machine and ``cd runs && mlflow ui
--backend-store-uri sqlite:///mlflow.db`` still shows every artifact. Stores made before this
(absolute ``file://`` locations) keep working where they are.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

log = logging.getLogger(__name__)
EXPERIMENT = "medlens"
PROXIED_ROOT = "mlflow-artifacts:/"  # resolved against <runs>/mlartifacts (and by `mlflow ui`)
ARTIFACT_DIR = "mlartifacts"
# Lightning CSV log column -> MLflow metric logged with step=epoch. Its own name space, so the
# ranked figure (the best validation value, e.g. ``val_macro_f1``) stays the run's latest value.
CURVES = {
    "train_loss": "epoch/train_loss",
    "val_loss": "epoch/val_loss",
    "val_macro_f1": "epoch/val_macro_f1",
}


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO lines in the terminal
    try:
        import mlflow
    except ImportError:
        return None
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def tracking_uri(runs_dir: Path) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"
    )


def _client(runs_dir: Path) -> tuple[Any, Any]:
    mlflow = _mlflow()
    if mlflow is None:
        raise MedlensError("tracking needs MLflow: pip install 'medlens[track]'")
    from mlflow.tracking import MlflowClient

    # A client bound to this store, never mlflow.set_tracking_uri: that sets the process-wide
    # MLFLOW_TRACKING_URI, and the next run in another runs folder would log into this one.
    return mlflow, MlflowClient(tracking_uri(runs_dir))


def _local_store(runs_dir: Path) -> bool:
    """True for a database or folder store (not a tracking server, which holds its artifacts)."""
    return not tracking_uri(runs_dir).startswith(("http://", "https://", "databricks"))


def _experiment_id(mlflow: Any, client: Any, runs_dir: Path) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return str(exp.experiment_id)
    if not _local_store(runs_dir):  # a tracking server chooses its own artifact root
        return str(client.create_experiment(EXPERIMENT))
    (runs_dir / ARTIFACT_DIR).mkdir(parents=True, exist_ok=True)
    return str(client.create_experiment(EXPERIMENT, artifact_location=PROXIED_ROOT))


def local_artifact_dir(runs_dir: Path, artifact_uri: str) -> Path | None:
    """Where a run's proxied artifacts lie under ``runs_dir`` (None: not a proxied location)."""
    if not artifact_uri.startswith("mlflow-artifacts:") or not _local_store(runs_dir):
        return None
    rel = artifact_uri.split(":", 1)[1].lstrip("/")
    return Path(runs_dir).resolve() / ARTIFACT_DIR / rel


def epoch_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values from ``run_dir/logs/version_*/metrics.csv`` (and ensemble members').

    A resumed fit writes a new version folder that repeats the epochs it redoes; the later
    version wins. Keys are MLflow metric names (:data:`CURVES`, ``epoch/<member>/...`` for an
    ensemble member); values are ``(epoch, value)`` sorted by epoch.
    """
    sources = [("", run_dir / "logs")]
    members = run_dir / "members"
    if members.is_dir():
        sources += [(f"{m.name}/", m / "logs") for m in sorted(members.iterdir()) if m.is_dir()]
    out: dict[str, list[tuple[int, float]]] = {}
    for prefix, logs in sources:

        def version(p: Path) -> int:
            tail = p.name.rpartition("_")[2]
            return int(tail) if tail.isdigit() else -1

        values: dict[str, dict[int, float]] = {}
        for vdir in sorted(logs.glob("version_*"), key=version):
            path = vdir / "metrics.csv"
            if not path.is_file():
                continue
            with path.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    epoch = row.get("epoch") or ""
                    if not epoch.strip():
                        continue
                    for col, name in CURVES.items():
                        cell = (row.get(col) or "").strip()
                        if cell:
                            key = name.replace("epoch/", f"epoch/{prefix}", 1)
                            values.setdefault(key, {})[int(float(epoch))] = float(cell)
        for key, by_epoch in values.items():
            out[key] = sorted(by_epoch.items())
    return out


def _log_curves(client: Any, run_id: str, run_dir: Path) -> int:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, step)
        for key, points in epoch_curves(run_dir).items()
        for step, value in points
    ]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    return len(metrics)


def _log_artifacts(client: Any, runs_dir: Path, run: Any, run_dir: Path, bundle_dir: Path) -> None:
    names = ("report.html", "metrics.json", "worklists.csv", "splits.csv")
    files = [run_dir / n for n in names if (run_dir / n).is_file()]
    local = local_artifact_dir(runs_dir, run.info.artifact_uri)
    if local is None:  # a tracking server or an older store: MLflow's own upload
        for f in files:
            client.log_artifact(run.info.run_id, str(f))
        client.log_artifacts(run.info.run_id, str(bundle_dir), artifact_path="bundle")
        return
    local.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, local / f.name)
    shutil.copytree(bundle_dir, local / "bundle", dirs_exist_ok=True)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if not isinstance(v, list) else json.dumps(v)
    return out


def metric_values(
    metrics: dict[str, Any], best_val: float | None, monitor: str
) -> dict[str, float]:
    """The numbers worth ranking on: test figures with interval bounds, validation's best."""
    out: dict[str, float] = {}
    if best_val is not None:
        out[monitor] = float(best_val)
    iv = metrics.get("intervals", {})
    for name, m in iv.get("overall", {}).items():
        for part in ("value", "ci_low", "ci_high"):
            if m.get(part) is not None:
                out[f"test_{name}" + ("" if part == "value" else f"_{part}")] = float(m[part])
    for cls, pc in iv.get("per_class", {}).items():
        for fig in ("sensitivity", "specificity", "roc_auc"):
            m = pc.get(fig, {})
            if m.get("value") is not None:
                out[f"test_{fig}_{cls}"] = float(m["value"])
    cal = metrics.get("calibration", {})
    for when in ("before", "after"):
        if (e := cal.get(f"test_{when}", {}).get("ece")) is not None:
            out[f"test_ece_{when}"] = float(e)
    return out


def log_run(
    runs_dir: Path,
    recipe: Any,
    run_dir: Path,
    bundle_dir: Path,
    metrics: dict[str, Any],
    best_val: float | None,
    bundle_sha256: str,
) -> str | None:
    """Log one finished run; returns the MLflow run id (None when MLflow is not installed)."""
    mlflow = _mlflow()
    if mlflow is None:
        log.warning("MLflow is not installed: run not tracked (pip install 'medlens[track]')")
        return None
    log.info("logging the run to MLflow (%s)", tracking_uri(runs_dir))
    mlflow, client = _client(runs_dir)
    exp_id = _experiment_id(mlflow, client, runs_dir)
    from mlflow.entities import Metric, Param

    tags = {
        "mlflow.runName": recipe.name,
        "medlens.recipe": recipe.name,
        "medlens.model": recipe.model.name,
        "medlens.bundle_sha256": bundle_sha256,
        "medlens.run_dir": _relative(run_dir, runs_dir),
        "medlens.monitor": recipe.train.monitor,
    }
    run = client.create_run(exp_id, tags=tags, run_name=recipe.name)
    run_id = str(run.info.run_id)
    try:
        params = [
            Param(k, str(v)[:500])
            for k, v in _flatten(recipe.model_dump(mode="json", exclude={"source_dir"})).items()
        ]
        for i in range(0, len(params), 90):  # MLflow caps params per batch
            client.log_batch(run_id, params=params[i : i + 90])
        now = int(time.time() * 1000)
        values = metric_values(metrics, best_val, recipe.train.monitor)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
        _log_curves(client, run_id, run_dir)
        _log_artifacts(client, runs_dir, run, run_dir, bundle_dir)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def leaderboard(
    runs_dir: Path,
    metric: str = "val_macro_f1",
    recipe: str | None = None,
    higher_is_better: bool | None = None,
) -> list[dict[str, Any]]:
    """Runs ranked on a validation metric (test figures are shown, never used to rank)."""
    if metric.startswith("test_"):
        raise MedlensError(
            f"rank on a validation metric (e.g. val_macro_f1, val_loss), not {metric!r}: choosing "
            "a model by its test score turns the test set into a validation set"
        )
    _, client = _client(runs_dir)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    flt = f"tags.`medlens.recipe` = '{recipe}'" if recipe else ""
    runs = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000)
    if higher_is_better is None:
        higher_is_better = not metric.endswith("loss")
    rows = []
    for r in runs:
        m = r.data.metrics
        if metric not in m:
            continue
        rows.append(
            {
                "run_id": r.info.run_id,
                "recipe": r.data.tags.get("medlens.recipe"),
                "model": r.data.tags.get("medlens.model"),
                "bundle_sha256": r.data.tags.get("medlens.bundle_sha256"),
                metric: m[metric],
                "test_macro_f1": m.get("test_macro_f1"),
                "test_macro_f1_ci": (m.get("test_macro_f1_ci_low"), m.get("test_macro_f1_ci_high")),
                "started": r.info.start_time,
            }
        )
    rows.sort(key=lambda x: x[metric], reverse=higher_is_better)
    return rows


def promote(runs_dir: Path, run_id: str, out: Path) -> Path:
    """Copy a run's bundle out of the store, verified, to ``out``."""
    from medlens.bundle import load_bundle

    _, client = _client(runs_dir)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise MedlensError(f"no tracked run {run_id!r} (see `medlens leaderboard`)") from None
    if out.exists():
        raise MedlensError(f"{out} exists: choose a new folder for the promoted bundle")
    import tempfile

    stored = local_artifact_dir(runs_dir, run.info.artifact_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if stored is not None:
            local = stored / "bundle"
            if not local.is_dir():
                raise MedlensError(f"run {run_id}: its bundle is missing from {stored}")
        else:
            local = Path(client.download_artifacts(run_id, "bundle", tmp))
        load_bundle(local)  # refuses a bundle changed in the store
        shutil.copytree(local, out)
    return out
