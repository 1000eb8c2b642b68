"""repzoo models under torch's own distributed engines: FSDP2 (``fully_shard``) and DDP.

Every family's stages are :class:`repzoo.models.base.Stage` modules that the model calls as a whole,
so the usual FSDP2 recipe — ``fully_shard`` on each stage (or block), then on the model — works on
any repzoo model; :func:`shard` is that recipe in one call. RepOptimizers take each parameter's
layout (a sharded parameter gets a sharded multiplier), so create the optimizer *after* sharding::

    model = repzoo.create_model("RepOpt-VGG-B1")
    repzoo.distributed.shard(model)                          # fully_shard per stage, then the root
    opt = repzoo.optim.create_repoptimizer(model, "RepOpt-VGG-B1")
    ...
    full = repzoo.distributed.full_state_dict(model)         # on every rank (collective); CPU tensors
    deploy = repzoo.create_model("RepOpt-VGG-B1", deploy=True, checkpoint_path=full)

Resumable checkpoints are torch's own: ``torch.distributed.checkpoint`` with
``get_state_dict`` / ``set_state_dict`` (see ``examples/train_distributed.py``); a job saved with N
processes resumes with any other number.
"""
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .models.base import Stage

__all__ = ["shard_units", "shard", "full_state_dict"]


def shard_units(model: nn.Module, per_block: bool = False) -> List[nn.Module]:
    """The modules to wrap before the root: every stage of ``model`` (or, ``per_block``, every block
    of every stage), outermost first."""
    stages = [m for m in model.modules() if isinstance(m, Stage)]
    if per_block:
        return [block for stage in stages for block in stage]
    return stages


def shard(model: nn.Module, *, mesh: Any = None, per_block: bool = False, **fsdp_kwargs) -> nn.Module:
    """``fully_shard`` each stage (or block) of ``model``, then ``model`` itself; returns ``model``.

    ``fsdp_kwargs`` go to ``torch.distributed.fsdp.fully_shard`` (``reshard_after_forward``,
    ``mp_policy`` …). Call it after ``torch.distributed.init_process_group``.
    """
    from torch.distributed.fsdp import fully_shard

    for unit in shard_units(model, per_block):
        fully_shard(unit, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


def full_state_dict(model: nn.Module, cpu_offload: bool = True) -> Dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a sharded or DDP-wrapped ``model``, on every rank.

    A collective call: every rank must make it. With ``cpu_offload`` the tensors are on the CPU.
    Load it with ``repzoo.create_model(name, checkpoint_path=...)`` — ``deploy=True`` converts it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner: Optional[nn.Module] = getattr(model, "module", None)
    target = inner if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return get_model_state_dict(target, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))
