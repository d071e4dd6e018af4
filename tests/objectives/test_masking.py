"""Masks: fixed counts, only non-special positions, whole words, same patches for every frame."""

import torch

from scl_cli.objectives import masking as M

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
