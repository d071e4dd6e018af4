"""`benchmarks/probe_shapes.py`, the measure behind issue 15's figures: its counts against a plain
re-statement on scores we choose, its foils change one thing and are false, and it runs end to end
on a checkpoint `scl pretrain` wrote."""

from __future__ import annotations

import random

import torch

from scl_cli.data.shapes import NUMBER_WORDS, describe, holds, relation_phrase, sample_scene, scene_rng

from ..conftest import load_benchmark

probe_shapes = load_benchmark("probe_shapes")


def test_auc_is_the_share_of_pairs_ordered_right() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 5, (7,), generator=g).float(), torch.randint(0, 5, (9,), generator=g).float()
    plain = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos.tolist() for n in neg.tolist()) / 63
    assert abs(probe_shapes.auc(pos, neg) - plain) < 1e-6


class StubProbe:
    """Scores we choose: random ITC features, and a fusion score that is the dot product of the
    first text token with the first image token, so the expected rankings can be computed by hand."""

    def __init__(self) -> None:
        self.g = torch.Generator().manual_seed(1)

    def images(self, jpegs: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(jpegs)
        return torch.randn(n, 8, generator=self.g), torch.randn(n, 2, 4, generator=self.g)

    def texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(texts)
        return torch.randn(n, 8, generator=self.g), torch.randn(n, 3, 4, generator=self.g), torch.ones(n, 3)

    def fusion(
        self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        return (text_tokens[:, 0] * image_tokens[:, 0]).sum(-1)


def test_search_counts_hits_as_a_plain_restatement() -> None:
    top, rerank = 4, 6
    got = probe_shapes.probe_search(StubProbe(), seed=3, per_combo=2, image_size=32, top=top, rerank=rerank)

    stub = StubProbe()  # the same draws, in the same order
    renders = probe_shapes.fresh_renders(3, 2, 32)
    objects = [o for _, o in renders]
    image_itc, image_tok = stub.images([j for j, _ in renders])
    queries = [(c, s) for c in probe_shapes.COLORS for s in probe_shapes.SHAPES]
    text_itc, text_tok, _ = stub.texts(["" for _ in queries])
    sums = {"itc": [0.0] * 4, "reranked": [0.0] * 4}
    aucs = {(name, size): [] for name in ("itc", "fusion") for size in ("small", "large")}
    for q, (c, s) in enumerate(queries):
        sims = [float(text_itc[q] @ image_itc[i]) for i in range(len(objects))]
        fused = [float(text_tok[q, 0] @ image_tok[i, 0]) for i in range(len(objects))]
        shortlist = sorted(range(len(objects)), key=lambda i: -sims[i])[: max(top, rerank)]
        head = shortlist[:rerank]
        reranked = [head[k] for k in sorted(range(rerank), key=lambda k: (-fused[head[k]], k))]
        for mode, ids in (("itc", shortlist[:top]), ("reranked", reranked[:top])):
            for o in (objects[i] for i in ids):
                for k, hit in enumerate(
                    (o.color == c and o.shape == s, o.color == c, o.shape == s, o.size == "small")
                ):
                    sums[mode][k] += hit / top
        for size in ("small", "large"):
            ids = [i for i, o in enumerate(objects) if o.color == c and o.size == size]
            for name, score in (("itc", sims), ("fusion", fused)):
                pos = [score[i] for i in ids if objects[i].shape == s]
                neg = [score[i] for i in ids if objects[i].shape != s]
                pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
                if pairs:  # queries with no render of the shape (or only it) at this size count not
                    aucs[name, size].append(sum(pairs) / len(pairs))
    for mode in ("itc", "reranked"):
        for k, key in enumerate(("color_and_shape", "color", "shape", "small")):
            assert abs(got[mode][key] - 100 * sums[mode][k] / len(queries)) < 1e-6, (mode, key)
    for (name, size), values in aucs.items():
        assert 10 < len(values) < len(queries)  # both cases happen with 2 renders per combination
        assert abs(got["shape_auc"][name][size] - sum(values) / len(values)) < 1e-5, (name, size)
    assert got["chance"]["small"] == 100 * sum(o.size == "small" for o in objects) / len(objects)


def test_foils_change_one_thing_and_are_false() -> None:
    seen = set()
    for i in range(300):
        objects = list(sample_scene(scene_rng(0, "test", i)).objects)
        foils = probe_shapes._foils(objects, random.Random(i))
        full = f"a picture with {describe(objects)}."
        for axis in ("color", "shape", "size"):
            true, foil = foils[axis]
            assert true == full and foil != true, axis
            assert foil.startswith("a picture with ") and foil.endswith(".")
        true, foil = foils["count"]
        n = NUMBER_WORDS.index(true.split()[0])
        assert n == len(objects) and abs(NUMBER_WORDS.index(foil.split()[0]) - n) == 1
        assert true.split(" ", 1)[1:] == foil.split(" ", 1)[1:]
        if "relation" in foils:
            true, foil = foils["relation"]
            phrases = {(x, r, y): relation_phrase(x, r, y) + "." for x in objects for y in objects
                       for r in probe_shapes.RELATIONS if x is not y}  # fmt: skip
            assert any(p == true and holds(*k) for k, p in phrases.items())
            assert not any(p == foil and holds(*k) for k, p in phrases.items()), (objects, foil)
        seen |= set(foils)
    assert seen == {"color", "shape", "size", "count", "relation"}


def test_probe_runs_on_a_pretrained_checkpoint(tiny_run, shapes_root, capsys) -> None:
    report = probe_shapes.run(tiny_run, shapes_root / "shapes", split="val", per_combo=1, limit=8)
    search = report["search"]
    assert search["images"] == 30 and search["queries"] == 30
    for mode in ("itc", "reranked"):
        assert all(0 <= v <= 100 for v in search[mode].values())
    assert 0 <= report["itm"]["accuracy"] <= 1 and report["itm"]["pairs"] == 8
    assert set(report["summary"]) >= {
        "search_itc_color_and_shape",
        "search_reranked_color_and_shape",
        "itm_accuracy",
    }
    probe_shapes.print_report(report)
    assert "shape AUC among the queried colour" in capsys.readouterr().out


def test_a_missing_checkpoint_or_data_set_is_one_line(tiny_run, shapes_root, tmp_path, capsys) -> None:
    for args in (["--ckpt", str(tmp_path / "nope"), "--data", str(shapes_root / "shapes")],
                 ["--ckpt", str(tiny_run), "--data", str(tmp_path / "nope")]):  # fmt: skip
        assert probe_shapes.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "nope" in err and "\n" not in err and "Traceback" not in err
