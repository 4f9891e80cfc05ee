"""Experiment tracking with MLflow (optional), a leaderboard and promotion of a run's bundle.

Every training run is logged — parameters, held-out metrics with their intervals, the report and
the verified bundle as artifacts — to a local SQLite store (``<runs>/mlflow.db``, artifacts in
``<runs>/mlartifacts``) that works offline; ``MLFLOW_TRACKING_URI`` points it elsewhere. MLflow is
imported only here and only when used: without it, training still runs and says tracking is off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

log = logging.getLogger(__name__)
EXPERIMENT = "medlens"


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow


def tracking_uri(runs_dir: Path) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"
    )


def _client(runs_dir: Path) -> tuple[Any, Any]:
    mlflow = _mlflow()
    if mlflow is None:
        raise MedlensError("tracking needs MLflow: pip install 'medlens[track]'")
    uri = tracking_uri(runs_dir)
    mlflow.set_tracking_uri(uri)
    from mlflow.tracking import MlflowClient

    return mlflow, MlflowClient(uri)


def _experiment_id(mlflow: Any, client: Any, runs_dir: Path) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return str(exp.experiment_id)
    artifacts = (runs_dir / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return str(client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri()))


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
    mlflow, client = _client(runs_dir)
    exp_id = _experiment_id(mlflow, client, runs_dir)
    params = _flatten(recipe.model_dump(mode="json", exclude={"source_dir"}))
    with mlflow.start_run(experiment_id=exp_id, run_name=recipe.name) as run:
        for i in range(0, len(params), 90):  # MLflow caps params per batch
            chunk = dict(list(params.items())[i : i + 90])
            mlflow.log_params({k: str(v)[:500] for k, v in chunk.items()})
        mlflow.log_metrics(metric_values(metrics, best_val, recipe.train.monitor))
        mlflow.set_tags(
            {
                "medlens.recipe": recipe.name,
                "medlens.model": recipe.model.name,
                "medlens.bundle_sha256": bundle_sha256,
                "medlens.run_dir": str(run_dir),
                "medlens.monitor": recipe.train.monitor,
            }
        )
        for name in ("report.html", "metrics.json", "worklists.csv", "splits.csv"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        return str(run.info.run_id)


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
        client.get_run(run_id)
    except Exception:
        raise MedlensError(f"no tracked run {run_id!r} (see `medlens leaderboard`)") from None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, "bundle", tmp))
        load_bundle(local)  # refuses a bundle changed in the store
        if out.exists():
            raise MedlensError(f"{out} exists: choose a new folder for the promoted bundle")
        shutil.copytree(local, out)
    return out
