"""Each registered objective against a plain re-statement of its formula (DESIGN §1.2), on fixed
tensors served by a stand-in for the step context."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from scl_cli.objectives import build_objectives, registered, validate_objectives
from scl_cli.objectives.itm import hard_other_index, random_other_index
from scl_cli.objectives.masking import StepRandom, TextMask

from .test_contrastive import reference


def unit(x):
    return F.normalize(x, dim=-1)


class FakeContext:
    """Serves fixed fusion outputs; records fusion requests like the real StepContext."""

    def __init__(self, B=4, L=6, S=5, D=8, frames=1, seed=0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.batch_size, self.frames, self.device = B, frames, torch.device("cpu")
        self.random = StepRandom(seed, 0, self.device, B)
        self.requests = {}
        self.outputs = {
            name: SimpleNamespace(text=r(B, L, D), image=r(B, S * frames, D))
            for name in (
                "itm",
                "mlm",
                "scl_masked_image",
                "scl_masked_text",
                "scl_masktok_image",
                "itm_reversed",
            )
        }
        self.text_ids = torch.randint(5, 20, (B, L), generator=g)
        picked = torch.zeros(B, L, dtype=torch.bool)
        picked[:, 1] = True
        picked[0, 3] = True
        self.mlm_mask = TextMask(self.text_ids, picked)
        self.scl_text_mask = TextMask(
            self.text_ids,
            picked,
            torch.tensor([[1, 3]] * B),
            torch.tensor([[True, True]] + [[True, False]] * (B - 1)),
        )
        self._itc = (unit(r(B, 3)), unit(r(B, 3)))
        vocab = 20
        W_itm, W_mlm = r(2 * D, 2), r(D, vocab)
        self.model = SimpleNamespace(
            itc_temperature=torch.tensor(0.07, dtype=torch.float64),
            itm_logits=lambda pooled: pooled @ W_itm,
            mlm_logits=lambda text: text @ W_mlm,
        )
        self.image_positions = torch.tensor([[1, 2]] * B)

    def request_fusion(self, name, text="full", image="full", image_index=None, image_plan=None):
        self.requests[name] = (text, image, image_index)

    def fused(self, name):
        return self.outputs[name]

    def pooled(self, name):
        out = self.outputs[name]
        return torch.cat([out.text[:, 0], out.image[:, 0]], dim=1)

    def itc(self):
        return self._itc

    def masked_image_positions(self):
        return self.image_positions


def objective(name, **settings):
    return build_objectives(validate_objectives({name: settings}))[name]


def test_registry_has_the_paper_objectives_with_paper_weights():
    assert set(registered()) >= {"itc", "itm", "mlm", "scl_global", "scl_local"}
    defaults = validate_objectives({})
    assert {n: s.weight for n, s in defaults.items()} == {
        "itc": 0.5, "itm": 1.0, "mlm": 1.0, "scl_global": 1.0, "scl_local": 0.2,
    }  # fmt: skip


def test_weight_zero_is_off_and_bad_settings_are_named():
    assert "itm" not in build_objectives(validate_objectives({"itm": {"weight": 0}, "itc": {}}))
    with pytest.raises(ValueError, match="objectives.itm.negatives"):
        validate_objectives({"itm": {"negatives": "best"}})
    with pytest.raises(ValueError, match="unknown objective 'foo'"):
        validate_objectives({"foo": {}})


def test_itc():
    ctx = FakeContext()
    got = objective("itc").loss(ctx)["loss"]
    t, v = ctx.itc()
    assert abs(float(got) - reference(t, v, 0.07)) < 1e-9


def test_itc_reversed_clips_are_extra_negatives_of_the_captions_on_clips_only():
    from .test_contrastive import unit as unit64

    backwards = unit64(4, 3, 11)
    for frames in (1, 4):
        ctx = FakeContext(frames=frames)
        ctx.image = lambda variant: variant
        ctx.model.itc_image = lambda enc: backwards if enc == "reversed" else None
        got = objective("itc", reversed_clips=True).loss(ctx)["loss"]
        t, v = ctx.itc()
        if frames == 1:
            want = reference(t, v, 0.07)
        else:
            want = float(F.cross_entropy(t @ torch.cat([v, backwards]).t() / 0.07, torch.arange(4)))
            want += float(F.cross_entropy(v @ t.t() / 0.07, torch.arange(4)))
        assert abs(float(got) - want) < 1e-9


def test_itc_order_term_is_a_two_way_softmax_between_each_clip_and_its_reversal():
    from .test_contrastive import unit as unit64

    backwards = unit64(4, 3, 11)
    ctx = FakeContext(frames=4)
    ctx.image = lambda variant: variant
    ctx.model.itc_image = lambda enc: backwards if enc == "reversed" else None
    itc = objective("itc", reversed_clips=True, order_weight=0.5)
    assert itc.clip_logs() == ("order", "order/accuracy")
    out = itc.loss(ctx)
    t, v = ctx.itc()
    batch = float(F.cross_entropy(t @ torch.cat([v, backwards]).t() / 0.07, torch.arange(4)))
    batch += float(F.cross_entropy(v @ t.t() / 0.07, torch.arange(4)))
    own, rev = (
        [float(t[i] @ v[i]) / 0.07 for i in range(4)],
        [float(t[i] @ backwards[i]) / 0.07 for i in range(4)],
    )
    order = (
        sum(-math.log(math.exp(a) / (math.exp(a) + math.exp(b))) for a, b in zip(own, rev, strict=True)) / 4
    )
    assert abs(float(out["order"]) - order) < 1e-9
    assert abs(float(out["loss"]) - (batch + 0.5 * order)) < 1e-9
    assert float(out["order/accuracy"]) == sum(a > b for a, b in zip(own, rev, strict=True)) / 4
    # Still images have no order: no term, no keys.
    still = FakeContext(frames=1)
    out = itc.loss(still)
    assert "order" not in out and abs(float(out["loss"]) - reference(*still.itc(), 0.07)) < 1e-9
    assert objective("itc", reversed_clips=True).clip_logs() == ()
    with pytest.raises(ValueError, match=r"^objectives\.itc: order_weight needs reversed_clips = true"):
        validate_objectives({"itc": {"order_weight": 1.0}})


def test_itm_half_negatives_and_cross_entropy():
    torch.manual_seed(0)
    ctx = FakeContext(B=6)
    itm = objective("itm")
    itm.plan(ctx)
    text_variant, image_variant, index = ctx.requests["itm"]
    assert (text_variant, image_variant) == ("full", "full")
    assert int(itm.is_negative.sum()) == 3
    ar = torch.arange(6)
    assert torch.all((index == ar) == ~itm.is_negative)
    got = itm.loss(ctx)["loss"]
    logits = ctx.model.itm_logits(ctx.pooled("itm"))
    labels = [0 if neg else 1 for neg in itm.is_negative.tolist()]
    want = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(6)) / 6
    assert abs(float(got) - float(want)) < 1e-9


def test_itm_order_term_compares_each_positive_pair_with_its_clip_played_backwards():
    torch.manual_seed(0)
    ctx = FakeContext(B=6, frames=4)
    itm = objective("itm", order_weight=0.5)
    assert itm.encodings() == (("full",), ("full", "reversed"))
    assert itm.clip_logs() == ("order", "order/accuracy")
    itm.plan(ctx)
    assert ctx.requests["itm_reversed"] == ("full", "reversed", None)  # caption i with clip i backwards
    out = itm.loss(ctx)
    logits = ctx.model.itm_logits(ctx.pooled("itm"))
    back = ctx.model.itm_logits(ctx.pooled("itm_reversed"))
    labels = [0 if neg else 1 for neg in itm.is_negative.tolist()]
    base = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(6)) / 6
    own = [i for i in range(6) if labels[i]]
    odds = lambda z, i: float(z[i, 1] - z[i, 0])  # noqa: E731
    order = sum(-math.log(1 / (1 + math.exp(odds(back, i) - odds(logits, i)))) for i in own) / len(own)
    assert abs(float(out["order"]) - order) < 1e-9
    assert abs(float(out["loss"]) - (float(base) + 0.5 * order)) < 1e-9
    assert (
        abs(float(out["order/accuracy"]) - sum(odds(logits, i) > odds(back, i) for i in own) / len(own))
        < 1e-6
    )
    still = FakeContext(B=6, frames=1)
    itm.plan(still)
    assert "itm_reversed" not in still.requests and "order" not in itm.loss(still)


def test_itm_rank_term_is_a_softmax_over_each_captions_own_image_and_look_alikes():
    torch.manual_seed(0)
    ctx = FakeContext(B=6)
    g = torch.Generator().manual_seed(1)
    text_embeds, image_embeds = (
        torch.randn(6, 4, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 5, 8, generator=g, dtype=torch.float64),
    )
    ctx.text_embeds, ctx.image_embeds = (lambda v: text_embeds), (lambda v: image_embeds)
    ctx.text_mask = torch.ones(6, 4, dtype=torch.long)
    ctx.text_ids[3] = ctx.text_ids[0]  # caption 3 is caption 0 word for word: never a look-alike of it
    seen = []

    def fuse(texts, mask, images):
        seen.append((texts, images))
        return SimpleNamespace(text=texts, image=images)

    ctx.model.fuse, ctx.model.pooled = (
        fuse,
        lambda out, frames: torch.cat([out.text[:, 0], out.image[:, 0]], dim=1),
    )
    itm = objective("itm", rank_weight=0.5, rank_captions=2, rank_images=3)
    itm.plan(ctx)
    out = itm.loss(ctx)
    texts, images = seen[-1]
    # Two captions, three images each; a caption's own image first, then two others.
    rows_text = [int((text_embeds == t).all(dim=(1, 2)).nonzero()) for t in texts]
    rows_image = [int((image_embeds == i).all(dim=(1, 2)).nonzero()) for i in images]
    assert rows_text == [0, 0, 0, 1, 1, 1]
    assert rows_image[0] == 0 and rows_image[3] == 1
    assert 0 not in rows_image[1:3] and 3 not in rows_image[1:3] and 1 not in rows_image[4:6]
    assert len(set(rows_image[1:3])) == 2 and len(set(rows_image[4:6])) == 2  # without replacement
    pooled = torch.cat([texts[:, 0], images[:, 0]], dim=1)
    odds = (ctx.model.itm_logits(pooled)[:, 1] - ctx.model.itm_logits(pooled)[:, 0]).view(2, 3)
    rank = sum(-torch.log_softmax(odds[c], 0)[0] for c in range(2)) / 2
    logits = ctx.model.itm_logits(ctx.pooled("itm"))
    labels = [0 if neg else 1 for neg in itm.is_negative.tolist()]
    base = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(6)) / 6
    assert abs(float(out["rank"]) - float(rank)) < 1e-9
    assert abs(float(out["loss"]) - (float(base) + 0.5 * float(rank))) < 1e-9
    assert float(out["rank/accuracy"]) == sum(int(odds[c].argmax() == 0) for c in range(2)) / 2
    plain = objective("itm")
    plain.plan(ctx)
    assert "rank" not in plain.loss(ctx)


def test_negative_samplers_never_pick_the_sample_itself():
    torch.manual_seed(0)
    for _ in range(20):
        assert torch.all(random_other_index(5, torch.device("cpu")) != torch.arange(5))
        sim = torch.randn(5, 5) * 10
        assert torch.all(hard_other_index(sim) != torch.arange(5))


def test_hard_negatives_follow_similarity():
    torch.manual_seed(0)
    sim = torch.full((3, 3), -20.0)
    sim[0, 2] = sim[1, 0] = sim[2, 1] = 20.0
    assert hard_other_index(sim).tolist() == [2, 0, 1]


def test_mlm_mean_over_masked_tokens():
    ctx = FakeContext()
    got = objective("mlm").loss(ctx)["loss"]
    logits = ctx.model.mlm_logits(ctx.outputs["mlm"].text)
    terms = [
        -torch.log_softmax(logits[b, i], 0)[ctx.text_ids[b, i]]
        for b in range(ctx.batch_size) for i in range(ctx.text_ids.shape[1]) if ctx.mlm_mask.picked[b, i]
    ]  # fmt: skip
    assert abs(float(got) - float(sum(terms) / len(terms))) < 1e-9


def test_scl_global_formula_and_requests():
    ctx = FakeContext(frames=2)
    obj = objective("scl_global")
    obj.plan(ctx)
    assert ctx.requests["scl_masked_image"][:2] == ("full", "drop")
    assert ctx.requests["scl_masked_text"][:2] == ("scl", "full")
    got = obj.loss(ctx)["loss"]
    A, Bp = ctx.outputs["scl_masked_image"], ctx.outputs["scl_masked_text"]
    S = A.image.shape[1] // 2
    image_terms = [
        reference(unit(A.image[:, f * S]), unit(Bp.image[:, f * S]), 0.03) for f in range(2)
    ]  # per frame class token, averaged
    text_term = reference(unit(Bp.text[:, 0]), unit(A.text[:, 0]), 0.03)
    assert abs(float(got) - (sum(image_terms) / 2 + text_term)) < 1e-9


def test_scl_global_targets_carry_no_gradient():
    ctx = FakeContext()
    for out in ctx.outputs.values():
        out.text.requires_grad_(True)
        out.image.requires_grad_(True)
    objective("scl_global").loss(ctx)["loss"].backward()
    A, Bp = ctx.outputs["scl_masked_image"], ctx.outputs["scl_masked_text"]
    # predictions get gradient at their class tokens, targets none at all through the loss
    assert A.image.grad[:, 0].abs().sum() > 0 and Bp.text.grad[:, 0].abs().sum() > 0
    assert Bp.image.grad is None or Bp.image.grad.abs().sum() == 0
    assert A.text.grad is None or A.text.grad.abs().sum() == 0


def test_scl_local_formula():
    ctx = FakeContext()
    obj = objective("scl_local")
    obj.plan(ctx)
    assert ctx.requests["scl_masktok_image"][:2] == ("full", "masktok")
    got = obj.loss(ctx)["loss"]
    C, Bp, A = (
        ctx.outputs["scl_masktok_image"],
        ctx.outputs["scl_masked_text"],
        ctx.outputs["scl_masked_image"],
    )
    pos = ctx.image_positions
    pred = torch.cat([C.image[b, pos[b]] for b in range(ctx.batch_size)])
    target = torch.cat([Bp.image[b, pos[b]] for b in range(ctx.batch_size)])
    image_term = reference(unit(pred), unit(target), 0.03)
    words = ctx.scl_text_mask
    rows = [
        (b, int(p))
        for b in range(ctx.batch_size)
        for p, ok in zip(words.index[b], words.valid[b], strict=True)
        if ok
    ]
    pred = torch.stack([Bp.text[b, p] for b, p in rows])
    target = torch.stack([A.text[b, p] for b, p in rows])
    text_term = reference(unit(pred), unit(target), 0.03)
    assert abs(float(got) - (image_term + text_term)) < 1e-9
