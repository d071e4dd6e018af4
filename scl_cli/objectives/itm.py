"""Image-text matching: binary match on the pooled fusion features, half positives, half negatives.

Negatives reuse the step's unimodal encodings: the text keeps its place and the image is taken
from another sample, either at random (the paper) or in proportion to the ITC similarity (ALBEF's
hard negatives, `negatives = "hard"`). No extra image is loaded or encoded.

`order_weight` > 0 adds, on clip batches, a time-order term for the fusion: over the positive
pairs, each caption's match log-odds on its clip against on the clip played backwards, a two-way
softmax (the ITC option's twin, see objectives.itc): random and in-batch negatives almost never
differ from a clip only in the order of its frames. It costs one more fusion pass of B pairs per
clip step.

`rank_weight` > 0 adds an image-ranking term: for the first `rank_captions` captions of the
local batch, a softmax of the match log-odds over `rank_images` images, the caption's own and
look-alikes drawn without replacement in proportion to the ITC similarity (like the hard
negatives; a caption's word-for-word twins are left out, they match it). Re-ranking an ITC
shortlist asks the fusion to order similar images for one caption; one random image per caption
teaches that slowly, and the paper's hard negatives as ITM labels kept ITM at ln 2 on the shapes
data. It costs one fusion pass of C x K pairs per step (64 by default). An scl option, not in
the paper. Unlike the ITM pairs it is per process, as the fine-tuning rank loss is: each process
ranks its own first C captions among its own images, so N processes rank N x C captions.

Across processes the choice is made over the *global* batch, with the step's shared random
draws (`StepRandom`), so a run on N processes picks exactly the pairs one process would on the
same global batch. Random negatives are planned on the host, so each process fetches only the
B/2 image-token rows it needs from the others (one all-to-all, traffic independent of the
number of processes). Hard negatives depend on the similarities, which live on the device; they
all-gather the fusion image inputs instead (as BLIP does), which costs O(world) traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scl_cli.config.objectives import ITMSettings
from scl_cli.distributed import gather_no_grad
from scl_cli.objectives.context import StepContext
from scl_cli.objectives.contrastive import at_least_fp32, order_loss, similarity
from scl_cli.objectives.registry import LossOutput, Objective


def random_other_index(
    batch: int, device: torch.device | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B] for each i a uniformly drawn j != i."""
    shift = torch.randint(1, max(batch, 2), (batch,), device=device, generator=generator)
    return (torch.arange(batch, device=device) + shift) % batch


def hard_other_index(
    similarity: torch.Tensor, noise: torch.Tensor | None = None, offset: int = 0
) -> torch.Tensor:
    """For each row i of similarity [B, N] a column j != offset + i (the row's own sample) drawn
    with probability proportional to softmax(similarity_i) + 1e-5. Sampled as an exponential
    race on `noise` (U[0, 1) [B, N], fresh when None): argmax_j w_j / -log(u_j) — so a row's draw
    depends only on its own noise row, whatever the batch split. [B] column indices."""
    return look_alike_indices(similarity, 1, noise, offset)[:, 0]


def look_alike_indices(
    similarity: torch.Tensor, count: int, noise: torch.Tensor | None = None, offset: int = 0,
    avoid: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """`count` distinct columns per row drawn without replacement as `hard_other_index` draws one
    (the exponential race's top `count`): [B, count]. Columns `avoid` marks ([B, N] bool) come
    last, drawn only when nothing else is left; the row's own column never."""
    rows, cols = similarity.shape
    weights = (similarity.float().softmax(dim=1) + 1e-5).log()
    if avoid is not None:
        weights = weights.masked_fill(avoid, -1e4)
    own = torch.arange(rows, device=weights.device)[:, None] + offset
    weights = weights.scatter(1, own, float("-inf"))
    if noise is None:
        noise = torch.rand(rows, cols, device=weights.device)
    return (weights - (-noise.log()).log()).topk(count, dim=1).indices


class ITM(Objective):
    name = "itm"
    Settings = ITMSettings
    settings: ITMSettings

    def encodings(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("full",), ("full", "reversed") if self.settings.order_weight else ("full",)

    def clip_logs(self) -> tuple[str, ...]:
        return ("order", "order/accuracy") if self.settings.order_weight else ()

    def plan(self, ctx: StepContext) -> None:
        rnd, B, device = ctx.random, ctx.batch_size, ctx.device
        N, offset = rnd.global_rows, rnd.rank * B
        # Exactly half of the global batch's pairs are negatives, at random places.
        negative = torch.randperm(N, generator=rnd.host) < N // 2
        self.is_negative = rnd.local(negative).to(device, non_blocking=True)
        plan = None
        if self.settings.negatives == "hard":
            text, image = ctx.itc()
            with torch.no_grad():
                scores = similarity(text, gather_no_grad(image), ctx.model.itc_temperature)
                other = hard_other_index(scores, rnd.uniform(N, stream="itm"), offset)
            own = torch.arange(B, device=device) + offset
            index = torch.where(self.is_negative, other, own)
        else:
            plan = torch.where(negative, random_other_index(N, generator=rnd.host), torch.arange(N))
            index = rnd.local(plan).to(device, non_blocking=True)
        ctx.request_fusion("itm", text="full", image="full", image_index=index, image_plan=plan)
        if self.settings.order_weight and ctx.frames > 1:
            ctx.request_fusion("itm_reversed", text="full", image="reversed")

    def loss(self, ctx: StepContext) -> LossOutput:
        logits = ctx.model.itm_logits(ctx.pooled("itm"))
        labels = (~self.is_negative).long()
        accuracy = (logits.argmax(dim=1) == labels).to(torch.float32).mean()
        out = {"loss": F.cross_entropy(logits, labels), "accuracy": accuracy.detach()}
        if self.settings.order_weight and ctx.frames > 1:
            # The positive rows hold each caption with its own clip; the pass above scored them already.
            backward = ctx.model.itm_logits(ctx.pooled("itm_reversed"))
            order, accuracy = order_loss(
                match_log_odds(logits), match_log_odds(backward), keep=~self.is_negative
            )
            out["loss"] = out["loss"] + self.settings.order_weight * order
            out |= {"order": order.detach(), "order/accuracy": accuracy}
        if self.settings.rank_weight:
            rank, accuracy = self._rank_images(ctx)
            out["loss"] = out["loss"] + self.settings.rank_weight * rank
            out |= {"rank": rank.detach(), "rank/accuracy": accuracy}
        return out

    def _rank_images(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over K images per caption (its own first, then K - 1 look-alikes of the
        local batch drawn without replacement in proportion to the ITC similarity, captions word
        for word the same left out) of the match log-odds, for the first C captions."""
        B, device = ctx.batch_size, ctx.device
        C, K = min(self.settings.rank_captions, B), min(self.settings.rank_images, B)
        text, image = ctx.itc()
        with torch.no_grad():
            scores = similarity(text[:C], image, ctx.model.itc_temperature).float()
            same = (ctx.text_ids[:C, None, :] == ctx.text_ids[None]).all(dim=-1)
            noise = ctx.random.uniform(B, stream="itm_rank")[:C]
            others = look_alike_indices(scores, K - 1, noise, avoid=same)
        images = torch.cat([torch.arange(C, device=device)[:, None], others], dim=1).flatten()
        texts = torch.arange(C, device=device).repeat_interleave(K)
        model = ctx.model
        # index_select, not x[idx]: the backward of advanced indexing is not deterministic on CPU
        text_rows = ctx.text_embeds("full").index_select(0, texts)
        image_rows = ctx.image_embeds("full").index_select(0, images)
        fused = model.fuse(text_rows, ctx.text_mask.index_select(0, texts), image_rows)
        odds = match_log_odds(model.itm_logits(model.pooled(fused, ctx.frames))).view(C, K)
        target = torch.zeros(C, dtype=torch.long, device=device)
        return F.cross_entropy(odds, target), (odds.argmax(dim=1) == 0).float().mean().detach()


def match_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """[B, 2] ITM logits (no match, match) -> [B] log-odds of a match, in at least fp32."""
    logits = at_least_fp32(logits)
    return logits[:, 1] - logits[:, 0]
