"""scl: vision-language pre-training with Semantic Completion Learning.

`import scl_cli as scl; model = scl.load("runs/tiny")` gives a trained model ready to use
(`scl_cli.inference.SCL`: embed_images, embed_texts, score, answer, nlvr2, save_pretrained,
push_to_hub). Importing the package stays light: torch loads on first use of `load` / `SCL`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# When this process started scl (for `scl retrieve --json`'s honest `seconds.startup`).
STARTED = time.perf_counter()

if TYPE_CHECKING:
    from scl_cli.inference import SCL


def load(name_or_path: Any, **kwargs: Any) -> SCL:
    """A trained SCL model from a run folder, a checkpoint or `save_pretrained` folder, a published
    `.ckpt` or a Hugging Face Hub id (`user/repo`); see `scl_cli.inference.SCL.from_pretrained`
    for the options (device="auto", dtype, revision, tokenizer, answers, ...)."""
    from scl_cli.inference import SCL

    return SCL.from_pretrained(name_or_path, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SCL":
        from scl_cli.inference import SCL

        return SCL
    raise AttributeError(f"module 'scl_cli' has no attribute {name!r}")


__all__ = ["SCL", "__version__", "load"]
