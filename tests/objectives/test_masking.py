"""Masks: fixed counts, only non-special positions, whole words, same patches for every frame."""

import random

import pytest
import torch

from scl_cli.objectives import masking as M

from . import hf_wwm_collator_4_6_0 as hf_wwm

SPECIALS = torch.tensor([0, 1, 2, 3, 4])  # <s> <pad> </s> <unk> <mask>


def spec(vocab=50, word_start=None):
    ws = torch.ones(vocab, dtype=torch.bool) if word_start is None else word_start
    return M.TextSpec(vocab, pad_id=1, mask_id=4, special_ids=SPECIALS, word_start=ws)


def captions(lengths, L=12, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (len(lengths), L), generator=g)
    pos = torch.arange(L)[None]
    lengths = torch.tensor(lengths)[:, None]
    ids[:, 0] = 0
    ids = torch.where(pos == lengths - 1, torch.full_like(ids, 2), ids)
    mask = (pos < lengths).long()
    return torch.where(mask.bool(), ids, torch.full_like(ids, 1)), mask


def test_drop_patches_keeps_fixed_count_sorted():
    torch.manual_seed(0)
    d = M.drop_patches(4, 36, 0.8, torch.device("cpu"))
    assert d.keep_index.shape == (4, 36 - round(0.8 * 36))
    assert torch.all(d.keep_index[:, 1:] > d.keep_index[:, :-1])


def test_mask_patches_exact_count_and_index_agree():
    torch.manual_seed(0)
    m = M.mask_patches(3, 20, 0.3, torch.device("cpu"))
    assert torch.all(m.mask.sum(1) == 6)
    assert torch.equal(m.mask.gather(1, m.index), torch.ones(3, 6, dtype=torch.bool))


def test_scl_text_mask_only_non_special_and_40_percent():
    torch.manual_seed(0)
    ids, att = captions([12, 7, 4, 3])
    out = M.mask_text_span(ids, att, spec(), 0.4)
    maskable = att.bool() & ~torch.isin(ids, SPECIALS)
    assert not torch.any(out.picked & ~maskable)
    n = maskable.sum(1).float()
    assert torch.equal(out.picked.sum(1), (n * 0.4).round().clamp(min=1).long())
    assert torch.all(out.ids[out.picked] == 4)
    assert torch.equal(out.ids[~out.picked], ids[~out.picked])
    # the fixed-width index lists exactly the picked positions where valid
    listed = torch.zeros_like(out.picked)
    listed.scatter_(1, out.index, out.valid)
    assert torch.equal(listed, out.picked)


def test_mlm_never_masks_special_or_padding():
    torch.manual_seed(1)
    ids, att = captions([12, 9, 5, 12] * 50)
    out = M.mask_words_for_mlm(ids, att, spec(), 0.5)
    special = ~att.bool() | torch.isin(ids, SPECIALS)
    assert not torch.any(out.picked & special)
    assert torch.equal(out.ids[special], ids[special])


def test_mlm_80_10_10_split_and_rate():
    torch.manual_seed(2)
    ids, att = captions([12] * 2000)
    out = M.mask_words_for_mlm(ids, att, spec(), 0.15, whole_word=False)
    picked = out.picked
    rate = picked.sum() / (att.bool() & ~torch.isin(ids, SPECIALS)).sum()
    assert 0.13 < rate < 0.17
    masked = (out.ids == 4) & picked
    assert 0.77 < masked.sum() / picked.sum() < 0.83
    unchanged = (out.ids == ids) & picked
    assert 0.07 < unchanged.sum() / picked.sum() < 0.14  # 10% kept (+ random draws equal to the id)


def test_mlm_whole_words_are_picked_together():
    torch.manual_seed(3)
    vocab = 50
    word_start = torch.ones(vocab, dtype=torch.bool)
    word_start[30:] = False  # ids >= 30 continue the previous word
    ids, att = captions([12] * 300, vocab=vocab, seed=3)
    out = M.mask_words_for_mlm(ids, att, spec(vocab, word_start), 0.3)
    cont = (ids >= 30) & att.bool() & ~torch.isin(ids, SPECIALS)
    prev_picked = torch.cat([torch.zeros_like(out.picked[:, :1]), out.picked[:, :-1]], 1)
    prev_maskable = torch.cat(
        [torch.zeros_like(cont[:, :1]), (att.bool() & ~torch.isin(ids, SPECIALS))[:, :-1]], 1
    )
    inside = cont & prev_maskable
    assert torch.equal(out.picked[inside], prev_picked[inside])


def test_frame_token_index_same_patch_every_frame():
    idx = torch.tensor([[0, 5], [3, 7]])
    pos = M.frame_token_index(idx, frames=3, patches=9)
    assert pos.tolist() == [[1, 6, 11, 16, 21, 26], [4, 8, 14, 18, 24, 28]]


# ----------------------------------------------------------------------------- the paper's code's masks
# (IIGROUP/SCL at cd0d819; `masking.patch_count = "floor"`, `scl_text_sampling = "with_replacement"`,
# `mlm_selection = "wwm_collator"`, all set by recipes/base.toml)


def test_patch_counts_follow_the_released_random_masking_and_mvm_masking():
    # clip_model.py: random_masking keeps int(L * (1 - mask_ratio)); mvm_masking masks int(L * mask_ratio).
    for patches in (16, 36, 196, 324, 576):
        assert M.kept_patch_count(patches, 0.8, "floor") == max(1, int(patches * (1 - 0.8)))
        assert M.masked_patch_count(patches, 0.3, "floor") == max(1, int(patches * 0.3))
        assert M.kept_patch_count(patches, 0.8) == patches - round(0.8 * patches)
        assert M.masked_patch_count(patches, 0.3) == round(0.3 * patches)
    assert (M.kept_patch_count(324, 0.8, "floor"), M.kept_patch_count(324, 0.8)) == (64, 65)  # 288 px
    assert (M.masked_patch_count(576, 0.3, "floor"), M.masked_patch_count(576, 0.3)) == (172, 173)  # 384 px
    d = M.drop_patches(3, 324, 0.8, torch.device("cpu"), rule="floor")
    assert d.keep_index.shape == (3, 64)
    m = M.mask_patches(3, 576, 0.3, torch.device("cpu"), rule="floor")
    assert torch.all(m.mask.sum(1) == 172)


def released_scl_text_mask(lengths: torch.Tensor, u: torch.Tensor, ratio: float) -> torch.Tensor:
    """objectives.py compute_scl, with np.random.randint(1, n + 1, size) written as 1 + floor(u * n)
    on the same uniforms: int((len - 2) * ratio) + 1 positions with replacement, none if len <= 2."""
    picked = torch.zeros(u.shape, dtype=torch.bool)
    for i, length in enumerate(lengths.tolist()):
        n = length - 2
        if length > 2:
            for j in range(int(n * ratio) + 1):
                picked[i, 1 + int(float(u[i, j]) * n)] = True
    return picked


def test_scl_text_mask_with_replacement_is_the_released_draw():
    torch.manual_seed(4)
    lengths = [2, 3, 4, 7, 12, 12, 5, 9] * 50
    ids, att = captions(lengths, L=12)
    u = torch.rand(ids.shape)
    out = M.mask_text_span(ids, att, spec(), 0.4, noise=u, with_replacement=True)
    assert torch.equal(out.picked, released_scl_text_mask(torch.tensor(lengths), u, 0.4))
    assert torch.all(out.ids[out.picked] == 4) and torch.equal(out.ids[~out.picked], ids[~out.picked])
    # index / valid list the distinct picked positions (what local SCL contrasts), width int(10 * 0.4) + 1
    assert out.index.shape == (len(lengths), 5)
    listed = torch.zeros_like(out.picked)
    listed.scatter_(1, out.index, out.valid)
    assert torch.equal(listed, out.picked)
    assert torch.equal(out.valid.sum(1), out.picked.sum(1))


def test_scl_text_mask_with_replacement_counts():
    torch.manual_seed(5)
    n, rows = 10, 4000
    ids, att = captions([n + 2] * rows, L=n + 2)
    out = M.mask_text_span(ids, att, spec(), 0.4, with_replacement=True)
    draws = int(n * 0.4) + 1  # 5 draws; without replacement round(0.4 * 10) = 4 distinct
    distinct = out.picked.sum(1).float()
    assert distinct.max() == draws and distinct.min() >= 1
    expected = n * (1 - (1 - 1 / n) ** draws)  # 4.095 distinct positions on average
    assert abs(distinct.mean().item() - expected) < 0.05
    assert abs((distinct < draws).float().mean().item() - (1 - 0.9 * 0.8 * 0.7 * 0.6)) < 0.03  # some repeat
    assert not out.picked[:, 0].any() and not out.picked[:, -1].any()


class FakeTokenizer:
    """What the 4.6.0 collator reads from RoBERTa's tokenizer, over a small vocabulary of strings."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.all_special_ids = [0, 1, 2, 3, 4]
        self._pad_token, self.pad_token_id, self.mask_token, self.padding_side = "<pad>", 1, "<mask>", "right"

    def _convert_id_to_token(self, index: int) -> str:
        return self.tokens[index]

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.tokens.index(token)

    def get_special_tokens_mask(self, ids: list[int], already_has_special_tokens: bool = False) -> list[int]:
        return [1 if i in self.all_special_ids else 0 for i in ids]

    def __len__(self) -> int:
        return len(self.tokens)


def collator_vocab(pieces: bool) -> list[str]:
    """RoBERTa's specials, 'Ġ'-words and word-internal BPE pieces; with `pieces`, also '##' pieces and
    tokens spelled '[CLS]' / '[SEP]' (ordinary ids, not special ones) to exercise the collator's rules."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokens += [f"Ġw{i}" for i in range(30)] + [f"p{i}" for i in range(15)]
    if pieces:
        tokens += [f"##x{i}" for i in range(12)] + ["[CLS]", "[SEP]"]
    return tokens


def collator_batch(vocab: int, rows: int, L: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions padded to L (as the paper's code pads them), full-length, 1-word and random lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = [L, 3, L // 2] + torch.randint(3, L + 1, (rows - 3,), generator=g).tolist()
    return captions(lengths, L=L, vocab=vocab, seed=seed)


@pytest.mark.parametrize(
    "pieces", [False, True], ids=["roberta-like", "with ## pieces and [CLS]/[SEP] strings"]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlm_wwm_collator_equals_transformers_4_6_collator(pieces, seed, monkeypatch):
    tokens = collator_vocab(pieces)
    tok = FakeTokenizer(tokens)
    V, rows, L = len(tokens), 64, 50
    ids, att = collator_batch(V, rows, L, seed)
    # The collator shuffles with Python's `random`; record each row's candidate order.
    orders: list[list[int]] = []
    rng = random.Random(seed)

    class Recording:
        @staticmethod
        def shuffle(x: list) -> None:
            rng.shuffle(x)
            orders.append([group[0] for group in x])

    monkeypatch.setattr(hf_wwm, "random", Recording)
    torch.manual_seed(100 + seed)
    want = hf_wwm.DataCollatorForWholeWordMask(tok, mlm_probability=0.15)([list(r) for r in ids.tolist()])
    # The same draws as uniforms: candidate order -> noise at each candidate's first position; the
    # collator's bernoulli(0.8), bernoulli(0.5), randint(V) -> replacement kind and random token.
    torch.manual_seed(100 + seed)
    replaced = torch.bernoulli(torch.full((rows, L), 0.8)).bool()
    randomised = torch.bernoulli(torch.full((rows, L), 0.5)).bool()
    words = torch.randint(V, (rows, L))
    noise = torch.zeros(rows, L, 3)
    for r, order in enumerate(orders):
        for k, start in enumerate(order):
            noise[r, start, 0] = (k + 0.5) / len(order)
    noise[..., 1] = torch.where(replaced, 0.4, torch.where(randomised, 0.85, 0.95))
    noise[..., 2] = (words + 0.5) / V
    s = spec(V)
    s = M.TextSpec(
        V, 1, 4, SPECIALS, s.word_start,
        torch.tensor([t.startswith("##") for t in tokens]) if pieces else None,
        torch.tensor([t in ("[CLS]", "[SEP]") for t in tokens]) if pieces else None,
    )  # fmt: skip
    out = M.mask_words_for_mlm(ids.clone(), att, s, 0.15, noise=noise, selection="wwm_collator")
    assert torch.equal(out.picked, want["labels"] != -100)
    assert torch.equal(out.ids, want["input_ids"])
    if pieces:  # the rules were exercised: some picked candidate spans two or more tokens
        cont = torch.isin(ids, torch.arange(50, 62))
        assert (out.picked[:, 1:] & out.picked[:, :-1] & cont[:, 1:]).any()


def test_mlm_wwm_collator_picks_round_015_of_the_padded_length_before_dropping():
    # RoBERTa: 8 candidate positions of 50 (round(7.5) = 8 in Python), <s>, </s> and padding
    # included; on average 8 x (real words) / 50 of a caption's words are MLM targets.
    torch.manual_seed(6)
    ids, att = captions([12] * 4000, L=50)
    chosen = M.collator_candidates(ids, spec(), 0.15, torch.rand(ids.shape))
    assert torch.all(chosen.sum(1) == 8)
    out = M.mask_words_for_mlm(ids, att, spec(), 0.15, selection="wwm_collator")
    assert abs(out.picked.sum(1).float().mean().item() - 8 * 10 / 50) < 0.05
    assert not torch.any(out.picked & ~att.bool()) and not out.picked[:, 0].any()
