"""Model bundles: weights that never travel without their contract, verified on every load.

A bundle is a directory::

    model.safetensors   weights (safetensors: tensors only, nothing is unpickled)
    bundle.json         model spec, classes, task, preprocessing pipeline, versions,
                        training-data fingerprint and description (synthetic phantoms or real
                        images, how many, from where), intended use, creation time
    recipe.yaml         the recipe it was trained from
    metrics.json        held-out test metrics (added after evaluation)
    calibration.json, policy.json   temperature and decision thresholds (fitted on validation)
    gate.json, gate.safetensors     the input gate (see :mod:`medlens.trust_state`)
    conformal.json      class-conditional conformal prediction sets
    explanations.json   heatmap localisation evidence, when the test split had lesion masks
    SHA256SUMS          sha256 and size of every other file

:func:`load_bundle` checks every hash and size before reading anything and refuses a bundle with a
changed, missing, extra or truncated file, so serving applies exactly what was evaluated.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medlens.common import file_sha256
from medlens.errors import BundleError

FORMAT = "medlens-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bundle.json"
SUMS = "SHA256SUMS"


DEMO_NOTICE = "Demonstration model, synthetic training data: not for use on patients."


def describe_training_data(
    source: str, n_images: int | None, origin: str | None = None
) -> dict[str, Any]:
    """What a model was trained on, as the bundle records it (``bundle.json`` ``training_data``).

    ``source`` is the recipe's data source (``phantoms``, ``folder``, ``csv``, ``npz``);
    ``synthetic`` is true for generated phantoms, so every page and report of such a model can
    say it is a demonstration; ``origin`` says where the images came from (a folder, a CSV, a
    phantom kind).
    """
    synthetic = source == "phantoms"
    return {
        "source": source,
        "synthetic": synthetic,
        "n_images": None if n_images is None else int(n_images),
        "origin": origin or ("generated phantoms" if synthetic else "not recorded"),
    }


def _training_data_from_recipe(recipe_yaml: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The description for a bundle that did not record one: read from its recipe."""
    import yaml

    try:
        data = (yaml.safe_load(recipe_yaml) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError):
        data = {}
    source = str(data.get("source") or "unknown")
    if source == "phantoms":
        kind = (data.get("phantoms") or {}).get("kind", "")
        origin = f"generated {kind} phantoms".replace("  ", " ")
    else:
        origin = data.get("path")
    return describe_training_data(source, fingerprint.get("n_samples"), origin)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "medlens",
        "torch",
        "timm",
        "numpy",
        "opencv-python-headless",
        "scikit-learn",
        "scikit-image",
        "xgboost",
        "skops",
        "monai",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    metrics: dict[str, Any] | None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def created(self) -> str:
        """Creation time (ISO 8601, UTC) as written by :func:`save_bundle`."""
        return str(self.meta.get("created", ""))

    @property
    def training_data(self) -> dict[str, Any]:
        """``{source, synthetic, n_images, origin}``; read from the recipe for older bundles."""
        recorded = self.meta.get("training_data")
        if isinstance(recorded, dict):
            return recorded
        recipe = self.path / "recipe.yaml"
        text = recipe.read_text() if recipe.is_file() else ""
        return _training_data_from_recipe(text, self.meta.get("data_fingerprint") or {})

    @property
    def synthetic(self) -> bool:
        """True for a demonstration model trained on generated phantoms."""
        return bool(self.training_data.get("synthetic"))

    @property
    def sha256(self) -> str:
        """Identity of the whole bundle: the hash of its SHA256SUMS file."""
        return file_sha256(self.path / SUMS)

    def read_json(self, name: str) -> Any:
        """A verified JSON file of the bundle, or None when the bundle has none."""
        f = self.path / name
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{f}: not valid JSON: {exc}") from None

    def build_model(self) -> Any:
        """Rebuild the network from the spec and load the verified weights (strict)."""
        from safetensors.torch import load_file

        from medlens.models import create_model

        spec = self.meta["model"]
        model = create_model(
            spec["name"],
            num_classes=spec["num_classes"],
            in_chans=spec["in_chans"],
            pretrained=False,
            **spec.get("kwargs", {}),
        )
        state = load_file(str(self.path / WEIGHTS))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(
                f"{self.path}: weights do not fit model {spec['name']!r}: {str(exc)[:300]}"
            ) from None
        return model.eval()


def write_sums(path: Path) -> None:
    lines = []
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name != SUMS):
        lines.append(f"{file_sha256(f)}  {f.stat().st_size}  {f.name}")
    (path / SUMS).write_text("\n".join(lines) + "\n")


def save_bundle(
    path: str | Path,
    model: Any,
    *,
    name: str,
    model_spec: dict[str, Any],
    classes: list[str],
    task: dict[str, Any],
    preprocess: list[dict[str, Any]],
    recipe_yaml: str,
    data_fingerprint: dict[str, Any],
    intended_use: str,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically (to a temporary folder, then renamed into place).

    ``training_data`` (see :func:`describe_training_data`) says what the model learned from;
    when it is not given it is read from ``recipe_yaml`` (data source and path) and
    ``data_fingerprint`` (number of images), so every bundle records it.
    """
    from safetensors.torch import save_file

    from medlens.preprocess import Pipeline

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_spec,
        "classes": classes,
        "task": task,
        "preprocess": preprocess,
        "preprocess_fingerprint": Pipeline.from_config(preprocess).fingerprint(),
        "intended_use": intended_use,
        "data_fingerprint": data_fingerprint,
        "training_data": training_data or _training_data_from_recipe(recipe_yaml, data_fingerprint),
        "versions": library_versions(),
        **(extra or {}),
    }
    (tmp / META).write_text(json.dumps(meta, indent=2))
    (tmp / "recipe.yaml").write_text(recipe_yaml)
    if metrics is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_sums(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def add_file(bundle_path: str | Path, name: str, content: str | bytes) -> None:
    """Add or replace a file in a verified bundle and re-seal it."""
    p = Path(bundle_path)
    verify_bundle(p)
    if name in (SUMS, WEIGHTS, META) or "/" in name or name.startswith("."):
        raise BundleError(f"cannot add {name!r} to a bundle")
    target = p / name
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    write_sums(p)


def verify_bundle(path: str | Path) -> dict[str, str]:
    """Check every file against SHA256SUMS; return {name: sha256}. Raises :class:`BundleError`."""
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"bundle not found: {p} (give the folder `medlens train` wrote)")
    sums = p / SUMS
    if not sums.is_file():
        raise BundleError(f"{p} is not a medlens bundle: {SUMS} is missing")
    expected: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(sums.read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
            raise BundleError(f"{sums}, line {n}: malformed entry; the bundle is damaged")
        expected[parts[2]] = (parts[0], int(parts[1]))
    present = {f.name for f in p.iterdir() if f.is_file() and f.name != SUMS}
    if extra := sorted(present - expected.keys()):
        raise BundleError(f"{p}: file(s) not listed in {SUMS}: {extra}; the bundle was changed")
    for req in (WEIGHTS, META):
        if req not in expected:
            raise BundleError(f"{p}: {req} is not listed in {SUMS}; the bundle is incomplete")
    out = {}
    for name, (digest, size) in expected.items():
        f = p / name
        if not f.is_file():
            raise BundleError(f"{p}: {name} is missing; the bundle is incomplete")
        actual_size = f.stat().st_size
        if actual_size != size:
            raise BundleError(
                f"{p}: {name} is {actual_size} bytes, expected {size}; it was truncated or changed"
            )
        if file_sha256(f) != digest:
            raise BundleError(f"{p}: {name} does not match its SHA-256; the bundle was changed")
        out[name] = digest
    return out


def load_bundle(path: str | Path) -> Bundle:
    """Verify, then read a bundle's metadata. Weights are loaded by :meth:`Bundle.build_model`."""
    p = Path(path)
    verify_bundle(p)
    try:
        meta = json.loads((p / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{p / META}: not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{p}: not a medlens bundle (format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(
            f"{p}: bundle format {meta['format_version']} is newer than this medlens reads "
            f"({FORMAT_VERSION}); upgrade medlens"
        )
    metrics = None
    if (p / "metrics.json").is_file():
        metrics = json.loads((p / "metrics.json").read_text())
    return Bundle(p, meta, metrics)
