"""Recipes: TOML files validated by pydantic models (`schema`), loaded with overrides (`load`)."""

from scl_cli.recipe.load import load_recipe, recipe_from_dict, recipe_to_dict, recipe_to_toml
from scl_cli.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "recipe_to_dict", "recipe_to_toml"]
