"""One reader per data set: official files in, `Record`s and `Skip`s out (see `base`)."""

from __future__ import annotations

from collections.abc import Callable

from scl_cli.data.sources import cc3m, coco, f30k, lsmdc, msrvtt, nlvr2, sbu, vg, vqav2, webvid
from scl_cli.data.sources.base import SourceData, SourceRequest

READERS: dict[str, Callable[[SourceRequest], SourceData]] = {
    "coco": coco.read,
    "vg": vg.read,
    "sbu": sbu.read,
    "cc3m": cc3m.read,
    "f30k": f30k.read,
    "vqav2": vqav2.read,
    "nlvr2": nlvr2.read,
    "webvid": webvid.read,
    "msrvtt": msrvtt.read,
    "lsmdc": lsmdc.read,
}
