"""`scl index` / `scl retrieve`: the faiss wrapper, building and appending, resuming, the
fingerprint check, missing files, JSON and contact-sheet output, and the same recall as
`scl eval retrieval` on the shapes test split."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scl_cli.config import load_recipe
from scl_cli.engines.evaluate import evaluate
from scl_cli.engines.index import build_index
from scl_cli.engines.pretrain import pretrain
from scl_cli.engines.retrieve import Retriever, retrieve
from scl_cli.errors import UsageError
from scl_cli.search.contact_sheet import sheet_layout
from scl_cli.search.faiss_index import AUTO_FLAT_MAX, VectorIndex, choose_kind, recall_at_k
from scl_cli.search.store import MetaStore, checkpoint_id, read_info

from .conftest import RECIPES, tiny_overrides


@pytest.fixture(scope="module")
def tiny_ckpt(shapes_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain(load_recipe(RECIPES / "tiny.toml", tiny_overrides(shapes_root, run, steps=2)[1::2]))
    return run


def scl(*args: str, capsys) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from scl_cli.cli import main

    argv, sys.argv = sys.argv, ["scl", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def image_folder(root: Path, colours: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", (40 + 8 * i, 40), colour).save(root / f"{i:02d}-{colour}.png")
    return root


# ----------------------------------------------------------------------------- faiss wrapper
def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32) * (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_approximate_indexes_reach_the_tuned_recall_and_take_appends():
    base, queries = clustered(4000, 32, 0), clustered(100, 32, 1)
    exact = VectorIndex.build(base, "flat")
    _, truth = exact.search(queries, 10)
    assert np.array_equal(truth[:, 0], np.argmax(queries @ base.T, axis=1))
    for kind in ("hnsw", "ivf"):
        index = VectorIndex.build(base, kind)
        assert index.kind == kind and index.params["tuned_recall_at_10"] >= 0.95
        assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.9
        extra = clustered(50, 32, 2)
        index.add(extra)
        assert index.ntotal == 4050
        assert index.search(extra[:5], 1)[1][:, 0].tolist() == list(range(4000, 4005))
    assert choose_kind(AUTO_FLAT_MAX - 1) == "flat" and choose_kind(AUTO_FLAT_MAX) == "ivf"
    with pytest.raises(UsageError, match="--kind"):
        choose_kind(10, "lsh")


# ----------------------------------------------------------------------------- consistency
def test_index_recall_equals_eval_retrieval(shapes_root, tiny_ckpt, tmp_path):
    data = shapes_root / "shapes"
    summary = build_index(tiny_ckpt, tmp_path / "idx", data=data, split="test")
    retriever = Retriever(summary.path, tiny_ckpt)
    records = list(MetaStore(summary.path).iter_all())
    queries = [(c, r["id"]) for r in records for c in r["captions"]]
    for k in (0, 4):
        hits = retriever.search_texts([q for q, _ in queries], top_k=10, rerank=k)
        ours = {f"ir_r{n}": 100 * np.mean([own in [h.id for h in h_list[:n]] for (_, own), h_list
                                          in zip(queries, hits, strict=True)]) for n in (1, 5, 10)}  # fmt: skip
        report = evaluate("retrieval", tiny_ckpt, data=str(data), split="test", rerank=k)
        assert report.samples == summary.total
        assert ours == pytest.approx({m: report.metrics[m] for m in ours}), f"rerank={k}"


# ----------------------------------------------------------------------------- building
def test_add_resume_videos_and_unreadable_files(tiny_ckpt, tmp_path):
    folder = image_folder(tmp_path / "imgs", ["red", "blue", "green"])
    out = tmp_path / "idx"
    first = build_index(tiny_ckpt, out, images=folder)
    assert (first.total, first.added, first.kind) == (3, 3, "flat")
    with pytest.raises(UsageError, match="--add"):
        build_index(tiny_ckpt, out, images=folder)

    image_folder(folder, ["red", "blue", "green", "yellow", "purple"])  # two new files
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "broken.mp4").write_bytes(b"not a video")
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "white", "blue")]
    frames[0].save(folder / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    old = VectorIndex.load(out / "index.faiss", "flat", {}).reconstruct_all()
    added = build_index(tiny_ckpt, out, images=folder, add=True)
    video = (
        "unreadable video" if importlib.util.find_spec("av") else "video without a decoder (pip install av)"
    )
    assert (added.total, added.added, added.skipped) == (6, 3, {"unreadable image": 1, video: 1})
    assert np.array_equal(VectorIndex.load(out / "index.faiss", "flat", {}).reconstruct_all()[:3], old)
    records = list(MetaStore(out).iter_all())
    assert [r["id"] for r in records] == list(range(6))
    assert [r.get("frames", 1) for r in records if r["path"].endswith("clip.gif")] == [3]

    # An interrupted build resumes from its finished parts.
    def stop_after_first_part(stage: str, done: int, total: int) -> None:
        if done > 2:  # inside the second part of two files
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_ckpt, resumed, images=folder, part_size=2, progress=stop_after_first_part)
    assert not (resumed / "info.json").exists() and (resumed / ".parts" / "00000.npy").is_file()
    done = build_index(tiny_ckpt, resumed, images=folder, part_size=2)
    assert done.resumed_parts == 1 and done.total == 6 and not (resumed / ".parts").exists()


# ----------------------------------------------------------------------------- querying
def test_retrieve_cli_json_grid_missing_files_and_fingerprint(tiny_ckpt, tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", ["red", "blue", "green", "orange"])
    grid = tmp_path / "sheet.png"
    args = ["retrieve", "--ckpt", str(tiny_ckpt), "--images", str(folder), "--query", "a red circle"]
    code, out, err = scl(*args, "--top-k", "3", "--json", "--grid", str(grid), capsys=capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"query", "mode", "index", "checkpoint", "scorer", "hits", "missing", "seconds"}
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["missing"] == 0
    assert set(result["hits"][0]) >= {"rank", "id", "score", "itc_score", "path", "captions", "missing"}
    cols, rows = sheet_layout(3)
    assert Image.open(grid).size == (cols * 200 + 8, 30 + rows * 234 + 8)
    cached = Path(result["index"])
    assert cached.parent == tiny_ckpt / "indexes" and read_info(cached).count == 4

    # A file deleted after indexing is reported, not fatal (with re-ranking too).
    (folder / "00-red.png").unlink()
    code, out, err = scl("retrieve", "--index", str(cached), "--query", "red", "--top-k", "4", "--rerank", "4",
                         "--json", capsys=capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["missing"] == 1 and result["scorer"] == "ITM match logit"
    assert [h["stage"] for h in result["hits"]] == ["rerank"] * 3 + ["itc"] and result["hits"][-1]["missing"]
    code, out, err = scl("retrieve", "--index", str(cached), "--query", "red", capsys=capsys)
    assert code == 0 and "missing" in err and "(missing)" in out

    # --ckpt alone finds the newest index made from it; image -> image search.
    hits = retrieve(image=folder / "01-blue.png", ckpt=tiny_ckpt, top_k=2)[0].hits
    assert hits[0].path == str((folder / "01-blue.png").resolve()) and hits[0].score == pytest.approx(
        1, abs=1e-4
    )

    # Another checkpoint: refused in one line, exit code 2.
    other = tmp_path / "other"
    shutil.copytree(checkpoint_id(tiny_ckpt).path, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "step": 99}))
    code, out, err = scl(
        "retrieve", "--index", str(cached), "--ckpt", str(other), "--query", "x", capsys=capsys
    )
    assert code == 2 and "was built with checkpoint" in err and "rebuild" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, err = scl("retrieve", "--ckpt", str(other), "--query", "x", capsys=capsys)
    assert code == 2 and "scl index --ckpt" in err


def test_many_queries_share_one_model_load_and_report_what_they_cost(tiny_ckpt, tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", ["red", "blue", "green"])
    queries = tmp_path / "queries.txt"
    queries.write_text("a green square\n\n  a blue star  \n")
    code, out, err = scl("retrieve", "--ckpt", str(tiny_ckpt), "--images", str(folder), "--query", "a red circle",
                         "--query", "red", "--queries", str(queries), "--image", str(folder / "01-blue.png"),
                         "--top-k", "2", "--json", capsys=capsys)  # fmt: skip
    assert code == 0, err
    results = json.loads(out)
    assert [r["query"] for r in results] == ["a red circle", "red", "a green square", "a blue star",
                                             str(folder / "01-blue.png")]  # fmt: skip
    assert [r["mode"] for r in results] == ["text->image"] * 4 + ["image->image"]
    seconds = results[0]["seconds"]
    assert {r["seconds"]["load"] for r in results} == {seconds["load"]}  # one load for all
    assert seconds["startup"] > 0 and seconds["total"] >= seconds["startup"] + seconds["load"]
    # the text table: one per query, and the start-up it cost
    code, out, err = scl("retrieve", "--ckpt", str(tiny_ckpt), "--images", str(folder), "--query", "a", "--query", "b",
                         capsys=capsys)  # fmt: skip
    assert (
        code == 0
        and out.count("text->image") == 2
        and "2 queries in" in out + err
        and "start-up" in out + err
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code, _, err = scl("retrieve", "--ckpt", str(tiny_ckpt), "--queries", str(empty), capsys=capsys)
    assert code == 2 and "no query in it" in err
