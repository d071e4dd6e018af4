"""Data parallelism for the training step: DDP or FSDP2, and checkpoint I/O that works for both.

DDP runs with `find_unused_parameters=False`: what the step can never reach is frozen before
wrapping (`training.freeze`), and DDP errors loudly if a later step uses a parameter differently.

FSDP2 (`fully_shard`) shards every ViT block, RoBERTa layer and fusion layer, then the step
module as the root (its `forward` is what the trainer calls, so the root's parameters — embeddings,
projections, heads — are gathered there). Checkpoints stay full, unsharded state dicts written by
rank 0 (`ShardedStateIO`), so a model trained with FSDP loads anywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from scl_cli.config.recipe import TopologyConfig
from scl_cli.training.runtime import Runtime


# ----------------------------------------------------------------------------- wrapping
def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated layers of an SCLModel: ViT blocks, RoBERTa layers, fusion layers. FSDP shards
    them one by one; `torch.compile` compiles them one by one (one graph serves every layer of a
    kind, so compiling is quick and the three ViT passes' sequence lengths share it)."""
    layers: list[nn.Module] = list(model.vision.blocks)
    layers += list(model.text.encoder.layer)
    layers += list(model.fusion.text_layers) + list(model.fusion.image_layers)
    return layers


def wrap_data_parallel(step_module: nn.Module, model: nn.Module, topology: TopologyConfig, runtime: Runtime):
    """Wrap the step module for `topology.strategy` when the run has several processes.

    Returns (module the trainer calls, StateIO for checkpoints). Build the optimizer after this:
    FSDP replaces the parameters by sharded ones.
    """
    if not runtime.distributed:
        return step_module, StateIO()
    if topology.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
        policy = MixedPrecisionPolicy()
        if runtime.precision != "fp32":
            dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float16
            # Gather parameters in 16 bit, reduce gradients in fp32: the usual FSDP mix.
            policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in transformer_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        # FSDP2 cannot shard 0-d parameters (the ITC temperature): they stay replicated, and their
        # gradients are averaged over ranks by a hook, as DDP would.
        scalars = {p for p in step_module.parameters() if p.ndim == 0}
        for p in scalars:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_average_grad)
        fully_shard(step_module, mesh=mesh, mp_policy=policy, ignored_params=scalars or None)
        return step_module, ShardedStateIO(step_module, prefix="model.")
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The only buffers are RoBERTa's constant position ids: no need to sync them every forward.
    sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    wrapped = DistributedDataParallel(
        step_module,
        device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no extra copy
        **{sync: False},
    )
    return wrapped, StateIO()


def _average_grad(param: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(param.grad)
    param.grad /= dist.get_world_size()


# ----------------------------------------------------------------------------- checkpoint I/O
class StateIO:
    """How checkpoints read and write the model and optimizer state: plain state dicts, for one
    process or DDP (every rank holds everything)."""

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The full model state dict to save, or None for `model.state_dict()`. Call on every rank."""
        return None

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """What to save of the optimizer. Call on every rank."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def load_model_state(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """A full state dict into the (wrapped) model, e.g. when a run rolls back. Every rank."""
        from scl_cli.io.checkpoints import load_model_weights

        load_model_weights(model, state_dict)


class ShardedStateIO(StateIO):
    """FSDP2: full (unsharded) state dicts gathered to CPU, keyed by parameter name, so rank 0
    writes an ordinary checkpoint. Saving is a collective: every rank calls it."""

    def __init__(self, root: nn.Module, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix

    def _options(self, **extra):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **extra)

    def model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.root, options=self._options(cpu_offload=True))
        n = len(self.prefix)
        return {k[n:]: v for k, v in full.items() if k.startswith(self.prefix)}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.root, optimizer, options=self._options(cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.root, optimizer, state, options=self._options())

    def load_model_state(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        full = {self.prefix + k: v for k, v in state_dict.items()}
        set_model_state_dict(self.root, full, options=self._options())
