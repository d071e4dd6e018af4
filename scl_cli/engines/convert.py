"""Engine of `scl convert`: a published SCL checkpoint into an scl checkpoint folder
(`model.safetensors`, `config.json` in the format `scl pretrain` writes, `conversion.json` listing
what became of every key). Reading any checkpoint is `model.checkpoint`'s job."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from scl_cli.errors import UsageError
from scl_cli.io.atomic import atomic_directory
from scl_cli.io.checkpoints import CONFIG_FILE, MODEL_FILE
from scl_cli.model.checkpoint import converted_config, read_official_checkpoint
from scl_cli.model.official import ConvertReport, convert_official_state_dict

REPORT_FILE = "conversion.json"


def convert_official(path: Path, out: Path, max_len: int = 50) -> ConvertReport:
    """Convert a published SCL checkpoint into the scl checkpoint directory `out`.

    Every official key is mapped, kept as a fine-tuned head or ignored with a reason; any other key,
    a shape that does not fit or a missing weight raises `CheckpointError` naming them. `max_len` is
    the caption length the converted model is built for (rows kept of RoBERTa's position table).
    The directory is written under a temporary name and renamed when complete.
    """
    path, out = Path(path), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not empty: choose another --out")
    state, meta = read_official_checkpoint(path)
    converted, report = convert_official_state_dict(state, str(path), max_len)
    del state
    if out.exists():
        out.rmdir()  # empty (checked above): the atomic rename needs the name free
    with atomic_directory(out) as tmp:
        save_file(
            {k: v.contiguous() for k, v in converted.items()}, tmp / MODEL_FILE, metadata={"format": "pt"}
        )
        config = converted_config(report, meta, converted)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    return report
