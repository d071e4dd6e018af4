"""Configuration as data: the recipe's pydantic models (`recipe`), the objectives' settings
(`objectives`) and TOML loading with `--set` overrides (`load`). Imports no torch."""

from scl_cli.config.load import load_recipe, recipe_from_dict, recipe_to_dict, recipe_to_toml
from scl_cli.config.objectives import ObjectiveSettings
from scl_cli.config.recipe import Recipe

__all__ = [
    "ObjectiveSettings",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_toml",
]
