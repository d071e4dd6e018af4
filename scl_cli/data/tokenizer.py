"""Text tokenizer: a thin wrapper over a `tokenizers.Tokenizer` giving fixed-length id batches and
what masking needs (special ids, which tokens start a word).

Special tokens follow RoBERTa: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4 for the
tokenizers this project trains; hub tokenizers bring their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from scl_cli.data.manifests import dataset_location, parse_source
from scl_cli.errors import DataError
from scl_cli.io import remote

ROBERTA_SPECIALS = {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"}
# Order fixes the ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
SPECIAL_ORDER = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# Prefixes that mark a word's first piece: byte-level BPE ("Ġ") and SentencePiece ("▁").
_WORD_START_PREFIXES = ("Ġ", "▁")


class TextTokenizer:
    """Fixed-length encoding plus the vocabulary facts masking needs.

    Attributes: `vocab_size`, `pad_id`, `cls_id` (`<s>`), `sep_id` (`</s>`), `mask_id`, `unk_id`,
    `special_ids` (LongTensor [S]) and `word_start` (BoolTensor [vocab_size]: the token begins a
    word; special tokens count as word starts). A word is a word-start token followed by
    non-word-start tokens, which is what whole-word masking groups. `continuation` and
    `collator_skip` (BoolTensor [vocab_size]): tokens spelled "##..." and tokens spelled "[CLS]" /
    "[SEP]", what transformers 4.6's whole-word collator looks at (`masking.mlm_selection =
    "wwm_collator"`).
    """

    def __init__(self, backend: Tokenizer, specials: dict[str, str] | None = None, source: str = "") -> None:
        self.backend = backend
        self.source = source or "tokenizer"
        names = {**ROBERTA_SPECIALS, **(specials or {})}
        ids = {}
        for role, token in names.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise DataError(f"{self.source}: has no {role} token {token!r}")
            ids[role] = token_id
        self.cls_id, self.pad_id, self.sep_id = ids["cls"], ids["pad"], ids["sep"]
        self.unk_id, self.mask_id = ids["unk"], ids["mask"]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        specials_found = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        special_set = sorted({*ids.values(), *(backend.token_to_id(t) for t in specials_found)})
        self.special_ids = torch.tensor(special_set, dtype=torch.long)
        self.word_start = self._word_starts()
        self.continuation, self.collator_skip = self._collator_flags()
        self._encoders: dict[int, Tokenizer] = {}

    def _word_starts(self) -> torch.Tensor:
        model = self.backend.model
        continuing = (
            getattr(model, "continuing_subword_prefix", None) if isinstance(model, models.WordPiece) else None
        )
        starts = torch.zeros(self.vocab_size, dtype=torch.bool)
        for token_id in range(self.vocab_size):
            token = self.backend.id_to_token(token_id) or ""
            if continuing:
                starts[token_id] = not token.startswith(continuing)
            else:
                starts[token_id] = token.startswith(_WORD_START_PREFIXES)
        starts[self.special_ids] = True
        return starts

    def _collator_flags(self) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = [self.backend.id_to_token(i) or "" for i in range(self.vocab_size)]
        continuation = torch.tensor([t.startswith("##") for t in tokens], dtype=torch.bool)
        skip = torch.tensor([t in ("[CLS]", "[SEP]") for t in tokens], dtype=torch.bool)
        return continuation, skip

    def _encoder(self, max_len: int) -> Tokenizer:
        # A configured copy per length: the wrapped tokenizer (and what `save` writes) stays plain.
        if max_len not in self._encoders:
            encoder = Tokenizer.from_str(self.backend.to_str())
            encoder.enable_truncation(max_length=max_len)
            encoder.enable_padding(
                length=max_len, pad_id=self.pad_id, pad_token=self.backend.id_to_token(self.pad_id)
            )
            self._encoders[max_len] = encoder
        return self._encoders[max_len]

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both LongTensor [B, max_len].

        Every row starts with `<s>` and ends its text with `</s>` (kept when truncating), then
        `<pad>` up to `max_len`; the mask is 1 on real tokens.
        """
        if max_len < 3:
            raise ValueError(f"max_len must leave room for <s>, a token and </s>, got {max_len}")
        if not texts:
            empty = torch.zeros(0, max_len, dtype=torch.long)
            return empty, empty.clone()
        encodings = self._encoder(max_len).encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens).strip()

    def save(self, path: Path) -> None:
        """Write the tokenizer as a `tokenizer.json` file."""
        self.backend.save(str(path))

    def __getstate__(self) -> dict:
        # The per-length encoders are cheap to rebuild; keep what a worker process receives small.
        return {**self.__dict__, "_encoders": {}}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> TextTokenizer:
    """A byte-level BPE tokenizer with RoBERTa special tokens and post-processor, trained on `texts`.

    Every word gets the "Ġ" prefix (including the first of a text), so `word_start` is exact.
    Training is deterministic: the same texts give the same `tokenizer.json`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_ORDER),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=True,
    )
    return TextTokenizer(tokenizer, source="trained tokenizer")


def _from_url(url: str) -> TextTokenizer:
    text = remote.read_bytes(url).decode("utf-8", errors="replace")
    try:
        backend = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"{url}: not a readable tokenizer.json ({err})") from err
    return TextTokenizer(backend, source=url)


def _from_file(path: Path) -> TextTokenizer:
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"{path}: not a readable tokenizer.json ({err})") from err
    return TextTokenizer(backend, source=str(path))


def _from_hub(name: str) -> TextTokenizer:
    offline = any(
        os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    hint = "download it once while online, or pass a local tokenizer.json path (model.text.tokenizer)"
    try:
        from transformers import AutoTokenizer

        hub = AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=offline)
    except Exception as err:  # transformers raises OSError, ValueError or hub errors, all meaning "not here"
        raise DataError(f"tokenizer '{name}': not found locally or on the Hugging Face Hub — {hint}") from err
    backend = getattr(hub, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"tokenizer '{name}': has no fast (tokenizers) version — pass a tokenizer.json path")
    specials = {
        "cls": hub.cls_token or hub.bos_token,
        "sep": hub.sep_token or hub.eos_token,
        "pad": hub.pad_token,
        "unk": hub.unk_token,
        "mask": hub.mask_token,
    }
    missing = [role for role, token in specials.items() if token is None]
    if missing:
        raise DataError(f"tokenizer '{name}': lacks {', '.join(missing)} token(s) that pre-training needs")
    return TextTokenizer(backend, specials, source=name)  # type: ignore[arg-type]


def load_tokenizer(spec: str, data_root: Path | str, dataset: str) -> TextTokenizer:
    """The tokenizer a recipe names.

    `spec` is "dataset" (`data_root/dataset/tokenizer.json`, written by `scl prepare`; the data set
    may be behind a URL), a path to a tokenizer.json file or to a folder holding one, or a
    transformers hub name (needs the hub or its local cache). `DataError` with one line when it
    cannot be found.
    """
    if spec == "dataset":
        dataset = parse_source(dataset)[0]  # "shapes:clips" -> the shapes folder
        path = remote.join(dataset_location(data_root, dataset), "tokenizer.json")
        if remote.is_url(path):
            return _from_url(str(path))
        if not path.is_file():
            raise DataError(
                f"{path}: tokenizer missing — run `scl prepare {dataset} --out {data_root}` "
                "or set model.text.tokenizer to a tokenizer.json path"
            )
        return _from_file(path)
    if remote.is_url(spec):
        return _from_url(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"{path}: folder has no tokenizer.json — pass the file itself or another folder")
        return _from_file(path / "tokenizer.json")
    if path.is_file():
        return _from_file(path)
    if spec.endswith(".json") or spec.startswith(("/", "./", "../", "~")):
        raise DataError(f"{spec}: tokenizer file missing — check model.text.tokenizer")
    return _from_hub(spec)
