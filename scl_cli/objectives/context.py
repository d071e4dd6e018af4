"""The shared passes of one pre-training step (DESIGN §1.4).

Objectives never call the encoders themselves. They ask the context for unimodal encodings
(computed once per variant and cached) and declare the fusion passes they need; the context
runs every declared fusion pass of the same shape in one batched call. With all objectives on,
a step runs the vision encoder three times (full, patch-dropped, mask-token), the text encoder
three times (full, MLM-masked, SCL-masked) and the fusion encoder twice (the dropped-patch pass,
and one call batching every full-length pass) — against about five full ViT passes per sample in
the paper's code.

Variants:
- image: "full", "drop" (MAE-style dropping, global SCL), "masktok" (mask tokens, local SCL),
  "reversed" (clips with their frames in reverse order: negatives that differ only in time)
- text: "full", "mlm" (15% BERT masking, `masking.mlm_selection`), "scl" (40% <mask>, global/local SCL)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from scl_cli.config.recipe import MaskingConfig
from scl_cli.distributed import rows_of_global_batch
from scl_cli.model.preprocess import to_model_input
from scl_cli.objectives import masking as M

if TYPE_CHECKING:
    from scl_cli.model import FusionOutput, ImageEncoding, SCLModel


@dataclass
class FusionRequest:
    text: str
    image: str
    # [B]: pair text i with image image_index[i] of the *global* batch (all ranks, rank order);
    # image_plan: the same for every row of the global batch, on the host (see rows_of_global_batch).
    image_index: torch.Tensor | None = None
    image_plan: torch.Tensor | None = None


class StepContext:
    """Per-step cache of encodings, masks and fusion outputs for one micro-batch.

    batch: `images` [B, T, 3, H, W] (uint8 pixels, normalised here on the device, or float already
    normalised), `text_ids` [B, L] int64, `text_mask` [B, L] (1 = token). `random` supplies every
    random draw of the step (masks, ITM negatives); by default one process's, seeded from the
    global torch RNG. `texts` / `images`: the variants the step's objectives declared
    (`Objective.encodings`); the first read of one encodes all declared variants of that modality
    (of that sequence length, for images) in one batched encoder call: fewer, larger kernels.
    """

    def __init__(
        self,
        model: SCLModel,
        batch: dict[str, torch.Tensor],
        masking: MaskingConfig,
        spec: M.TextSpec,
        random: M.StepRandom | None = None,
        texts: tuple[str, ...] = (),
        images: tuple[str, ...] = (),
    ):
        self.model = model
        self.batch = batch  # task fields (labels, targets, second images) for fine-tuning objectives
        self.masking = masking
        self.spec = spec
        self.images = to_model_input(batch["images"])
        self.text_ids = batch["text_ids"]
        self.text_mask = batch["text_mask"]
        self.batch_size, self.frames = self.images.shape[:2]
        self.device = self.images.device
        self.random = random or M.StepRandom.from_global_rng(self.device, self.batch_size)
        vcfg = model.config.vision
        self.patches = (vcfg.image_size // vcfg.patch_size) ** 2
        self._images: dict[str, ImageEncoding] = {}
        self._image_embeds: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}
        self._text_embeds: dict[str, torch.Tensor] = {}
        self._masks: dict[str, object] = {}
        self._requests: dict[str, FusionRequest] = {}
        self._fused: dict[str, FusionOutput] = {}
        self._itc: tuple[torch.Tensor, torch.Tensor] | None = None
        self._declared_texts = tuple(dict.fromkeys(texts))
        # Time-reversed clips exist only for clips; "drop" has its own sequence length.
        self._declared_images = tuple(v for v in dict.fromkeys(images) if v != "reversed" or self.frames > 1)

    # ------------------------------------------------------------------ masks (drawn once per step)
    @property
    def patch_drop(self) -> M.PatchDrop:
        if "drop" not in self._masks:
            self._masks["drop"] = M.drop_patches(
                self.batch_size,
                self.patches,
                self.masking.scl_image_drop,
                self.device,
                noise=self.random.uniform(self.patches, stream="drop"),
                rule=self.masking.patch_count,
            )
        return self._masks["drop"]  # type: ignore[return-value]

    @property
    def patch_mask(self) -> M.PatchMask:
        if "masktok" not in self._masks:
            self._masks["masktok"] = M.mask_patches(
                self.batch_size,
                self.patches,
                self.masking.scl_local_image_mask,
                self.device,
                noise=self.random.uniform(self.patches, stream="masktok"),
                rule=self.masking.patch_count,
            )
        return self._masks["masktok"]  # type: ignore[return-value]

    def text_noise(self, *shape: int, stream: str) -> torch.Tensor:
        """U[0, 1) [B, L, *shape] for a text mask, drawn at the model's full caption width and cut to
        the batch's: a batch padded only to its longest caption (`data.pad_to_multiple`) gets the
        masks it would have got padded to max_len."""
        full = max(self.model.config.text.max_len, self.text_ids.shape[1])
        return self.random.uniform(full, *shape, stream=stream)[:, : self.text_ids.shape[1]]

    @property
    def mlm_mask(self) -> M.TextMask:
        if "mlm" not in self._masks:
            m = self.masking
            self._masks["mlm"] = M.mask_words_for_mlm(
                self.text_ids, self.text_mask, self.spec, m.mlm_prob, m.mlm_whole_word,
                m.mlm_mask_share, m.mlm_random_share, noise=self.text_noise(3, stream="mlm"),
                selection=m.mlm_selection,
            )  # fmt: skip
        return self._masks["mlm"]  # type: ignore[return-value]

    @property
    def scl_text_mask(self) -> M.TextMask:
        if "scl" not in self._masks:
            self._masks["scl"] = M.mask_text_span(
                self.text_ids,
                self.text_mask,
                self.spec,
                self.masking.scl_text_mask,
                noise=self.text_noise(stream="scl"),
                with_replacement=self.masking.scl_text_sampling == "with_replacement",
            )
        return self._masks["scl"]  # type: ignore[return-value]

    def masked_image_positions(self) -> torch.Tensor:
        """[B, T*M] token positions (in the encoded clip) of the mask-token patches."""
        return M.frame_token_index(self.patch_mask.index, self.frames, self.patches)

    # ------------------------------------------------------------------ unimodal passes (cached)
    def image(self, variant: str = "full") -> ImageEncoding:
        if variant not in self._images:
            group = [variant] + [
                v for v in self._declared_images
                if v != variant and v not in self._images and (v == "drop") == (variant == "drop")
            ]  # fmt: skip
            with record_function(f"scl:vision:{'+'.join(group)}"):
                encoded = self._encode_images(group)
            self._images.update(zip(group, encoded, strict=True))
        return self._images[variant]

    def _encode_images(self, variants: list[str]) -> list[ImageEncoding]:
        """One vision pass over the batch repeated once per variant (all "drop", or none of them)."""
        if variants == ["drop"]:
            return [self.model.encode_image(self.images, keep_index=self.patch_drop.keep_index)]
        for v in variants:
            if v not in ("full", "masktok", "reversed"):
                raise KeyError(f"unknown image variant {v!r}")
        pixels = torch.cat([self.images.flip(1) if v == "reversed" else self.images for v in variants])
        token_mask = None
        if "masktok" in variants:
            none = torch.zeros_like(self.patch_mask.mask)
            token_mask = torch.cat([self.patch_mask.mask if v == "masktok" else none for v in variants])
        enc = self.model.encode_image(pixels, token_mask=token_mask)
        return [
            type(enc)(tokens, enc.frames, enc.tokens_per_frame)
            for tokens in enc.tokens.split(self.batch_size)
        ]

    def text(self, variant: str = "full") -> torch.Tensor:
        if variant not in self._texts:
            group = [variant] + [v for v in self._declared_texts if v != variant and v not in self._texts]
            with record_function(f"scl:text:{'+'.join(group)}"):
                ids = torch.cat([self.text_ids_of(v) for v in group])
                hidden = self.model.encode_text(ids, self.text_mask.repeat(len(group), 1))
            self._texts.update(zip(group, hidden.split(self.text_ids.shape[0]), strict=True))
        return self._texts[variant]

    def text_ids_of(self, variant: str) -> torch.Tensor:
        if variant == "full":
            return self.text_ids
        if variant == "mlm":
            return self.mlm_mask.ids
        if variant == "scl":
            return self.scl_text_mask.ids
        raise KeyError(f"unknown text variant {variant!r}")

    def image_embeds(self, variant: str) -> torch.Tensor:
        if variant not in self._image_embeds:
            self._image_embeds[variant] = self.model.embed_image(self.image(variant))
        return self._image_embeds[variant]

    def text_embeds(self, variant: str) -> torch.Tensor:
        if variant not in self._text_embeds:
            self._text_embeds[variant] = self.model.embed_text(self.text(variant))
        return self._text_embeds[variant]

    def itc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm ITC embeddings (text [B, E], image [B, E]) of the unmasked inputs."""
        if self._itc is None:
            self._itc = self.model.itc_embeddings(self.text("full"), self.text_mask, self.image("full"))
        return self._itc

    # ------------------------------------------------------------------ fusion passes
    def request_fusion(
        self,
        name: str,
        text: str = "full",
        image: str = "full",
        image_index: torch.Tensor | None = None,
        image_plan: torch.Tensor | None = None,
    ) -> None:
        """Declare a fusion pass; the same name declared twice must mean the same pass.

        `image_index` [B] pairs local text i with image `image_index[i]` of the global batch (in one
        process, the batch); `image_plan` is its host-side global version, which lets a
        distributed run fetch only the rows it needs (see `rows_of_global_batch`)."""
        req = FusionRequest(text, image, image_index, image_plan)
        old = self._requests.get(name)
        if old is not None:
            if (old.text, old.image) != (text, image) or old.image_index is not image_index:
                raise ValueError(f"fusion pass {name!r} requested twice with different inputs")
            return
        self._requests[name] = req

    def run_fusion(self) -> None:
        """Run all declared passes, one batched fusion call per image sequence length."""
        pending = [n for n in self._requests if n not in self._fused]
        groups: dict[int, list[str]] = {}
        for name in pending:
            groups.setdefault(self.image_embeds(self._requests[name].image).shape[1], []).append(name)
        for names in groups.values():
            texts, images = [], []
            for name in names:
                req = self._requests[name]
                img = self.image_embeds(req.image)
                if req.image_index is not None:
                    img = rows_of_global_batch(img, req.image_index, req.image_plan)
                texts.append(self.text_embeds(req.text))
                images.append(img)
            mask = self.text_mask.repeat(len(names), 1)
            with record_function(f"scl:fusion:{'+'.join(names)}"):
                out = self.model.fuse(torch.cat(texts), mask, torch.cat(images))
            for name, t, i in zip(
                names, out.text.split(self.batch_size), out.image.split(self.batch_size), strict=True
            ):
                self._fused[name] = type(out)(text=t, image=i)

    def fused(self, name: str) -> FusionOutput:
        if name not in self._fused:
            if name not in self._requests:
                raise KeyError(f"fusion pass {name!r} was not requested in plan()")
            self.run_fusion()
        return self._fused[name]

    def pooled(self, name: str) -> torch.Tensor:
        """[B, 2D] pooled features (`cls_feats`) of a fusion pass."""
        return self.model.pooled(self.fused(name), self.frames)
