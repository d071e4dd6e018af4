"""Recipes: shipped files validate, overrides are type-checked, errors name file, field and value."""

import tomllib
from pathlib import Path

import pytest

from scl_cli.config import load_recipe, recipe_from_dict, recipe_to_dict, recipe_to_toml
from scl_cli.config.load import validate
from scl_cli.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["tiny.toml", "base.toml"])
def test_shipped_recipes_validate_and_show_round_trips(name):
    recipe = load_recipe(RECIPES / name)
    again = validate(tomllib.loads(recipe_to_toml(recipe)))
    assert again == recipe


def test_base_is_the_paper_setting():
    r = load_recipe(RECIPES / "base.toml")
    assert (r.model.vision.image_size, r.model.vision.layers, r.model.vision.width) == (288, 11, 768)
    assert (r.model.text.layers, r.model.text.vocab_size, r.model.text.max_len) == (12, 50265, 50)
    assert r.model.fusion.layers == 6 and r.optim.batch_size == 4096
    assert (r.optim.lr, r.optim.lr_mult_fusion, r.optim.lr_mult_heads, r.optim.weight_decay) == (
        2e-5,
        5,
        5,
        0.01,
    )
    assert {n: s.weight for n, s in r.objectives.items()} == {
        "itc": 0.5, "itm": 1.0, "mlm": 1.0, "scl_global": 1.0, "scl_local": 0.2,
    }  # fmt: skip
    assert r.objectives["scl_global"].temperature == 0.03
    assert set(r.data.train) == {"coco", "vg", "sbu", "cc3m"}
    assert r.accumulation_steps() * r.micro_batch() * r.topology.world_size == 4096


def test_base_takes_the_released_codes_choices_and_new_recipes_scls():
    # README "Deviations from the paper's code": every switch is set to the released code's choice.
    r = load_recipe(RECIPES / "base.toml")
    assert r.optim.param_groups == "paper"
    m = r.masking
    assert (m.mlm_selection, m.scl_text_sampling, m.patch_count) == (
        "wwm_collator",
        "with_replacement",
        "floor",
    )
    assert (r.model.vision.mask_token_std, r.model.itc_init, r.model.itc_text_pool) == (1.0, "pytorch", "cls")
    assert {n: getattr(s, "gather", None) for n, s in r.objectives.items()} == {
        "itc": "paper", "itm": None, "mlm": "paper", "scl_global": "paper", "scl_local": "paper",
    }  # fmt: skip
    assert r.data.crop_min_scale == 0.8 and r.objectives["itm"].negatives == "random"
    for name in ("tiny.toml", "tiny_mixed.toml"):  # one process, from scratch: scl's defaults
        t = load_recipe(RECIPES / name)
        assert t.optim.param_groups == "scl" and t.masking.mlm_selection == "bernoulli"
        assert all(getattr(s, "gather", "global") == "global" for s in t.objectives.values())


def test_the_collator_selection_needs_whole_words(tmp_path):
    with pytest.raises(RecipeError, match="mlm_selection = 'wwm_collator' always groups"):
        load_recipe(write(tmp_path, "[masking]\nmlm_selection = 'wwm_collator'\nmlm_whole_word = false\n"))


def test_overrides_are_typed():
    r = load_recipe(
        RECIPES / "tiny.toml",
        [
            "optim.max_steps=7",
            "objectives.scl_global.weight=0",
            "data.root=/tmp/x",
            "data.train=shapes,other",
        ],
    )
    assert r.optim.max_steps == 7 and r.objectives["scl_global"].weight == 0
    assert str(r.data.root) == "/tmp/x" and r.data.train == ["shapes", "other"]
    assert "scl_global" not in r.enabled_objectives()
    with pytest.raises(RecipeError, match=r"optim.max_steps \(from --set\): got 'many'"):
        load_recipe(RECIPES / "tiny.toml", ["optim.max_steps=many"])
    with pytest.raises(RecipeError, match=r"optim.nope \(from --set\): unknown key"):
        load_recipe(RECIPES / "tiny.toml", ["optim.nope=1"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(RECIPES / "tiny.toml", ["optim.lr"])


def test_errors_name_file_field_value_and_expectation(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "[optim]\nlr = 'fast'\n"))
    msg = str(err.value)
    assert "r.toml" in msg and "optim.lr" in msg and "'fast'" in msg and "expected" in msg and "\n" not in msg
    with pytest.raises(RecipeError, match=r"r.toml: model.vison: unknown key"):
        load_recipe(write(tmp_path, "[model.vison]\nwidth = 3\n"))
    with pytest.raises(RecipeError, match=r"r.toml: objectives.itm.negatives"):
        load_recipe(write(tmp_path, "[objectives.itm]\nnegatives = 'best'\n"))
    with pytest.raises(RecipeError, match=r"topology.precision.*'fp8'"):
        load_recipe(write(tmp_path, "[topology]\nprecision = 'fp8'\n"))
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path, "[optim\n"))
    with pytest.raises(RecipeError, match="missing.toml: recipe file not found"):
        load_recipe(tmp_path / "missing.toml")


def test_cross_field_checks(tmp_path):
    with pytest.raises(RecipeError, match="not a multiple of patch_size"):
        load_recipe(write(tmp_path, "[model.vision]\nimage_size = 50\npatch_size = 16\n"))
    with pytest.raises(RecipeError, match="no objective has a weight above 0"):
        load_recipe(write(tmp_path, "[objectives.itc]\nweight = 0\n"))
    with pytest.raises(RecipeError, match="not divisible by 3 devices"):
        load_recipe(write(tmp_path, "[optim]\nbatch_size = 8\n[topology]\ndevices_per_node = 3\n"))


def test_data_root_may_be_a_url_that_stays_one():
    r = load_recipe(RECIPES / "tiny.toml", ['data.root="s3://bucket/data/"', 'data.cache_dir="/tmp/shards"'])
    assert r.data.root == "s3://bucket/data" and r.data.cache_dir == Path("/tmp/shards")
    assert 'root = "s3://bucket/data"' in recipe_to_toml(r)  # not "s3:/bucket/data"
    assert recipe_from_dict(recipe_to_dict(r)).data.root == "s3://bucket/data"
    assert load_recipe(RECIPES / "tiny.toml", ['data.root="data"']).data.root == Path("data")
