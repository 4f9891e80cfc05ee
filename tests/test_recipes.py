from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medlens.errors import RecipeError
from medlens.recipes import BUILTIN_RECIPE_DIR, load_recipe, parse_recipe
from tests.conftest import tiny_recipe_dict


def test_builtin_chest_recipe_loads():
    r = load_recipe("chest_xray")
    assert r.task.classes == ["normal", "pneumonia", "tuberculosis"]
    assert r.task.priority == ["tuberculosis", "pneumonia"]
    assert r.pipeline().output_size == (64, 64)
    assert r.in_chans() == 1
    assert (BUILTIN_RECIPE_DIR / "chest_xray.yaml").is_file()


def test_recipe_round_trips_through_yaml(tmp_path: Path):
    r = load_recipe("chest_xray")
    p = tmp_path / "copy.yaml"
    p.write_text(r.to_yaml())
    assert load_recipe(p).model_dump() == r.model_dump()


def _write(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path):
    d = tiny_recipe_dict()
    d["train"]["epoch"] = 3
    p = _write(tmp_path, d)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "train.epoch" in msg and "did you mean 'epochs'" in msg


def test_wrong_type_names_field(tmp_path: Path):
    d = tiny_recipe_dict()
    d["train"]["batch_size"] = "lots"
    with pytest.raises(RecipeError, match=r"train\.batch_size.*'lots'"):
        load_recipe(_write(tmp_path, d))


def test_priority_must_name_classes():
    d = tiny_recipe_dict()
    d["task"]["priority"] = ["covid"]
    with pytest.raises(RecipeError, match="covid"):
        parse_recipe(d, "x.yaml")


def test_unknown_preprocess_step_and_missing_resize():
    d = tiny_recipe_dict()
    d["preprocess"] = [{"step": "grayscale"}, {"step": "sharpen"}]
    with pytest.raises(RecipeError, match=r"x\.yaml"):
        parse_recipe(d, "x.yaml")
    d["preprocess"] = [{"step": "grayscale"}, {"step": "normalize", "mean": [0.5], "std": [0.2]}]
    with pytest.raises(RecipeError, match="resize"):
        parse_recipe(d, "x.yaml")


def test_not_yaml_and_missing_recipe(tmp_path: Path):
    p = tmp_path / "broken.yaml"
    p.write_text("task: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="chest_xray"):
        load_recipe("no_such_recipe")


def test_relative_data_path_resolves_against_recipe(tmp_path: Path):
    d = tiny_recipe_dict()
    d["data"] = {"source": "folder", "path": "images"}
    p = _write(tmp_path, d)
    r = load_recipe(p)
    assert r.data_path() == (tmp_path / "images").resolve()
    assert r.data_path("elsewhere") == Path("elsewhere").resolve()
