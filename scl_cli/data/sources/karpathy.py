"""Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`): shared by COCO and Flickr30K.

One record per image with all its captions (5 to 7 for COCO, 5 for Flickr30K), whitespace
collapsed, exact repeats dropped in order. Karpathy `restval` joins `train`. A file listed twice
in one split is merged (captions of both); listed in two splits it is reported and kept once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scl_cli.data.sources.base import (
    ImageRef,
    Record,
    Skip,
    SourceData,
    SourceRequest,
    check_splits,
    clean_text,
    find,
    need_sources,
    read_json,
)
from scl_cli.errors import DataError, UsageError

SPLITS = ("train", "val", "test")
SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def _captions(entry: dict, image_id: str, split: str, where: str) -> tuple[list[str], list[Any], list[Skip]]:
    captions, sentids, skips = [], [], []
    for n, sentence in enumerate(entry.get("sentences") or []):
        sentence = sentence if isinstance(sentence, dict) else {}
        sentid = sentence.get("sentid", n)
        raw = sentence.get("raw")
        if raw is None and isinstance(sentence.get("tokens"), list):
            raw = " ".join(str(t) for t in sentence["tokens"])
        text, reason = clean_text(raw)
        if text is None:
            skips.append(Skip(f"{image_id}#{sentid}", f"caption_{reason.removeprefix('text_')}", where, split,
                              "caption"))  # fmt: skip
        elif text in captions:
            skips.append(Skip(f"{image_id}#{sentid}", "duplicate_caption", where, split, "caption"))
        else:
            captions.append(text)
            sentids.append(sentid)
    return captions, sentids, skips


def read_karpathy(
    request: SourceRequest,
    name: str,
    json_name: str,
    image_dirs: Callable[[Sequence[Path], str], list[Path]],
    image_id: Callable[[dict], Any],
    expected: str,
) -> SourceData:
    """Records of a Karpathy split file found among the --source paths; `image_dirs(roots,
    filepath)` lists where an image may be, `image_id(entry)` gives the id stored with it."""
    check_splits(request, name, SPLITS)
    roots = need_sources(request, name, expected)
    path = find(roots, [json_name], ("", "karpathy", "annotations", "caption_datasets", "data"))
    if path is None:
        raise UsageError(
            f"prepare {name}: no {json_name} under {', '.join(map(str, roots))}; expected {expected}"
        )
    request.report(f"read {json_name}", 0, 1)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f'{path}: expected {{"images": [...]}} (a Karpathy split file)')
    request.report(f"read {json_name}", 1, 1)
    dirs: dict[str, list[Path]] = {}  # per Karpathy `filepath`
    records: dict[str, Record] = {}
    order: list[Record | Skip] = []
    merged = 0
    for n, entry in enumerate(data["images"]):
        where = f"{path}:images[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            order.append(Skip(f"images[{n}]", "malformed_entry", where))
            continue
        filename = entry["filename"]
        ident = Path(filename).stem
        split = SPLIT_OF.get(str(entry.get("split")))
        if split is None:
            order.append(Skip(ident, f"unknown_split_{entry.get('split')}", where))
            continue
        if not request.wants(split):
            continue
        captions, sentids, skips = _captions(entry, ident, split, where)
        order.extend(skips)
        if ident in records:
            first = records[ident]
            if first.split != split:
                order.append(Skip(ident, "duplicate_id_other_split", where, split))
                continue
            merged += 1
            for caption, sentid in zip(captions, sentids, strict=True):
                if caption in first.meta["captions"]:
                    order.append(Skip(f"{ident}#{sentid}", "duplicate_caption", where, split, "caption"))
                else:
                    first.meta["captions"].append(caption)
                    first.meta["sentids"].append(sentid)
            continue
        filepath = str(entry.get("filepath", ""))
        if filepath not in dirs:
            dirs[filepath] = image_dirs(roots, filepath)
        image = next((d / filename for d in dirs[filepath] if (d / filename).is_file()), None)
        if image is None:
            order.append(Skip(ident, "missing_image", f"{filename} (in {where})", split))
            continue
        meta = {"id": ident, "image_id": image_id(entry), "filename": filename, "captions": captions,
                "sentids": sentids, "karpathy_split": entry.get("split")}  # fmt: skip
        record = Record(ident, split, {"jpg": ImageRef("file", str(image))}, meta, where)
        records[ident] = record
        order.append(record)
    final: list[Record | Skip] = []
    for item in order:
        if isinstance(item, Record) and not item.meta["captions"]:
            final.append(Skip(item.id, "no_captions", item.origin, item.split))
        else:
            final.append(item)
    totals = Counter(r.split for r in final if isinstance(r, Record))
    warnings = [f"{merged} images listed twice in {path.name} were merged"] if merged else []
    return SourceData("captions", final, dict(totals), info={"annotations": str(path)}, warnings=warnings)
