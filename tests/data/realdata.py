"""Tiny fixtures in each official layout (same file names, field names and nesting as the real
downloads, generated images), difficult images, and helpers to read prepared shards back."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scl_cli.data.shards import iter_tar_samples, read_manifest

BAD_TEXT = "@@NOT-UTF8@@"  # replaced by Latin-1 bytes after json.dumps, so the file is not UTF-8


# ----------------------------------------------------------------------------- images
def _encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def picture(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """A smooth colour picture (cheap to encode, distinct per seed)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.02, 0.2, 3)
    pixels = np.stack([(np.sin(a * x + seed) + 1) * 127, (np.cos(b * y) + 1) * 127, ((x + y) * c) % 255], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def jpeg(seed: int = 0, width: int = 64, height: int = 48) -> bytes:
    return _encode(picture(seed, width, height), "JPEG", quality=90)


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A valid 1x1 PNG whose header claims `width` x `height` pixels."""
    png = _encode(Image.new("RGB", (1, 1)), "PNG")
    header = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]


# Images that must be skipped, by the reason the manifest gives.
def bad_images() -> dict[str, bytes]:
    good = jpeg(99)
    return {
        "truncated_image": good[: len(good) // 2],
        "empty_image": b"",
        "not_an_image": b"<html>this is not a picture</html>" * 4,
        "corrupt_image": (png := _encode(picture(98), "PNG"))[:60] + bytes([png[60] ^ 0xFF]) + png[61:],
        "decompression_bomb": bomb_png(),
    }


# Images in awkward modes that must come out as RGB JPEGs.
def odd_images() -> dict[str, bytes]:
    rgb = picture(7)
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return {
        "cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "palette": _encode(rgb.convert("P"), "PNG", transparency=0),
        "grey16": _encode(Image.fromarray(grey16), "PNG"),
        "rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "grey": _encode(rgb.convert("L"), "JPEG"),
    }


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_json(path: Path, content: Any) -> Path:
    """JSON as the official files are; `BAD_TEXT` inside a string becomes invalid UTF-8 bytes."""
    text = json.dumps(content).encode("ascii").replace(BAD_TEXT.encode(), b"caf\xe9")
    return write(path, text)


# ----------------------------------------------------------------------------- reading back
def samples(dataset: Path, split: str) -> list[dict]:
    """Every sample of `split` as written: `{"__key__", ext: bytes, ..., "meta": parsed json}`."""
    manifest = read_manifest(dataset)
    out = []
    for shard in manifest["splits"][split]["shards"]:
        for sample in iter_tar_samples(dataset / shard["file"]):
            sample["meta"] = json.loads(sample["json"])
            out.append(sample)
    return out


def by_id(dataset: Path, split: str) -> dict[str, dict]:
    return {s["meta"]["id"]: s for s in samples(dataset, split)}


def skipped(dataset: Path) -> dict[str, str]:
    """id -> reason of every skipped sample (not captions or questions)."""
    return {s["id"]: s["reason"] for s in read_manifest(dataset)["skipped"] if s["what"] == "sample"}


def check_manifest(dataset: Path) -> dict:
    """The manifest, after checking its counts add up and every image decodes as an RGB JPEG."""
    manifest = read_manifest(dataset)
    written = 0
    for split, entry in manifest["splits"].items():
        found = samples(dataset, split)
        assert len(found) == entry["samples"] == sum(s["samples"] for s in entry["shards"]), split
        assert len({s["meta"]["id"] for s in found}) == len(found), f"duplicate ids in {split}"
        for sample in found:
            for name, data in sample.items():
                if name.endswith("jpg"):
                    image = Image.open(io.BytesIO(data))
                    assert image.format == "JPEG" and image.mode == "RGB", (sample["__key__"], name)
        written += len(found)
    assert manifest["written"] == written
    sample_skips = [s for s in manifest["skipped"] if s["what"] == "sample"]
    assert manifest["read"] == written + len(sample_skips) == written + manifest["skipped_samples"]
    reasons: dict[str, int] = {}
    for s in manifest["skipped"]:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        assert set(s) >= {"id", "reason", "source"}
    assert reasons == manifest["skipped_counts"]
    lines = (dataset / manifest["skipped_file"]).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == manifest["skipped"]
    return manifest


# ----------------------------------------------------------------------------- layouts
def sentences(texts: list[str], imgid: int, first_sentid: int) -> list[dict]:
    return [{"tokens": t.lower().strip(" .\n").split(), "raw": t, "imgid": imgid, "sentid": first_sentid + i}
            for i, t in enumerate(texts)]  # fmt: skip


def coco_entry(imgid: int, cocoid: int, folder: str, split: str, texts: list[str]) -> dict:
    return {
        "filepath": folder,
        "sentids": list(range(imgid * 10, imgid * 10 + len(texts))),
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": imgid,
        "split": split,
        "sentences": sentences(texts, imgid, imgid * 10),
        "cocoid": cocoid,
    }


def five(name: str, n: int = 5) -> list[str]:
    return [f"A photo of {name}, view {i}. " for i in range(n)]


def make_coco(root: Path) -> Path:
    """`root/{train2014,val2014}/COCO_*.jpg` + `root/karpathy/dataset_coco.json`."""
    odd, bad = odd_images(), bad_images()
    files = {
        ("train2014", 1): jpeg(1), ("train2014", 2): odd["cmyk"], ("train2014", 3): bad["truncated_image"],
        ("val2014", 10): odd["palette"], ("val2014", 11): odd["grey16"], ("val2014", 12): jpeg(12),
        ("val2014", 13): jpeg(13), ("val2014", 14): jpeg(14), ("val2014", 15): jpeg(15),
        ("val2014", 16): bad["decompression_bomb"], ("val2014", 17): jpeg(17),
    }  # fmt: skip
    for (folder, cocoid), data in files.items():
        write(root / folder / f"COCO_{folder}_{cocoid:012d}.jpg", data)
    first = [
        "A man rides a moped. ",
        f"A moped, {BAD_TEXT}.",
        "  \n",
        "A man rides a moped. ",
        "Dirt road.\n",
    ]
    images = [
        coco_entry(0, 1, "train2014", "train", first),
        coco_entry(1, 2, "train2014", "train", five("two")),
        coco_entry(2, 3, "train2014", "train", five("three")),
        coco_entry(3, 4, "train2014", "train", five("four")),  # no such file
        coco_entry(4, 10, "val2014", "restval", five("ten")),
        coco_entry(5, 11, "val2014", "restval", five("eleven")),
        coco_entry(6, 12, "val2014", "val", five("twelve")),
        coco_entry(7, 13, "val2014", "val", five("thirteen", 6)),
        coco_entry(8, 14, "val2014", "test", five("fourteen")),
        coco_entry(9, 15, "val2014", "test", five("fifteen", 7)),
        coco_entry(10, 16, "val2014", "test", five("sixteen")),
        coco_entry(11, 17, "val2014", "val", five("seventeen")),
        coco_entry(12, 17, "val2014", "test", five("seventeen again")),  # same file, other split
        coco_entry(13, 1, "train2014", "train", ["Dirt road.", "A helmet is red."]),  # listed twice: merged
    ]
    return write_json(root / "karpathy" / "dataset_coco.json", {"images": images, "dataset": "coco"})


def make_f30k(root: Path) -> Path:
    """`root/flickr30k-images/<id>.jpg` + `root/dataset_flickr30k.json` (no filepath, no cocoid)."""
    odd, bad = odd_images(), bad_images()
    files = {1000092795: jpeg(1), 10002456: odd["rgba"], 1000268201: bad["empty_image"], 1000344755: jpeg(4),
             1000366164: jpeg(5), 1000523639: odd["grey"]}  # fmt: skip
    for flickr_id, data in files.items():
        write(root / "flickr30k-images" / f"{flickr_id}.jpg", data)
    splits = ["train", "train", "train", "val", "test", "test"]
    images = []
    for imgid, (flickr_id, split) in enumerate(zip(files, splits, strict=True)):
        texts = five(f"photo {flickr_id}")
        images.append({"sentids": list(range(imgid * 5, imgid * 5 + 5)), "imgid": imgid,
                       "sentences": sentences(texts, imgid, imgid * 5), "split": split,
                       "filename": f"{flickr_id}.jpg"})  # fmt: skip
    return write_json(root / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})


def region(region_id: int, image_id: int, phrase: str) -> dict:
    return {"region_id": region_id, "width": 82, "height": 139, "image_id": image_id, "phrase": phrase,
            "y": 57, "x": 421}  # fmt: skip


def make_vg(root: Path) -> Path:
    """`root/images/VG_100K{,_2}/<id>.jpg` + `root/annotations/region_descriptions.json`."""
    odd = odd_images()
    write(root / "images" / "VG_100K" / "1.jpg", jpeg(1))
    write(root / "images" / "VG_100K" / "2.jpg", odd["grey"])
    write(root / "images" / "VG_100K_2" / "3.jpg", odd["grey16"])
    images = [
        {"regions": [region(1382, 1, "the clock is green in colour"), region(1383, 1, "a white  cloud\n")], "id": 1},
        {"regions": [region(2001, 2, "man wearing hat"), region(2002, 2, "man wearing hat"),
                     region(2003, 2, "   "), region(2004, 2, f"sign says {BAD_TEXT}")], "id": 2},
        # Regions name their image: the top-level id (99) is not the one that counts.
        {"regions": [region(3001, 3, "tree by the road")], "id": 99},
        {"regions": [], "id": 4},
        {"regions": [region(5001, 5, "a cat on a mat")], "id": 5},  # no image file
    ]  # fmt: skip
    return write_json(root / "annotations" / "region_descriptions.json", images)


def question(qid: int, image_id: int, text: str) -> dict:
    return {"image_id": image_id, "question": text, "question_id": qid}


def annotation(qid: int, image_id: int, answers: list[str], mca: str, answer_type: str = "other") -> dict:
    assert len(answers) == 10
    return {
        "question_type": "what is",
        "multiple_choice_answer": mca,
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
        "image_id": image_id,
        "answer_type": answer_type,
        "question_id": qid,
    }


def _vqa_file(kind: str, subtype: str, items: list[dict]) -> dict:
    head = {"info": {"description": "fixture"}, "license": {"name": "CC"}, "data_subtype": subtype,
            "data_type": "mscoco"}  # fmt: skip
    if kind == "questions":
        return {**head, "task_type": "Open-Ended", "questions": items}
    return {**head, "annotations": items}


def make_vqav2(root: Path) -> dict:
    """Question/annotation files and `train2014/`, `val2014/`, `test2015/` COCO images."""
    for folder, ids in (("train2014", (1, 2)), ("val2014", (5,)), ("test2015", (8, 9))):
        for image_id in ids:
            write(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", jpeg(image_id))
    train_q = [question(1000, 1, "How many dogs?"), question(1001, 1, "What colour is the car?"),
               question(2000, 2, "Is it raining?"), question(2001, 2, f"Where is the {BAD_TEXT}?")]  # fmt: skip
    train_a = [
        annotation(1000, 1, ["2"] * 3 + ["two"] * 2 + ["3"] + ["Two!"] * 4, "2", "number"),
        annotation(1001, 1, ["purple"] * 10, "red"),  # no answer in the vocabulary: left out of train
        annotation(2000, 2, ["yes"] * 9 + ["no"], "yes", "yes/no"),
        annotation(2001, 2, ["kitchen"] * 10, "kitchen"),
    ]
    val_q = [question(5000, 5, "What colour is the bus?"), question(5001, 5, "Any purple?"),
             question(6000, 6, "Is it sunny?")]  # image 6 is missing  # fmt: skip
    val_a = [
        annotation(5000, 5, ["red"] * 2 + ["blue"] * 8, "blue"),
        annotation(5001, 5, ["purple"] * 10, "yes", "yes/no"),  # kept for evaluation, no labels
        annotation(6000, 6, ["no"] * 10, "no", "yes/no"),
    ]
    test = [question(8000, 8, "What is this?"), question(9000, 9, "Who is there?")]
    write_json(
        root / "v2_OpenEnded_mscoco_train2014_questions.json", _vqa_file("questions", "train2014", train_q)
    )
    write_json(root / "v2_mscoco_train2014_annotations.json", _vqa_file("annotations", "train2014", train_a))
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", _vqa_file("questions", "val2014", val_q))
    write_json(root / "v2_mscoco_val2014_annotations.json", _vqa_file("annotations", "val2014", val_a))
    write_json(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
               _vqa_file("questions", "test-dev2015", test[:1]))  # fmt: skip
    write_json(root / "v2_OpenEnded_mscoco_test2015_questions.json", _vqa_file("questions", "test2015", test))
    return {"train": train_a, "val": val_a}


def nlvr2_row(identifier: str, sentence: str, label: str, directory: int | None = None) -> dict:
    row = {"validation": {"77": label}, "sentence": sentence, "left_url": "https://example.org/left.jpg",
           "writer": "103", "label": label, "right_url": "https://example.org/right.jpg", "synset": "beer bottle",
           "query": "some beer bottles2", "identifier": identifier}  # fmt: skip
    if directory is None:
        row["extra_validations"] = {"56": label, "43": label}
    else:
        row["directory"] = directory
    return row


def make_nlvr2(root: Path) -> None:
    """`root/nlvr2/data/{train,dev,test1}.json` + `root/images/train/<dir>/`, `root/dev/`, `root/test1/`."""
    for pair, directory in (("train-10108-0", 7), ("train-10108-1", 7), ("train-2-0", 12)):
        for side in (0, 1):
            write(
                root / "images" / "train" / str(directory) / f"{pair}-img{side}.png",
                jpeg(zlib.crc32(pair.encode()) % 97 + side),
            )
    write(root / "dev" / "dev-850-0-img0.png", odd_images()["palette"])
    write(root / "dev" / "dev-850-0-img1.png", jpeg(3))
    write(root / "dev" / "dev-851-0-img0.png", jpeg(4))  # its img1 is missing
    write(root / "test1" / "test1-0-0-img0.png", jpeg(5))
    write(root / "test1" / "test1-0-0-img1.png", jpeg(6))
    data = root / "nlvr2" / "data"
    train = [nlvr2_row("train-10108-0-0", "One image shows exactly two bottles.", "True", 7),
             nlvr2_row("train-10108-0-1", "All bottles are green.", "False", 7),
             nlvr2_row("train-10108-1-0", "There are dogs.", "False", 7),
             nlvr2_row("train-2-0-0", "A beer is poured.", "True", 12),
             nlvr2_row("train-2-0-0", "A beer is poured.", "True", 12),  # repeated identifier
             nlvr2_row("train-2-0-1", "Undecided.", "Maybe", 12)]  # fmt: skip
    dev = [nlvr2_row("dev-850-0-0", "The left image has a bottle.", "True"),
           nlvr2_row("dev-850-0-1", f"The {BAD_TEXT} is full.", "False"),
           nlvr2_row("dev-851-0-0", "Both images show cats.", "True")]  # fmt: skip
    test1 = [nlvr2_row("test1-0-0-0", "All the bottles are from the same brand.", "True")]
    for name, rows in (("train", train), ("dev", dev), ("test1", test1)):
        lines = b"".join(json.dumps(r).encode().replace(BAD_TEXT.encode(), b"caf\xe9") + b"\n" for r in rows)
        write(data / f"{name}.json", lines + (b"{not json\n" if name == "train" else b""))


def make_img2dataset(folder: Path, shard: int = 0, letterbox: bool = False) -> Path:
    """An img2dataset `--output_format webdataset` shard: `KEY.jpg` + `KEY.txt` + `KEY.json`, with
    a failed download (json only), a corrupt image and a non-UTF-8 caption among them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("ok", jpeg(1), b"a very typical bus station"), ("ok", jpeg(2), b"actor at the premiere"),
            ("failed", None, b"dead link"), ("ok", bad_images()["truncated_image"], b"broken picture"),
            ("ok", jpeg(3), b"caf\xe9 in the city"), ("ok", odd_images()["cmyk"], b"a printed poster")]  # fmt: skip
    path = folder / f"{shard:05d}.tar"
    with tarfile.open(path, "w") as tar:
        for i, (status, image, caption) in enumerate(rows):
            key = f"{shard:05d}{i:04d}"
            size = (256, 256) if letterbox else (64, 48)
            meta = {"url": f"http://example.org/{key}.jpg", "caption": caption.decode("latin-1"), "key": key,
                    "status": "success" if status == "ok" else "failed_to_download",
                    "error_message": None if status == "ok" else "HTTP 404", "width": size[0], "height": size[1],
                    "original_width": 640, "original_height": 480, "exif": "{}", "md5": "0" * 32}  # fmt: skip
            members = [(f"{key}.json", json.dumps(meta).encode())]
            if image is not None:
                members = [(f"{key}.jpg", image), (f"{key}.txt", caption)] + members
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / f"{shard:05d}_stats.json").write_text(
        json.dumps({"count": 6, "successes": 5, "failed_to_download": 1})
    )
    return path
