"""`scl prepare webvid|msrvtt|lsmdc` end to end (the CLI) on tiny fake layouts with real mp4 clips:
splits, captions, the MSR-VTT 1k-A order, skips with their reasons, the manifest, stored bytes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from .realdata import check_manifest, samples, skipped, write

URL = "https://example.invalid/videos/{}.mp4"


def mp4(frames: int, size: int = 32) -> bytes:
    """A real, tiny MPEG-4 clip (distinct bytes per frame count)."""
    import io

    import av

    buffer = io.BytesIO()
    out = av.open(buffer, "w", format="mp4")
    stream = out.add_stream("mpeg4", rate=8)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for i in range(frames):
        img = np.zeros((size, size, 3), np.uint8)
        img[:, i * 4 : i * 4 + 8] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {"a": mp4(4), "b": mp4(5), "c": mp4(6), "d": mp4(7), "bad": np.random.default_rng(0).bytes(3000)}


def prepare_cli(name: str, sources: list[Path], out: Path, *extra: str) -> Path:
    from typer.testing import CliRunner

    from scl_cli.cli import app

    args = ["prepare", name, *[a for s in sources for a in ("--source", str(s))], "--out", str(out),
            "--workers", "1", "--shard-size", "2", "--plain", *extra]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{name} -> " in result.output
    return out / name


def video_manifest(dataset: Path) -> dict:
    manifest = check_manifest(dataset)
    assert manifest["media"] == {"splits": "video"}
    return manifest


def caption_skips(dataset: Path) -> list[tuple[str, str]]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return [(s["id"], s["reason"]) for s in manifest["skipped"] if s["what"] == "caption"]


# ----------------------------------------------------------------------------- WebVid
def test_webvid_csv_local_clips(tmp_path: Path, clips: dict[str, bytes]) -> None:
    src = tmp_path / "webvid"
    rows = [("1001", "PT00H00M13S", "000001_000050", '"Aerial view, of a ""river"" at sunset."'),
            ("1002", "PT00H00M05S", "000001_000050", "Corrupt clip."),
            ("1003", "PT00H00M05S", "000001_000050", "Missing clip."),
            ("1001", "PT00H00M13S", "000001_000050", "Listed twice."),
            ("1004", "PT00H00M05S", "000001_000050", "   "),
            ("1005", "PT00H01M02S", "000051_000100", "A  dog\truns.")]  # fmt: skip
    header = "videoid,contentUrl,duration,page_dir,name\n"
    lines = "".join(f"{v},{URL.format(v)},{d},{p},{n}\n" for v, d, p, n in rows)
    write(src / "results_2M_train.csv", (header + lines).encode())
    write(
        src / "results_2M_val.csv",
        (header + f"2001,{URL.format(2001)},PT00H00M07S,000001_000050,Val clip.\n").encode(),
    )
    videos = src / "videos"
    write(videos / "000001_000050" / "1001.mp4", clips["a"])
    write(videos / "000001_000050" / "1002.mp4", clips["bad"])
    write(videos / "000001_000050" / "1004.mp4", clips["c"])
    write(videos / "000051_000100" / "1005.mp4", clips["b"])
    write(videos / "000001_000050" / "2001.mp4", clips["d"])
    dataset = prepare_cli("webvid", [src], tmp_path / "data")
    manifest = video_manifest(dataset)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {"train": 2, "val": 1}
    assert skipped(dataset) == {"1002": "unreadable_video", "1003": "missing_video", "1004": "caption_empty",
                                "1001": "duplicate_id"}  # the second 1001 row; the first is written  # fmt: skip
    train = {s["meta"]["id"]: s for s in samples(dataset, "train")}
    assert train["1001"]["meta"] == {"id": "1001", "captions": ['Aerial view, of a "river" at sunset.'],
                                     "video": "000001_000050/1001.mp4", "page_dir": "000001_000050",
                                     "duration": 13.0, "url": URL.format(1001)}  # fmt: skip
    assert train["1005"]["meta"]["captions"] == ["A dog runs."] and train["1005"]["meta"]["duration"] == 62.0
    assert train["1001"]["mp4"] == clips["a"] and train["1005"]["mp4"] == clips["b"]
    (val,) = samples(dataset, "val")
    assert val["mp4"] == clips["d"] and val["meta"]["captions"] == ["Val clip."]


def test_webvid_scl_tsv_and_urls(tmp_path: Path, clips: dict[str, bytes]) -> None:
    from scl_cli.data.sources import webvid
    from scl_cli.data.sources.base import Record, SourceRequest

    src = tmp_path / "tsv"
    write(src / "webvid_training_success_full.tsv",
          b"A dog runs.\t000001_000050/1001\nA cat.\t000001_000050/1005.mp4\nGone.\t000001_000050/1009\n")  # fmt: skip
    write(src / "webvid_validation_success_full.tsv", b"Val clip.\t000001_000050/2001\n")
    write(src / "clips" / "000001_000050" / "1001.mp4", clips["a"])
    write(src / "clips" / "000001_000050" / "1005.mp4", clips["b"])
    write(src / "clips" / "000001_000050" / "2001.mp4", clips["c"])
    dataset = prepare_cli("webvid", [src, src / "clips"], tmp_path / "data", "--split", "train")
    manifest = video_manifest(dataset)
    assert list(manifest["splits"]) == ["train"] and skipped(dataset) == {"1009": "missing_video"}
    train = {s["meta"]["id"]: s for s in samples(dataset, "train")}
    assert train["1001"]["meta"]["video"] == "000001_000050/1001.mp4" and train["1001"]["mp4"] == clips["a"]
    assert train["1005"]["meta"]["captions"] == ["A cat."] and train["1005"]["mp4"] == clips["b"]
    # No videos/ folder: a CSV row is read from its contentUrl instead.
    csv = tmp_path / "urls" / "results_2M_val.csv"
    write(
        csv, f"videoid,contentUrl,duration,page_dir,name\n7,{URL.format(7)},PT00H00M07S,p,Seven.\n".encode()
    )
    (record,) = webvid.read(SourceRequest((csv,))).records
    assert isinstance(record, Record) and record.split == "val"
    assert record.images["mp4"].kind == "url" and record.meta["video"] == URL.format(7)


# ----------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_clip4clip_layout(tmp_path: Path, clips: dict[str, bytes]) -> None:
    src = tmp_path / "msrvtt_data"
    write(src / "MSRVTT_train.9k.csv", b"video_id\nvideo3\nvideo1\nvideo9\nvideo7\n")
    # Official order, not sorted: video2, video100, video10 (sorted would be video10, video100, video2).
    write(src / "MSRVTT_JSFUSION_test.csv", b"key,vid_key,video_id,sentence\n"
          b"ret0,msr2,video2,a man is cooking\nret1,msr100,video100,a girl sings\nret2,msr10,video10,cars race\n")  # fmt: skip
    sentences = [("video1", "one a"), ("video3", "three a"), ("video1", "one b"), ("video3", "three  a"),
                 ("video3", ""), ("video3", "three b"), ("video7", "seven"), ("video9", "nine"),
                 ("video2", "two other"), ("video10", "ten other"), ("video1", "one a")]  # fmt: skip
    data = {"videos": [{"video_id": f"video{n}", "category": n % 20, "split": "train"} for n in (1, 2, 3, 10, 100)],
            "sentences": [{"sen_id": i, "video_id": v, "caption": c} for i, (v, c) in enumerate(sentences)]}  # fmt: skip
    write(src / "MSRVTT_data.json", json.dumps(data).encode())
    for name, clip in {
        "video1": "a",
        "video3": "b",
        "video7": "bad",
        "video2": "c",
        "video100": "d",
        "video10": "a",
    }.items():
        write(src / "MSRVTT_Videos" / f"{name}.mp4", clips[clip])
    dataset = prepare_cli("msrvtt", [src], tmp_path / "data")
    manifest = video_manifest(dataset)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {"train": 2, "test": 3}
    assert skipped(dataset) == {"video9": "missing_video", "video7": "unreadable_video"}
    # Repeated captions are kept (separate annotators; the official loaders train on all 20).
    assert sorted(caption_skips(dataset)) == [("video3#4", "caption_empty")]
    train = samples(dataset, "train")
    assert [s["meta"]["id"] for s in train] == ["video3", "video1"]  # list order
    assert train[0]["meta"]["captions"] == ["three a", "three a", "three b"]  # "three  a" collapsed
    assert train[0]["meta"]["sen_ids"] == [1, 3, 5]
    assert train[1]["meta"]["captions"] == ["one a", "one b", "one a"]  # an exact repeat
    assert train[1]["meta"]["sen_ids"] == [0, 2, 10]
    assert train[1]["meta"]["category"] == 1
    assert train[0]["mp4"] == clips["b"] and train[0]["meta"]["video"] == "video3.mp4"
    test = samples(dataset, "test")
    assert [(s["meta"]["id"], s["meta"]["captions"], s["meta"]["test_index"], s["meta"]["key"]) for s in test] == [
        ("video2", ["a man is cooking"], 0, "ret0"), ("video100", ["a girl sings"], 1, "ret1"),
        ("video10", ["cars race"], 2, "ret2")]  # fmt: skip
    assert [s["mp4"] for s in test] == [clips["c"], clips["d"], clips["a"]]


def test_msrvtt_frozen_layout_caption_index(tmp_path: Path, clips: dict[str, bytes]) -> None:
    root = tmp_path / "frozen" / "MSRVTT"
    lists = root / "high-quality" / "structured-symlinks"
    write(lists / "train_list_jsfusion.txt", b"video1\nvideo3\n")
    write(lists / "val_list_jsfusion.txt", b"video2\nvideo100\nvideo10\nvideo5\n")
    index = {"video2": np.int64(2), "video100": 0, "video10": np.int64(1), "video5": 0}
    write(lists / "jsfusion_val_caption_idx.pkl", pickle.dumps(index))
    # Captions of one video are interleaved with others: the index counts within the video, in file order.
    captions = [("video10", "ten 0"), ("video2", "two 0"), ("video100", "hundred 0"), ("video2", "two 1"),
                ("video10", "ten 1"), ("video2", "two 2"), ("video1", "one 0"), ("video3", "three 0")]  # fmt: skip
    annotations = [{"image_id": v, "caption": c, "id": i} for i, (v, c) in enumerate(captions)]
    write(root / "annotation" / "MSR_VTT.json", json.dumps({"annotations": annotations}).encode())
    for name, clip in {"video1": "a", "video3": "b", "video2": "c", "video100": "d", "video10": "a"}.items():
        write(root / "videos" / "all" / f"{name}.mp4", clips[clip])
    dataset = prepare_cli("msrvtt", [tmp_path / "frozen"], tmp_path / "data", "--split", "test")
    manifest = video_manifest(dataset)
    assert list(manifest["splits"]) == ["test"] and skipped(dataset) == {"video5": "no_captions"}
    test = samples(dataset, "test")
    assert [(s["meta"]["id"], s["meta"]["captions"], s["meta"]["caption_index"]) for s in test] == [
        ("video2", ["two 2"], 2), ("video100", ["hundred 0"], 0), ("video10", ["ten 1"], 1)]  # fmt: skip
    assert [s["mp4"] for s in test] == [clips["c"], clips["d"], clips["a"]]


def test_msrvtt_unsafe_pickle_and_missing_files_are_errors(tmp_path: Path) -> None:
    from scl_cli.engines.prepare import prepare
    from scl_cli.errors import DataError, UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no MSRVTT_JSFUSION_test.csv or val_list_jsfusion.txt"):
        prepare("msrvtt", tmp_path / "data", source=[tmp_path / "empty"], split=["test"], workers=1)
    src = tmp_path / "bad"
    write(src / "val_list_jsfusion.txt", b"video1\n")
    write(src / "MSR_VTT.json", b'{"annotations": []}')
    write(src / "jsfusion_val_caption_idx.pkl", pickle.dumps({"video1": Path("x")}))
    with pytest.raises(DataError, match="not a pickled"):
        prepare("msrvtt", tmp_path / "data", source=[src], workers=1)


# ----------------------------------------------------------------------------- LSMDC
def lsmdc_line(clip: str, sentence: str) -> str:
    start, end = clip.rsplit("_", 1)[1].split("-")
    return f"{clip}\t{start}\t{end}\t{start}\t{end}\t{sentence}\n"


def test_lsmdc_grouped_captions_avi_and_skips(tmp_path: Path, clips: dict[str, bytes]) -> None:
    src = tmp_path / "lsmdc"
    beauty = "0001_American_Beauty"
    a, b, c, d = (f"{beauty}_00.00.{s:02d}.000-00.00.{s + 2:02d}.000" for s in (10, 20, 30, 40))
    e, f, g = (f"0002_Movie_00.01.{s:02d}.000-00.01.{s + 2:02d}.000" for s in (10, 20, 30))
    train = (lsmdc_line(a, "SOMEONE sits at a desk.") + lsmdc_line(b, "SOMEONE\truns away.")
             + lsmdc_line(c, "No clip for this one.") + "broken_line\tonly three\tcolumns\n" + lsmdc_line(d, "Corrupt.")
             + lsmdc_line(a, "SOMEONE types.") + lsmdc_line(a, "SOMEONE sits at a desk."))  # fmt: skip
    write(src / "LSMDC16_annos_training.csv", train.encode())
    write(src / "LSMDC16_annos_val.csv", lsmdc_line(e, "Val sentence.").encode())
    test = lsmdc_line(g, "Test G.") + lsmdc_line(f, "Test F.") + lsmdc_line(g, "Test G again.")
    write(src / "LSMDC16_challenge_1000_publictect.csv", test.encode())
    write(src / "avi" / beauty / f"{a}.avi", clips["a"])  # an .avi holding MPEG-4: read by content
    write(src / "avi" / beauty / f"{b}.avi", clips["b"])
    write(src / "avi" / beauty / f"{d}.avi", clips["bad"])
    write(src / "mp4" / "0002_Movie" / f"{e}.mp4", clips["c"])
    write(src / "avi" / "0002_Movie" / f"{f}.avi", clips["d"])
    write(src / "avi" / "0002_Movie" / f"{g}.avi", clips["a"])
    dataset = prepare_cli("lsmdc", [src], tmp_path / "data")
    manifest = video_manifest(dataset)
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {"train": 2, "val": 1, "test": 2}
    assert skipped(dataset) == {c: "missing_video", d: "unreadable_video",
                                "broken_line": "malformed_line"}  # fmt: skip
    assert sorted(caption_skips(dataset)) == [(a + "#2", "duplicate_caption"), (g, "duplicate_id")]
    by_id = {s["meta"]["id"]: s for s in samples(dataset, "train")}
    assert by_id[a]["meta"] == {"id": a, "captions": ["SOMEONE sits at a desk.", "SOMEONE types."],
                                "video": f"{beauty}/{a}.avi", "movie": beauty, "start": "00.00.10.000",
                                "end": "00.00.12.000"}  # fmt: skip
    assert by_id[b]["meta"]["captions"] == ["SOMEONE runs away."]
    assert by_id[a]["mp4"] == clips["a"] and by_id[b]["mp4"] == clips["b"]
    (val,) = samples(dataset, "val")
    assert val["meta"]["video"] == f"0002_Movie/{e}.mp4" and val["mp4"] == clips["c"]
    test_samples = samples(dataset, "test")
    assert [(s["meta"]["id"], s["meta"]["captions"]) for s in test_samples] == [
        (g, ["Test G."]),
        (f, ["Test F."]),
    ]
    assert [s["mp4"] for s in test_samples] == [clips["a"], clips["d"]]
