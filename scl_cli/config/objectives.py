"""Settings of the objectives (`[objectives.NAME]` tables), and how recipes find them by name.

Validating a recipe needs only these pydantic models, never the losses themselves (which import
torch): the entry-point group `scl_cli.objectives` maps a name to its *settings* class, and the
settings class names the objective that implements it (`objective = "module:Class"`), imported
only when a run builds its objectives. The built-in objectives are registered the same way, in
this package's `pyproject.toml`; `register_settings` adds one in-process (tests, notebooks).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENTRY_POINT_GROUP = "scl_cli.objectives"
PAPER_ORDER = ("itc", "itm", "mlm", "scl_global", "scl_local")


class ObjectiveSettings(BaseModel):
    """Settings every objective has; subclasses add their own fields.

    Class attributes: `name` (the recipe table), `objective` ("module:Class" of the `Objective`
    subclass computing the loss), `default_weight` (its weight when a recipe has no `[objectives]`
    table), `pretraining` (part of that default set: the paper's pre-training objectives).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    name: ClassVar[str]
    objective: ClassVar[str]
    default_weight: ClassVar[float] = 1.0
    pretraining: ClassVar[bool] = True

    weight: float = Field(1.0, ge=0, description="Multiplier in the total loss; 0 turns the objective off.")


Gather = Literal["global", "paper"]
GATHER_DESCRIPTION = (
    "Data-parallel semantics. 'global': the true gradient of the loss over the global batch, whatever the "
    "number of processes. 'paper': the released code's, whose all-gather passes back only the local slice "
    "of the gradient (so after DDP averages, a gathered term trains at 1/world of its weight) and whose "
    "ungathered terms see only the local batch. The same in one process."
)


class ITCSettings(ObjectiveSettings):
    name = "itc"
    objective = "scl_cli.objectives.itc:ITC"
    default_weight = 0.5
    reversed_clips: bool = Field(
        False,
        description="On clip batches, each clip played backwards is one more negative for the captions.",
    )
    order_weight: float = Field(
        0.0,
        ge=0,
        description="With reversed_clips: weight of a time-order term added on clip batches, each caption's "
        "two-way softmax (at the ITC temperature) between its clip and that clip played backwards. In the "
        "batch softmax a reversal is one candidate among 2B, which taught no order on the shapes clips.",
    )
    gather: Gather = Field(
        "global",
        description=GATHER_DESCRIPTION + " 'paper': features gathered (1/world), the temperature "
        "trains at full weight.",
    )

    @model_validator(mode="after")
    def _order_needs_reversed(self) -> ITCSettings:
        if self.order_weight > 0 and not self.reversed_clips:
            raise ValueError(
                "order_weight needs reversed_clips = true (it compares each clip with its reversal)"
            )
        return self


class ITMSettings(ObjectiveSettings):
    name = "itm"
    objective = "scl_cli.objectives.itm:ITM"
    negatives: Literal["random", "hard"] = "random"
    order_weight: float = Field(
        0.0,
        ge=0,
        description="On clip batches, weight of a time-order term: each caption's match score (ITM log-odds) "
        "on its clip against on that clip played backwards, a two-way softmax (one more fusion pass of B "
        "pairs per clip step). An scl option, not in the paper.",
    )
    rank_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an image-ranking term: for `rank_captions` captions of the batch, a softmax of "
        "the match log-odds (ITM) over `rank_images` images, the caption's own first and look-alikes drawn "
        "from the ITC similarity. Teaches the fusion to order images for a caption, which re-ranking asks of "
        "it (one more fusion pass of rank_captions x rank_images pairs per step). An scl option, not in the paper.",
    )
    rank_captions: int = Field(
        8, ge=1, description="Captions per step in the image-ranking term (at most the batch)."
    )
    rank_images: int = Field(
        8,
        ge=2,
        description="Images per caption in the image-ranking term, its own included (at most the batch).",
    )


class MLMSettings(ObjectiveSettings):
    name = "mlm"
    objective = "scl_cli.objectives.mlm:MLM"
    gather: Gather = Field(
        "global",
        description=GATHER_DESCRIPTION + " MLM: 'global' averages over the masked tokens of the "
        "global batch; 'paper' over each process's own (mean of per-process means).",
    )


class SCLGlobalSettings(ObjectiveSettings):
    name = "scl_global"
    objective = "scl_cli.objectives.scl_global:SCLGlobal"
    temperature: float = Field(0.03, gt=0)
    gather: Gather = Field(
        "global",
        description=GATHER_DESCRIPTION + " 'paper': the image term is gathered (1/world); the text "
        "term contrasts the local batch only on image batches and is gathered (1/world) on clip batches.",
    )


class SCLLocalSettings(ObjectiveSettings):
    name = "scl_local"
    objective = "scl_cli.objectives.scl_local:SCLLocal"
    default_weight = 0.2
    temperature: float = Field(0.03, gt=0)
    gather: Gather = Field(
        "global",
        description=GATHER_DESCRIPTION + " 'paper': the text term's masked words are gathered "
        "(1/world); the image term contrasts the local batch's masked patches only.",
    )


class RankSettings(ObjectiveSettings):
    name = "rank"
    objective = "scl_cli.objectives.rank:Rank"
    pretraining = False
    negatives: int = Field(15, ge=1, description="Negative captions per image (at most batch - 1).")
    reversed_clips: bool = Field(
        False,
        description="On clip batches, also rank each clip played backwards with its caption below the pair.",
    )


class VQASettings(ObjectiveSettings):
    name = "vqa"
    objective = "scl_cli.objectives.vqa:VQA"
    pretraining = False
    answers: int = Field(0, ge=0, description="Answer vocabulary size; 0 = that of the data set.")


class NLVR2Settings(ObjectiveSettings):
    name = "nlvr2"
    objective = "scl_cli.objectives.nlvr2:NLVR2"
    pretraining = False


# ----------------------------------------------------------------------------- the registry
_REGISTERED: dict[str, type[ObjectiveSettings]] = {}
_FROM_ENTRY_POINTS: dict[str, type[ObjectiveSettings]] | None = None


def register_settings(cls: type[ObjectiveSettings]) -> type[ObjectiveSettings]:
    """Make an objective available to recipes in this process under `cls.name` (decorator)."""
    known = _REGISTERED.get(cls.name) or (_FROM_ENTRY_POINTS or {}).get(cls.name)
    if known is not None and known is not cls and known.objective != cls.objective:
        raise ValueError(
            f"objective {cls.name!r} is registered twice ({known.objective} and {cls.objective})"
        )
    _REGISTERED[cls.name] = cls
    return cls


def _entry_point_settings() -> dict[str, type[ObjectiveSettings]]:
    global _FROM_ENTRY_POINTS
    if _FROM_ENTRY_POINTS is None:
        found: dict[str, type[ObjectiveSettings]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, ObjectiveSettings)):
                raise TypeError(f"entry point {ep.name} = {ep.value}: not an ObjectiveSettings subclass")
            if cls.name != ep.name:
                raise ValueError(f"entry point {ep.name} = {ep.value}: the settings are named {cls.name!r}")
            found[ep.name] = cls
        _FROM_ENTRY_POINTS = found
    return _FROM_ENTRY_POINTS


def registered_settings() -> dict[str, type[ObjectiveSettings]]:
    """Every known objective's settings class by name: installed entry points, then this process's."""
    return {**_entry_point_settings(), **_REGISTERED}


def validate_objectives(raw: dict[str, Any]) -> dict[str, ObjectiveSettings]:
    """Turn the recipe's `[objectives]` tables into validated settings.

    A missing table means the paper's set with its weights; a present one enables exactly the
    objectives it names. Raises ValueError naming the objective and field.
    """
    known = registered_settings()
    if not raw:
        # The paper's order first (it is the order the losses are planned and summed in).
        names = sorted(
            known, key=lambda n: (PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER), n)
        )
        return {
            name: known[name](weight=known[name].default_weight) for name in names if known[name].pretraining
        }
    out: dict[str, ObjectiveSettings] = {}
    for name, table in raw.items():
        if isinstance(table, ObjectiveSettings):
            out[name] = table
            continue
        if name not in known:
            raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(known))}")
        if not isinstance(table, dict):
            raise ValueError(f"objectives.{name} must be a table, got {table!r}")
        try:
            out[name] = known[name](**table)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(["objectives", name, *(str(p) for p in first["loc"])])
            msg = first["msg"].removeprefix("Value error, ")
            if not first["loc"]:  # a check across the table's fields: the table names itself
                raise ValueError(f"{field}: {msg}") from None
            raise ValueError(f"{field}: {msg} (got {first.get('input')!r})") from None
    return out
