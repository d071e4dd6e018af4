"""TextTokenizer: RoBERTa special ids, fixed-length encoding, word starts, loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer, train_bpe_tokenizer
from scl_cli.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_root: Path) -> TextTokenizer:
    return load_tokenizer("dataset", tiny_root, "shapes")


def test_special_ids_are_roberta(tokenizer: TextTokenizer) -> None:
    ids = (tokenizer.cls_id, tokenizer.pad_id, tokenizer.sep_id, tokenizer.unk_id, tokenizer.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert [tokenizer.backend.id_to_token(i) for i in ids] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tokenizer.special_ids.tolist() == [0, 1, 2, 3, 4]
    assert 200 < tokenizer.vocab_size <= 1000


def test_encode_pads_to_max_len(tokenizer: TextTokenizer) -> None:
    ids, mask = tokenizer.encode(["a red circle.", "two shapes: a blue square and a green star."], max_len=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == torch.long
    assert (ids[:, 0] == tokenizer.cls_id).all()
    for row, m in zip(ids, mask, strict=True):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert row[n - 1] == tokenizer.sep_id and (row[n:] == tokenizer.pad_id).all()
    assert tokenizer.decode(ids[0].tolist()) == "a red circle."


def test_encode_truncates_keeping_the_closing_token(tokenizer: TextTokenizer) -> None:
    long = "a large red circle to the left of a small blue square " * 4
    ids, mask = tokenizer.encode([long], max_len=8)
    assert ids.shape == (1, 8) and mask.all()
    assert ids[0, 0] == tokenizer.cls_id and ids[0, -1] == tokenizer.sep_id
    assert tokenizer.decode(ids[0].tolist()) == "a large red circle to the"


def test_word_start_marks_first_pieces(tokenizer: TextTokenizer) -> None:
    assert tokenizer.word_start.shape == (tokenizer.vocab_size,) and tokenizer.word_start.dtype == torch.bool
    assert tokenizer.word_start[tokenizer.special_ids].all()
    for token_id in range(5, tokenizer.vocab_size):
        token = tokenizer.backend.id_to_token(token_id)
        assert bool(tokenizer.word_start[token_id]) == token.startswith("Ġ"), token
    # Every word, the first of a text included, starts with a word-start piece.
    ids, mask = tokenizer.encode(["circle squares xyzzy"], max_len=16)
    pieces = ids[0, 1 : int(mask.sum()) - 1]
    starts = tokenizer.word_start[pieces]
    assert starts[0] and int(starts.sum()) == 3


def test_training_is_deterministic() -> None:
    texts = ["a red circle above a blue square.", "two green stars.", "is there a red circle?", "yes"] * 20
    first, second = train_bpe_tokenizer(texts, 300), train_bpe_tokenizer(texts, 300)
    assert first.backend.to_str() == second.backend.to_str()


def test_save_and_load_by_file_and_folder(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "tokenizer.json")
    for spec in (str(tmp_path / "tokenizer.json"), str(tmp_path)):
        loaded = load_tokenizer(spec, tmp_path / "unused", "unused")
        assert loaded.vocab_size == tokenizer.vocab_size
        assert torch.equal(loaded.encode(["a star"], 6)[0], tokenizer.encode(["a star"], 6)[0])


def test_missing_tokenizers_name_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        DataError, match=r"nowhere/shapes/tokenizer.json: tokenizer missing — run `scl prepare"
    ):
        load_tokenizer("dataset", tmp_path / "nowhere", "shapes")
    with pytest.raises(DataError, match="tokenizer file missing"):
        load_tokenizer(str(tmp_path / "missing.json"), tmp_path, "shapes")
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path), tmp_path, "shapes")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not a readable tokenizer.json"):
        load_tokenizer(str(tmp_path / "broken.json"), tmp_path, "shapes")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match="'scl-test/no-such-tokenizer': not found .* local tokenizer.json path"
    ):
        load_tokenizer("scl-test/no-such-tokenizer", tmp_path, "shapes")


def test_collator_flags_are_what_the_4_6_collator_reads_in_token_strings() -> None:
    from tokenizers import Tokenizer, models

    from scl_cli.objectives.masking import TextSpec

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġplay", "##ing", "[CLS]", "[SEP]", "#", "x##"]
    tok = TextTokenizer(Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>")))
    assert tok.continuation.tolist() == [t.startswith("##") for t in tokens]
    assert tok.collator_skip.tolist() == [t in ("[CLS]", "[SEP]") for t in tokens]
    spec = TextSpec.from_tokenizer(tok, vocab_size=len(tokens) + 3)  # the model's vocabulary may be larger
    assert spec.continuation.tolist() == [t.startswith("##") for t in tokens] + [False] * 3
    # A byte-level BPE tokenizer has neither: the collator's candidates are single tokens.
    plain = train_bpe_tokenizer(["a red circle", "a blue square"] * 5, vocab_size=300)
    assert TextSpec.from_tokenizer(plain).continuation is None
