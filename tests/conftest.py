"""Shared fixtures: tiny recipes and data, the real-data folder beside the project, and one
trained tiny bundle per test session for the web-service and browser tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_recipe_dict(**overrides) -> dict:
    """A chest X-ray recipe shrunk to seconds: 48 px, small CNN, 2 epochs."""
    d = {
        "name": "tiny_cxr",
        "task": {
            "classes": ["normal", "pneumonia", "tuberculosis"],
            "positive": ["pneumonia", "tuberculosis"],
            "priority": ["tuberculosis", "pneumonia"],
        },
        "data": {
            "source": "phantoms",
            "phantoms": {"kind": "chest_xray", "n": 60, "size": 48, "seed": 1},
        },
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "preprocess": [
            {"step": "grayscale"},
            {"step": "crop_border"},
            {"step": "exposure_check"},
            {"step": "clahe", "only_if_flagged": True},
            {"step": "resize", "size": 48},
            {"step": "normalize", "mean": [0.5], "std": [0.25]},
        ],
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16, 16]}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "early_stopping_patience": None},
        "evaluate": {"batch_size": 16, "n_bootstrap": 100},
        "explain": {"max_images": 8, "faithfulness_images": 2, "n_bootstrap": 50},
    }
    for k, v in overrides.items():
        d[k] = v
    return d


@pytest.fixture
def tiny_recipe():
    from medlens.recipes import parse_recipe

    return parse_recipe(tiny_recipe_dict(), "tiny.yaml")


def shrunk_recipe(name: str, n: int = 40, size: int = 48):
    """A built-in recipe cut to seconds: few phantoms, small images, one short epoch."""
    from medlens.recipes import load_recipe, parse_recipe

    r = load_recipe(name)
    d = r.model_dump(mode="json", exclude={"source_dir"})
    d["data"]["phantoms"].update({"n": n, "size": size})
    for step in d["preprocess"]:
        if step["step"] == "resize":
            step["size"] = size
    d["train"].update(
        {"epochs": 1, "batch_size": 8, "limit_train_batches": 2, "early_stopping_patience": None}
    )
    d["evaluate"].update({"n_bootstrap": 20, "batch_size": 16})
    d["explain"].update({"max_images": 3, "faithfulness_images": 1, "n_bootstrap": 20})
    if d.get("segmentation"):
        d["segmentation"].update({"epochs": 1, "batch_size": 8})
    for m in d["model"].get("members") or []:
        if "img_size" in m["kwargs"]:
            m["kwargs"]["img_size"] = size
    for c in d.get("candidates", []):
        c["train"] = {k: v for k, v in c["train"].items() if k != "epochs"}
    return parse_recipe(d, f"{name} (shrunk)", r.source_dir)


@pytest.fixture(scope="session")
def serve_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"a": bundle, "b": a copy under another name, "images": its phantom PNG folder}``.

    Trained once per session (seconds) from :func:`tiny_recipe_dict` and shared by every serve
    and browser test module; ``b`` differs from ``a`` only in its name (and so its hash), as two
    bundles of one recipe would.
    """
    import json
    import shutil

    from medlens.bundle import write_sums
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe

    root = tmp_path_factory.mktemp("serve_bundle")
    res = run_recipe(parse_recipe(tiny_recipe_dict(), "t.yaml"), root, progress=False, track=False)
    a = Path(res.bundle_dir)
    b = root / "bundle_b"
    shutil.copytree(a, b)
    meta = json.loads((b / "bundle.json").read_text())
    meta["name"] = "tiny_cxr_second"
    (b / "bundle.json").write_text(json.dumps(meta, indent=2))
    write_sums(b)
    all_images = next(root.glob("data/phantoms_*/images"))
    # The tiny bundle's input gate is fitted on a few dozen images, so it holds back a few of its
    # own phantoms as out of distribution. Page and API tests are about what an assessed result
    # shows: they get only the images this bundle assesses (the gate has its own tests).
    from medlens.inference import Predictor

    predictor = Predictor.from_bundle(a)
    files = sorted(all_images.glob("*.png"))
    images = root / "assessed_images"
    images.mkdir()
    for f, r in zip(files, predictor.predict_many(files), strict=True):
        if getattr(r, "status", None) == "ok":
            shutil.copy2(f, images / f.name)
    assert len(list(images.glob("*.png"))) >= 20, "the tiny serve bundle assesses too few images"
    return {"a": a, "b": b, "images": images, "all_images": all_images}


# --------------------------------------------------------------------------------------------
# Databases for the service tests: SQLite always, PostgreSQL when MEDLENS_TEST_DATABASE_URL is set
# (.ci/run starts Debian's PostgreSQL and sets it). Each use gets a fresh, empty database.
# --------------------------------------------------------------------------------------------

PG_ENV = "MEDLENS_TEST_DATABASE_URL"
PG_SKIP = f"PostgreSQL tests need {PG_ENV} (a server URL whose user may CREATE DATABASE)"


def _pg_admin(url: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    from medlens.serve.db import normalise_url

    return create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")


def fresh_database(kind: str):  # type: ignore[no-untyped-def]
    """A context manager yielding a database URL (None: SQLite in the workspace)."""
    import contextlib
    import secrets

    @contextlib.contextmanager
    def cm():  # type: ignore[no-untyped-def]
        if kind == "sqlite":
            yield None
            return
        base = os.environ.get(PG_ENV)
        if not base:
            pytest.skip(PG_SKIP)
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = f"medlens_t_{secrets.token_hex(6)}"
        admin = _pg_admin(base)
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            with admin.connect() as c:
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            admin.dispose()

    return cm()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request):  # type: ignore[no-untyped-def]
    """Module-wide service database: the module's tests run once on each backend."""
    with fresh_database(request.param) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request):  # type: ignore[no-untyped-def]
    """One empty database per test, on each backend."""
    with fresh_database(request.param) as url:
        yield url
