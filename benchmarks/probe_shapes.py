"""What a checkpoint has learnt about the shapes world, measured without training anything.

    python benchmarks/probe_shapes.py --ckpt demo-run/tiny --data demo-run/data/shapes [--json out.json]

Three probes, all on data the model never saw:

1. **Fresh renders** (issue 15's search check): `--per-combo` images of every colour x shape,
   one shape per image, drawn with another seed than `scl prepare shapes` (random size, cell,
   offset and background). For each of the 30 queries "a red circle", ... the top `--top` images
   by ITC alone, then with the top `--rerank` re-scored by the fusion score (the ITM match logit;
   the rank head after retrieval fine-tuning), exactly as `scl retrieve --rerank` does. Reported:
   the share of hits with the queried colour *and* shape (chance 1/30 x 30 = 3.3%), colour alone
   (chance 1/6) and shape alone (chance 1/5), averaged over the queries; and the share of hits that
   are small shapes (chance: their share of the renders, about half), since the queries name no
   size: a scorer that prefers small shapes, whose outlines are harder to read, loses shape hits.
   Last, per size, how well ITC and the fusion tell the queried shape from the other four among
   all renders of the queried colour (AUC, chance 0.5), whatever the shortlist held.
2. **ITM on held-out pairs**: every image of `--split` (test by default: never trained on) with
   one of its captions, half of the pairs given another image of the split at random (the
   paper's ITM negatives). Accuracy of the ITM head's argmax (chance 0.5).
3. **One axis at a time**: for held-out images, a true caption against the same caption with one
   thing changed — a colour, a shape, a size, the number of shapes, a spatial relation ("left of"
   for "right of") — scored by the fusion
   (ITM match logit) and by ITC. The share of images whose true caption wins (chance 50%) says
   which axes the model has learnt.

Uses only the library API (`scl_cli.inference.SCL`, whose features and fusion scores `scl eval
retrieval` / `scl retrieve` use too, and the shapes generator), so it reads any checkpoint `scl` writes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from scl_cli.data.shapes import (
    COLORS,
    GRID,
    MAX_OBJECTS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    describe,
    encode_jpeg,
    holds,
    objects_from_json,
    relation_phrase,
    render_scene,
)
from scl_cli.data.shards import iter_tar_samples, read_manifest
from scl_cli.errors import SclError
from scl_cli.inference import SCL
from scl_cli.io.atomic import atomic_write_json

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


# ----------------------------------------------------------------------------- model helpers
class Probe:
    """A checkpoint ready for scoring: images -> (ITC, fusion tokens), texts -> (ITC, tokens, mask)."""

    def __init__(self, ckpt: Path, batch: int = 64) -> None:
        self.scl = SCL.from_pretrained(str(ckpt), device="cpu")
        self.model = self.scl.module
        self.batch = batch

    def images(self, jpegs: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        itc, tokens = [], []
        for a in range(0, len(jpegs), self.batch):
            pixels = torch.stack([self.scl.transform.from_bytes(j) for j in jpegs[a : a + self.batch]])[:, None]
            f, t = self.scl.image_features(pixels)
            itc.append(f)
            tokens.append(t)
        return torch.cat(itc), torch.cat(tokens)

    def texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        itc, tokens, masks = [], [], []
        for a in range(0, len(texts), self.batch):
            f = self.scl.text_features(texts[a : a + self.batch])
            itc.append(f.itc)
            tokens.append(f.tokens)
            masks.append(f.mask)
        return torch.cat(itc), torch.cat(tokens), torch.cat(masks)

    def fusion(self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Fusion score of aligned (text, image) rows: [P] (what `scl retrieve --rerank` sorts by)."""
        out = []
        for a in range(0, len(text_tokens), 256):
            s = slice(a, a + 256)
            out.append(self.scl.fusion_scores(text_tokens[s], mask[s], image_tokens[s]))
        return torch.cat(out)

    @torch.inference_mode()
    def itm_accuracy(self, text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor,
                     labels: torch.Tensor) -> float:  # fmt: skip
        hits = 0
        for a in range(0, len(text_tokens), 256):
            s = slice(a, a + 256)
            pooled = self.model.pooled(self.model.fuse(text_tokens[s], mask[s], image_tokens[s]), 1)
            hits += (self.model.itm_logits(pooled).argmax(-1) == labels[s]).sum().item()
        return hits / len(labels)


# ----------------------------------------------------------------------------- 1. fresh renders
def fresh_renders(seed: int, per_combo: int, image_size: int) -> list[tuple[bytes, ShapeObject]]:
    """per_combo JPEGs of each colour x shape, one shape each, from a generator `scl prepare` never uses."""
    out = []
    for color in COLORS:
        for shape in SHAPES:
            for k in range(per_combo):
                rng = random.Random(f"shapes-probe/{seed}/{color}/{shape}/{k}")
                cell = rng.randrange(GRID * GRID)
                obj = ShapeObject(shape, color, rng.choice(SIZES), cell // GRID, cell % GRID)
                background = tuple(min(255, 238 + rng.randint(-10, 10)) for _ in range(3))
                scene = Scene((obj,), background, ((rng.uniform(-1, 1), rng.uniform(-1, 1)),))  # type: ignore[arg-type]
                out.append((encode_jpeg(render_scene(scene, image_size)), obj))
    return out


def probe_search(probe: Probe, seed: int, per_combo: int, image_size: int, top: int, rerank: int) -> dict:
    renders = fresh_renders(seed, per_combo, image_size)
    image_itc, image_tokens = probe.images([j for j, _ in renders])
    objects = [o for _, o in renders]
    queries = [(c, s) for c in COLORS for s in SHAPES]
    text_itc, text_tokens, mask = probe.texts([_a(f"{c} {s}") for c, s in queries])
    similarity = text_itc @ image_itc.T  # [Q, N]
    shortlist = similarity.topk(max(top, rerank), dim=1).indices
    result: dict[str, dict] = {}
    for mode in ("itc", "reranked"):
        both = color = shape = small = 0.0
        for q, (c, s) in enumerate(queries):
            ids = shortlist[q]
            if mode == "reranked":
                head = ids[:rerank]
                n = len(head)
                scores = probe.fusion(text_tokens[q : q + 1].expand(n, -1, -1), mask[q : q + 1].expand(n, -1),
                                      image_tokens[head])  # fmt: skip
                # Best fusion score first; ties keep the ITC order (as `scl retrieve` does).
                order = sorted(range(n), key=lambda i: (-scores[i].item(), i))
                ids = head[order]
            hits = [objects[i] for i in ids[:top].tolist()]
            both += sum(o.color == c and o.shape == s for o in hits) / top
            color += sum(o.color == c for o in hits) / top
            shape += sum(o.shape == s for o in hits) / top
            small += sum(o.size == "small" for o in hits) / top
        n = len(queries)
        result[mode] = {"color_and_shape": 100 * both / n, "color": 100 * color / n, "shape": 100 * shape / n,
                        "small": 100 * small / n}  # fmt: skip
    result["shape_auc"] = shape_auc(probe, objects, queries, similarity, text_tokens, mask, image_tokens)
    chance = {"color_and_shape": 100 / len(queries), "color": 100 / len(COLORS), "shape": 100 / len(SHAPES),
              "small": 100 * sum(o.size == "small" for o in objects) / len(objects)}  # fmt: skip
    return {"images": len(renders), "queries": len(queries), "top": top, "rerank": rerank, **result, "chance": chance}


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a positive scores above a negative, ties counting half (Mann-Whitney)."""
    diff = positive.float()[:, None] - negative.float()[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


def shape_auc(probe: Probe, objects: list[ShapeObject], queries: list[tuple[str, str]], similarity: torch.Tensor,
              text_tokens: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> dict:  # fmt: skip
    """How well each score tells the queried shape from the other four among the renders of the
    queried colour, for small and for large shapes apart: the AUC per query (ITC similarity; fusion
    score of every such pair, not only a shortlist), averaged over the queries that have renders of
    both kinds at that size (nan if none has)."""
    out: dict[str, dict[str, float]] = {"itc": {}, "fusion": {}}
    for size in SIZES:
        sums, counted = {"itc": 0.0, "fusion": 0.0}, 0
        for q, (c, s) in enumerate(queries):
            ids = torch.tensor([i for i, o in enumerate(objects) if o.color == c and o.size == size])
            match = torch.tensor([objects[i].shape == s for i in ids.tolist()], dtype=torch.bool)
            n = len(ids)
            if match.all() or not match.any():
                continue
            counted += 1
            fused = probe.fusion(text_tokens[q : q + 1].expand(n, -1, -1), mask[q : q + 1].expand(n, -1),
                                 image_tokens[ids])  # fmt: skip
            for name, scores in (("itc", similarity[q, ids]), ("fusion", fused)):
                sums[name] += auc(scores[match], scores[~match])
        for name in sums:
            out[name][size] = sums[name] / counted if counted else float("nan")
    return out


# ----------------------------------------------------------------------------- held-out data
def held_out(dataset: Path, split: str, limit: int) -> list[tuple[bytes, dict]]:
    manifest = read_manifest(dataset)
    out = []
    for shard in manifest["splits"][split]["shards"]:
        for sample in iter_tar_samples(dataset / shard["file"]):
            out.append((sample["jpg"], json.loads(sample["json"])))
            if len(out) == limit:
                return out
    return out


def probe_itm(probe: Probe, samples: list[tuple[bytes, dict]], image_tokens: torch.Tensor, seed: int) -> dict:
    """ITM accuracy: each image's caption (one drawn per image) with its own image or, for half the
    pairs, another image of the split drawn at random."""
    rng = random.Random(f"shapes-probe-itm/{seed}")
    n = len(samples)
    captions = [rng.choice(record["captions"]) for _, record in samples]
    negative = [i < n // 2 for i in range(n)]
    rng.shuffle(negative)
    index = [(i + rng.randrange(1, n)) % n if neg else i for i, neg in enumerate(negative)]
    _, tokens, mask = probe.texts(captions)
    labels = torch.tensor([0 if neg else 1 for neg in negative])
    accuracy = probe.itm_accuracy(tokens, mask, image_tokens[index], labels)
    return {"pairs": n, "accuracy": accuracy, "chance": 0.5}


def _foils(objects: list[ShapeObject], rng: random.Random) -> dict[str, tuple[str, str]]:
    """(true caption, the same with one thing changed) per axis that this scene can test."""
    out: dict[str, tuple[str, str]] = {}
    full = f"a picture with {describe(objects)}."
    k = rng.randrange(len(objects))
    o = objects[k]

    def changed(**kw: str) -> str:
        new = list(objects)
        new[k] = ShapeObject(**{**o.to_json(), **kw})
        return f"a picture with {describe(new)}."

    out["color"] = (full, changed(color=rng.choice([c for c in COLORS if c != o.color])))
    out["shape"] = (full, changed(shape=rng.choice([s for s in SHAPES if s != o.shape])))
    out["size"] = (full, changed(size="small" if o.size == "large" else "large"))
    # Count: the same list of shapes with a total one higher or one lower (both directions equally
    # often over the split, so a preference for bigger or smaller numbers does not score).
    n = len(objects)
    other = n + 1 if n == 1 else n - 1 if n == MAX_OBJECTS else n + rng.choice((-1, 1))
    plain = describe(objects, size=False)
    out["count"] = (f"{NUMBER_WORDS[n]} shapes: {plain}.", f"{NUMBER_WORDS[other]} shapes: {plain}.")
    pairs = [(a, r, b) for a in objects for b in objects for r in RELATIONS if a is not b and holds(a, r, b)]
    rng.shuffle(pairs)
    for a, r, b in pairs:
        foil = relation_phrase(a, OPPOSITE[r], b)
        # Not a foil if some other pair with the same descriptions makes it true.
        if not any(relation_phrase(x, OPPOSITE[r], y) == foil and holds(x, OPPOSITE[r], y)
                   for x in objects for y in objects if x is not y):  # fmt: skip
            out["relation"] = (f"{relation_phrase(a, r, b)}.", f"{foil}.")
            break
    return out


def probe_axes(probe: Probe, samples: list[tuple[bytes, dict]], image_itc: torch.Tensor,
               image_tokens: torch.Tensor, seed: int) -> dict:  # fmt: skip
    rng = random.Random(f"shapes-probe-axes/{seed}")
    rows: dict[str, list[tuple[int, str, str]]] = {}
    for i, (_, record) in enumerate(samples):
        for axis, (true, foil) in _foils(objects_from_json(record), rng).items():
            rows.setdefault(axis, []).append((i, true, foil))
    out = {}
    for axis in ("color", "shape", "size", "count", "relation"):
        items = rows.get(axis, [])
        if not items:
            continue
        index = torch.tensor([i for i, _, _ in items])
        t_itc, t_tok, t_mask = probe.texts([t for _, t, _ in items])
        f_itc, f_tok, f_mask = probe.texts([f for _, _, f in items])
        itc = ((t_itc * image_itc[index]).sum(-1) > (f_itc * image_itc[index]).sum(-1)).float().mean()
        fused = probe.fusion(t_tok, t_mask, image_tokens[index]) > probe.fusion(f_tok, f_mask, image_tokens[index])
        out[axis] = {"images": len(items), "itm": 100 * fused.float().mean().item(), "itc": 100 * itc.item()}
    return out


# ----------------------------------------------------------------------------- report
def run(ckpt: Path, data: Path, split: str = "test", seed: int = 1, per_combo: int = 10, top: int = 8,
        rerank: int = 24, limit: int = 1000) -> dict:  # fmt: skip
    started = time.perf_counter()
    torch.manual_seed(0)
    probe = Probe(ckpt)
    image_size = int(read_manifest(data).get("image_size", 128))
    report: dict = {"checkpoint": str(ckpt), "data": str(data), "split": split, "seed": seed}
    report["search"] = probe_search(probe, seed, per_combo, image_size, top, rerank)
    samples = held_out(data, split, limit)
    image_itc, image_tokens = probe.images([j for j, _ in samples])
    report["itm"] = probe_itm(probe, samples, image_tokens, seed)
    report["axes"] = probe_axes(probe, samples, image_itc, image_tokens, seed)
    report["summary"] = summary(report)
    report["seconds"] = time.perf_counter() - started
    return report


def summary(report: dict) -> dict[str, float]:
    """The headline numbers, flat (what `benchmarks/ablation.py` tabulates)."""
    search = report["search"]
    out = {
        "search_itc_color_and_shape": search["itc"]["color_and_shape"],
        "search_reranked_color_and_shape": search["reranked"]["color_and_shape"],
        "itm_accuracy": report["itm"]["accuracy"],
    }
    for axis, scores in report["axes"].items():
        out[f"{axis}_itc"] = scores["itc"]
        out[f"{axis}_itm"] = scores["itm"]
    return out


def print_report(r: dict) -> None:
    s = r["search"]
    print(f"fresh renders: {s['images']} images (one shape each, seed {r['seed']}), {s['queries']} colour x shape queries, top {s['top']}")
    print(f"  {'':<22}{'colour+shape':>13}{'colour':>9}{'shape':>9}{'small':>9}")
    for mode, name in (("itc", "ITC"), ("reranked", f"ITC, top {s['rerank']} re-ranked"), ("chance", "chance")):
        m = s[mode]
        print(f"  {name:<22}{m['color_and_shape']:>12.1f}%{m['color']:>8.1f}%{m['shape']:>8.1f}%{m['small']:>8.1f}%")
    a = s["shape_auc"]
    print(f"  shape AUC among the queried colour, small / large shapes: ITC {a['itc']['small']:.3f} / "
          f"{a['itc']['large']:.3f}, fusion {a['fusion']['small']:.3f} / {a['fusion']['large']:.3f} (chance 0.5)")
    i = r["itm"]
    print(f"ITM on held-out {r['split']} pairs, random negatives: accuracy {i['accuracy']:.3f} ({i['pairs']} pairs, chance 0.5)")
    print(f"one axis at a time ({r['split']} images; true caption vs one thing changed; chance 50%):")
    print(f"  {'axis':<10}{'images':>7}{'ITM':>8}{'ITC':>8}")
    for axis, a in r["axes"].items():
        print(f"  {axis:<10}{a['images']:>7}{a['itm']:>7.1f}%{a['itc']:>7.1f}%")
    print(f"({r['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint or run directory")
    parser.add_argument("--data", type=Path, default=Path("data/shapes"), help="prepared shapes data set")
    parser.add_argument("--split", default="test", help="held-out split for the ITM and axis probes")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fresh renders and the pair draws")
    parser.add_argument("--per-combo", type=int, default=10, help="fresh images per colour x shape")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--rerank", type=int, default=24)
    parser.add_argument("--limit", type=int, default=1000, help="held-out images used")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        report = run(args.ckpt, args.data, args.split, args.seed, args.per_combo, args.top, args.rerank, args.limit)
    except SclError as err:  # a missing checkpoint or data set: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
