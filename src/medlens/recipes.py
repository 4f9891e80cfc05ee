"""Recipes: one YAML file describes a whole diagnostic system, validated before anything runs.

A recipe is data, not code: task (classes in clinical order, which are positive findings and in
what priority), data source, preprocessing pipeline, model (a registry name + kwargs), training
and evaluation settings. Every section forbids unknown keys so a typo (``epoch:`` for ``epochs:``)
is an error naming the key and the file rather than a silently ignored setting.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlens.errors import MedlensError, RecipeError
from medlens.preprocess import Pipeline, PreprocessStep

BUILTIN_RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class HeadConfig(_Strict):
    """An extra target learned beside the class (multi-task): read from a manifest column.

    A classification head's column holds integers ``0..num_classes-1`` (``classes`` names them);
    a regression head's holds numbers. An empty cell means "not known for this image": it adds
    nothing to the loss.
    """

    column: str
    type: Literal["classification", "regression"] = "classification"
    num_classes: int | None = Field(None, ge=2)
    classes: list[str] | None = Field(None, description="names of the values 0..num_classes-1")
    weight: float = Field(1.0, gt=0, description="loss weight of this head")
    ordinal: bool = Field(False, description="ordered values (stages): quadratic kappa")

    @model_validator(mode="after")
    def _sizes(self) -> HeadConfig:
        if self.type == "classification":
            if self.num_classes is None and self.classes is None:
                raise ValueError("a classification head needs num_classes or classes")
            if self.num_classes is None:
                self.num_classes = len(self.classes or [])
            if self.classes is not None and len(self.classes) != self.num_classes:
                raise ValueError(
                    f"classes has {len(self.classes)} names but num_classes is {self.num_classes}"
                )
        elif self.num_classes is not None or self.classes is not None:
            raise ValueError("a regression head takes no num_classes/classes")
        return self

    def out_spec(self) -> int | str:
        """What the model's head is built with: a class count or ``"regression"``."""
        return "regression" if self.type == "regression" else int(self.num_classes or 0)


class TaskConfig(_Strict):
    """What is predicted. ``classes`` are listed in clinical order (normal first)."""

    type: Literal["classification"] = "classification"
    classes: list[str] = Field(min_length=2)
    heads: dict[str, HeadConfig] = Field(
        default_factory=dict,
        description="extra targets (multi-task), e.g. stage and risk; the class head is 'class'",
    )
    class_weight: float = Field(1.0, gt=0, description="loss weight of the class head")
    positive: list[str] = Field(default_factory=list, description="classes that are findings")
    priority: list[str] = Field(
        default_factory=list,
        description="decision priority, most dangerous first (e.g. tuberculosis, pneumonia)",
    )

    @model_validator(mode="after")
    def _check_names(self) -> TaskConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        if "class" in self.heads:
            raise ValueError("heads: 'class' is the name of the main head; pick another name")
        for field in ("positive", "priority"):
            unknown = [c for c in getattr(self, field) if c not in self.classes]
            if unknown:
                raise ValueError(
                    f"{field} names {unknown}, which are not in classes {self.classes}"
                )
        return self


class PhantomConfig(_Strict):
    kind: str = "chest_xray"
    n: int = Field(600, ge=6)
    size: int = Field(128, ge=16, le=1024)
    seed: int = 0


class DataConfig(_Strict):
    """Where labelled images come from.

    Relative paths are resolved against the recipe file's folder; ``medlens train --data`` overrides
    ``path`` (relative to the working directory).
    """

    source: Literal["folder", "csv", "npz", "phantoms"] = "folder"
    path: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    patient_column: str | None = "patient_id"
    mask_column: str | None = "mask_path"
    box_columns: list[str] | None = Field(
        None,
        description="four columns x0,y0,x1,y1 of a lesion box (several rows per image allowed)",
    )
    npz_keys: list[tuple[str, str]] = Field(
        default_factory=lambda: [("train_images", "train_labels")],
        description="(images key, labels key) pairs read from a MedMNIST-style .npz",
    )
    label_map: dict[int, str] | None = Field(
        None, description="integer label -> class name, for .npz (and numeric CSV labels)"
    )
    phantoms: PhantomConfig = Field(default_factory=PhantomConfig)
    merge_classes: dict[str, str] | None = Field(
        None,
        description="relabel before training, e.g. glioma/meningioma/pituitary -> tumor for a "
        "binary screening model trained on a 4-class data set",
    )
    class_aliases: dict[str, str] | None = Field(
        None,
        description="folder or label names -> class names where they differ by more than case, "
        "e.g. {TB: tuberculosis}; names are matched case-insensitively",
    )
    modalities: dict[str, str] | None = Field(
        None,
        description="several images per case (fusion): modality -> CSV column of its path; "
        "the first is the main image; an empty cell is a missing modality",
    )

    @model_validator(mode="after")
    def _needs_path(self) -> DataConfig:
        if self.modalities is not None and len(self.modalities) < 2:
            raise ValueError("modalities needs two or more entries (modality: column)")
        if self.box_columns is not None and len(self.box_columns) != 4:
            raise ValueError("box_columns must name exactly four columns: x0, y0, x1, y1")
        return self


class SplitConfig(_Strict):
    val: float = Field(0.15, gt=0, lt=0.5)
    test: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0
    group_by_patient: bool = True
    group_copies: bool = Field(
        True, description="keep exact and near copies of an image in one split (and check it)"
    )
    copy_threshold: int = Field(
        12,
        ge=0,
        le=40,
        description="perceptual-hash distance under which two images are copy *candidates* "
        "(the audit's default): a candidate is a near-identical copy only when its fine detail "
        "matches too, so training and `medlens audit` share one definition of a copy",
    )
    group_lookalikes: bool | Literal["auto"] = Field(
        "auto",
        description="also keep the audit's look-alikes (adjacent slices, frames of one sweep) in "
        "one split, in bounded groups; auto: when the data carry no patient ids",
    )
    allow_leakage: bool = Field(
        False, description="train even when copies or patients cross splits (the report says so)"
    )


def model_kind(name: str) -> str:
    """The registry kind of a model name (``ensemble``, ``roi``, ``fusion``...), asked rather
    than read from the name. A name the registry does not hold (a timm network, a hybrid, a typo)
    counts as a plain network here; building it later names an unknown model with suggestions."""
    from medlens.models.registry import model_info

    return model_info(name, strict=False).kind


class MemberConfig(_Strict):
    """One model of a soft-voting ensemble, trained on its own with the recipe's settings."""

    name: str
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    pretrained: bool | str = False
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0)
    train: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the train section for this member"
    )

    def key(self) -> str:
        return self.label or self.name.replace("+", "-")


class ModelConfig(_Strict):
    """A registry name plus keyword arguments; ``pretrained`` is a bool or a local weights file.

    ``name: soft_voting`` with ``members`` makes a weighted soft-voting ensemble: each member is
    trained on the same split, then its weights come from the recipe or, with
    ``fit_weights: true``, are fitted on the validation split.
    """

    name: str
    pretrained: bool | str = False
    in_chans: int | None = Field(None, description="defaults to the preprocessing's channels")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    members: list[MemberConfig] | None = None
    fit_weights: bool = False

    @model_validator(mode="after")
    def _ensemble(self) -> ModelConfig:
        if (model_kind(self.name) == "ensemble") != (self.members is not None):
            raise ValueError(
                "members are given with an ensemble model (name: soft_voting), and only then"
            )
        if self.members is not None:
            if len(self.members) < 2:
                raise ValueError("an ensemble needs two or more members")
            keys = [m.key() for m in self.members]
            if len(set(keys)) != len(keys):
                raise ValueError(f"member labels must be unique, got {keys}")
            if not self.fit_weights and sum(m.weight for m in self.members) <= 0:
                raise ValueError("member weights are all zero")
        return self


class SegmentationConfig(_Strict):
    """The first stage of a ``roi_classifier``: a segmenter trained on a mask column."""

    mask_column: str = Field(description="manifest column with the region-of-interest masks")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    patience: int = Field(5, ge=1)


class CandidateConfig(_Strict):
    """A model `medlens compare` trains on the same split as the others."""

    label: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig
    train: dict[str, Any] = Field(default_factory=dict, description="train overrides")


class AugmentConfig(_Strict):
    hflip: float = Field(0.5, ge=0, le=1)
    rotate_degrees: float = Field(7.0, ge=0, le=45)
    scale: tuple[float, float] = (0.92, 1.08)
    translate: float = Field(0.04, ge=0, le=0.3)
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)
    # Acquisition randomisers (shortcut neutralisation, see medlens.train.dataset.Augment):
    jpeg: float = Field(0.0, ge=0, le=1, description="probability of JPEG re-encoding")
    jpeg_quality: tuple[int, int] = (30, 95)
    gamma: float = Field(0.0, ge=0, le=1, description="gamma = exp(U(-g, g))")
    blur: float = Field(0.0, ge=0, le=5, description="max Gaussian sigma (pixels), half the images")
    colour_jitter: float = Field(0.0, ge=0, le=1, description="per-channel gain and saturation")


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["balanced", "none"] | list[float] = "balanced"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    early_stopping_patience: int | None = Field(5, ge=1)
    monitor: Literal["val_macro_f1", "val_loss"] = "val_macro_f1"
    seed: int = 0
    devices: int = Field(1, ge=1, description="CPU processes or GPUs; >1 uses DDP")
    accelerator: Literal["auto", "cpu", "gpu"] = "cpu"
    num_workers: int = Field(0, ge=0)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    augment: AugmentConfig | None = Field(default_factory=AugmentConfig)
    limit_train_batches: int | float | None = Field(None, description="for smoke tests only")


class EvaluateConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap replicates for the intervals")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_seed: int = 0
    target_specificity: float = Field(0.9, gt=0, lt=1, description="for sensitivity at specificity")
    ordinal: bool = Field(False, description="classes are ordered stages: quadratic-weighted kappa")
    calibration: Literal["temperature", "none"] = "temperature"
    calibration_bins: int = Field(15, ge=2)
    borderline_margin: float = Field(0.05, ge=0, lt=0.5, description="worklist: |p - threshold|")
    confident_wrong: float = Field(0.95, gt=0.5, le=1, description="worklist: wrong with p >= this")
    coverage: float = Field(0.9, gt=0, lt=1, description="conformal prediction sets: coverage")
    gate_min_size: int = Field(16, ge=1, description="input gate: smallest image side accepted")
    shortcut_check: bool = Field(
        False, description="report the shortcut probe before/after preprocessing and cue tests"
    )


class ExplainConfig(_Strict):
    """The report's explanation section: CAMs on test images that have lesion masks."""

    enabled: bool = True
    methods: list[str] = Field(default_factory=lambda: ["gradcam", "gradcam++"])
    max_images: int = Field(80, ge=1, description="test images with masks that are scored")
    faithfulness_images: int = Field(20, ge=0, description="ROAD is slow: images it runs on")
    n_bootstrap: int = Field(500, ge=0)


class PolicyConfig(_Strict):
    """Sensitivity targets per priority class; thresholds are chosen on validation only."""

    targets: dict[str, float] = Field(default_factory=dict)

    @field_validator("targets")
    @classmethod
    def _in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0 < t <= 1:
                raise ValueError(f"targets.{k} must be in (0, 1], got {t}")
        return v


class Recipe(_Strict):
    """A whole diagnostic system. Load it with :func:`load_recipe`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    intended_use: str = (
        "Research and decision support only. Not a diagnosis: a clinician reviews every image "
        "and decides."
    )
    task: TaskConfig
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: list[PreprocessStep]
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    segmentation: SegmentationConfig | None = None
    candidates: list[CandidateConfig] = Field(
        default_factory=list, description="models `medlens compare` puts side by side"
    )

    # Where the recipe came from, to resolve relative data paths; not part of the YAML.
    source_dir: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _policy_names(self) -> Recipe:
        unknown = [c for c in self.policy.targets if c not in self.task.priority]
        if unknown:
            raise ValueError(
                f"policy.targets names {unknown}, which are not in task.priority {self.task.priority}"
            )
        if (model_kind(self.model.name) == "roi") != (self.segmentation is not None):
            raise ValueError(
                "model roi_classifier needs a segmentation section (and only it uses one)"
            )
        labels = [c.label for c in self.candidates]
        if len(set(labels)) != len(labels):
            raise ValueError(f"candidates: labels must be unique, got {labels}")
        return self

    def extra_columns(self) -> list[str]:
        """Manifest columns a run reads besides path/label/patient/mask."""
        cols = [h.column for h in self.task.heads.values()]
        if self.data.modalities:
            cols += list(self.data.modalities.values())[1:]
        if self.segmentation is not None:
            cols.append(self.segmentation.mask_column)
        return list(dict.fromkeys(cols))

    def path_columns(self) -> list[str]:
        """Of :meth:`extra_columns`, those holding file paths (resolved like ``path``)."""
        cols = list(self.data.modalities.values())[1:] if self.data.modalities else []
        if self.segmentation is not None:
            cols.append(self.segmentation.mask_column)
        return cols

    def model_kwargs(self) -> dict[str, Any]:
        """The model's kwargs with what the task and data imply filled in.

        The heads of a multi-task model come from ``task.heads`` (plus ``class``), and a fusion
        model's encoders must name the data's modalities, so the recipe states each fact once.
        """
        kw = dict(self.model.kwargs)
        name = self.model.name
        kind = model_kind(name)
        heads: dict[str, int | str] = {"class": len(self.task.classes)}
        heads.update({h: c.out_spec() for h, c in self.task.heads.items()})
        if kind == "fusion":
            if not self.data.modalities:
                raise RecipeError(f"{self.name}: model fusion needs data.modalities")
            enc = kw.get("encoders") or {m: "resnet18" for m in self.data.modalities}
            if list(enc) != list(self.data.modalities):
                raise RecipeError(
                    f"{self.name}: model.kwargs.encoders names {list(enc)}, but data.modalities "
                    f"is {list(self.data.modalities)}; name the same modalities in the same order"
                )
            kw["encoders"] = enc
        elif self.data.modalities:
            raise RecipeError(f"{self.name}: data.modalities needs model fusion")
        if kind in ("multitask", "fusion"):
            kw["heads"] = heads
            kw["primary"] = "class"
        elif kind == "roi":
            clf = dict(kw.get("classifier") or {"name": "small_cnn"})
            if self.task.heads:
                if model_kind(str(clf.get("name"))) != "multitask":
                    raise RecipeError(
                        f"{self.name}: task.heads needs model.kwargs.classifier.name: multitask"
                    )
                clf["kwargs"] = {**clf.get("kwargs", {}), "heads": heads, "primary": "class"}
            kw["classifier"] = clf
        elif self.task.heads:
            raise RecipeError(
                f"{self.name}: task.heads needs a multi-head model (multitask, fusion or "
                f"roi_classifier), not {name!r}"
            )
        return kw

    def with_model(self, model: ModelConfig, train: dict[str, Any], name: str) -> Recipe:
        """A copy training another model (a compare candidate or an ensemble member)."""
        data = self.model_dump(mode="python", exclude={"source_dir"})
        data["name"] = name
        data["model"] = model.model_dump(mode="python")
        data["train"] = {**data["train"], **train}
        data["candidates"] = []
        if model_kind(model.name) != "roi":
            data["segmentation"] = None
        try:
            out = Recipe.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(format_validation_error(exc, f"{self.name} ({name})")) from None
        out.source_dir = self.source_dir
        return out

    @field_validator("preprocess")
    @classmethod
    def _valid_pipeline(cls, steps: list[Any]) -> list[Any]:
        Pipeline(steps)  # raises on a pipeline that cannot produce a fixed-size tensor
        return steps

    def pipeline(self) -> Pipeline:
        return Pipeline(self.preprocess)

    def in_chans(self) -> int:
        return self.model.in_chans or self.pipeline().output_channels

    def data_path(self, override: str | Path | None = None) -> Path | None:
        """The data location: the CLI override (cwd-relative) or the recipe's (recipe-relative)."""
        if override is not None:
            return Path(override).expanduser().resolve()
        if self.data.path is None:
            return None
        p = Path(self.data.path).expanduser()
        if not p.is_absolute() and self.source_dir is not None:
            p = self.source_dir / p
        return p.resolve()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude={"source_dir"}), sort_keys=False)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (for 'did you mean' hints); empty when unknown."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(getattr(current, "model_fields", {}).keys()) if current is not None else []


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into lines a person can act on, each naming file and key."""
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err.get("type") == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            hint = difflib.get_close_matches(key, _known_keys(Recipe, loc), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"{source}: unknown key '{where}'{suggestion}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{source}: {where}: {err.get('msg')}{got_s}")
    return "invalid recipe\n  " + "\n  ".join(lines)


def parse_recipe(
    data: dict[str, Any], source: str = "<recipe>", source_dir: Path | None = None
) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None
    except MedlensError as exc:  # the preprocessing pipeline's own check
        raise RecipeError(f"{source}: preprocess: {exc}") from None
    recipe.source_dir = source_dir
    return recipe


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a built-in recipe (``chest_xray``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = BUILTIN_RECIPE_DIR / f"{p.stem if p.suffix in ('.yaml', '.yml') else p.name}.yaml"
    if builtin.is_file():
        return builtin
    available = sorted(x.stem for x in BUILTIN_RECIPE_DIR.glob("*.yaml"))
    raise RecipeError(
        f"recipe not found: {name_or_path} (give a YAML file path or one of the built-in recipes: "
        f"{', '.join(available)})"
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe; every problem is a :class:`RecipeError` naming file and key."""
    path = resolve_recipe_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # the file name, line and column an editor can jump to
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(
            f"{where}: not valid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})"
            if mark is not None
            else f"{where}: not valid YAML: {what}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    return parse_recipe(data, str(path), path.resolve().parent)
