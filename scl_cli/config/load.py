"""Read a recipe TOML, apply `--set a.b=value` overrides, validate, and explain what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from scl_cli.config.recipe import Recipe
from scl_cli.errors import RecipeError


def parse_value(text: str) -> Any:
    """A TOML literal (`3`, `1e-4`, `true`, `[1, 2]`, `"x"`), else the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> tuple[str, ...]:
    """Set `a.b.c=value` in the raw recipe dict (creating tables); returns the key path."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    key, value = assignment.split("=", 1)
    path = tuple(p.strip() for p in key.strip().split("."))
    if not all(path):
        raise RecipeError(f"--set {assignment!r}: empty part in key {key!r}")
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {assignment!r}: {'.'.join(path[: i + 1])} is a value, not a table")
        node = child
    node[path[-1]] = parse_value(value.strip())
    return path


def _describe(err: dict[str, Any], source: str, overridden: set[tuple[str, ...]]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    field = ".".join(loc) or "(recipe)"
    origin = " (from --set)" if any(loc[: len(p)] == p for p in overridden) else ""
    if err["type"] == "extra_forbidden":
        return f"{source}: {field}{origin}: unknown key (check the spelling; `scl recipe show` lists every field)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and msg.startswith(f"{field}."):
        # Nested validators (objective tables) already name their field.
        return f"{source}: {msg}{origin}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" got {got!r};"
    return f"{source}: {field}{origin}:{shown} expected: {msg[0].lower() + msg[1:]}"


def validate(
    raw: dict[str, Any], source: str = "recipe", overridden: set[tuple[str, ...]] | None = None
) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source, overridden or set()) for e in exc.errors()]
        raise RecipeError("; ".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file; every problem becomes one `RecipeError` line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    overridden = {apply_override(raw, a) for a in overrides or []}
    return validate(raw, str(path), overridden)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (None values dropped: TOML has no null)."""

    def drop_none(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: drop_none(v) for k, v in x.items() if v is not None}
        if isinstance(x, list):
            return [drop_none(v) for v in x]
        return x

    data = recipe.model_dump(mode="json")
    data["objectives"] = {name: s.model_dump(mode="json") for name, s in recipe.objectives.items()}
    return drop_none(data)


def recipe_to_toml(recipe: Recipe) -> str:
    return tomli_w.dumps(recipe_to_dict(recipe))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a recipe stored in a checkpoint's config.json."""
    return validate(data, "checkpoint recipe")
