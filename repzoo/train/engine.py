"""Where ``repzoo train`` runs: one process, or the processes of a ``torchrun`` launch (DDP, or FSDP2 with ``fsdp``).

Everything about the process group lives here: it is initialized from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``) with gloo on CPUs and nccl on GPUs, and
destroyed when the run ends, also on an error (a group the caller initialized is left to the caller). The
model is wrapped by torch's own engines: ``DistributedDataParallel``, or :func:`repzoo.distributed.shard`
(``fully_shard`` per stage, then the root). Checkpoints hold the *full* model and optimizer state keyed by
parameter name (torch's ``get_state_dict`` with ``full_state_dict``), so a file written by N processes
resumes in any other number, one included.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from ..errors import RepZooError

__all__ = ["Engine", "torchrun_world_size"]


def torchrun_world_size() -> Optional[int]:
    """The ``WORLD_SIZE`` of a torchrun launch this process is part of, or None outside one."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


class Engine:
    """The rank, the world size and the device of this process, and the collectives the loop needs."""

    def __init__(self, *, fsdp: bool = False, device: Optional[str] = None):
        import torch
        import torch.distributed as dist

        self.fsdp, self.owns_group = fsdp, False
        world = torchrun_world_size()
        self.distributed = dist.is_available() and (dist.is_initialized() or world is not None)
        cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.distributed and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owns_group = True
        if fsdp and not self.distributed:
            raise RepZooError("--fsdp shards the model over the processes of a torchrun launch: run "
                              "`torchrun --nproc_per_node N -m repzoo train ... --fsdp` (or leave out --fsdp).")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if device is not None:
            self.device = torch.device(device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        self.main = self.rank == 0

    # ------------------------------------------------------------------ the model under the engine
    def wrap(self, model):
        """The module the training steps call: ``model`` itself, DDP around it, or ``model`` sharded in place."""
        import torch

        if not self.distributed:
            return model
        if self.fsdp:
            from ..distributed import shard

            return shard(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _options(self, full: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # cpu_offload with full_state_dict: only rank 0 receives the tensors (it alone writes files)
        return StateDictOptions(full_state_dict=full, cpu_offload=full)

    def state(self, model, optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The full model and optimizer state dicts (a collective under FSDP; empty on ranks other than 0)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        return get_state_dict(model, optimizer, options=self._options(True))

    def load(self, model, optimizer, model_state: Dict[str, Any], optim_state: Dict[str, Any]) -> None:
        """Load full state dicts (every rank holds them) into ``model`` and ``optimizer``, resharded as they are."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ collectives (no-ops in one process)
    def sum(self, values: List[float]) -> List[float]:
        """``values`` summed over the processes."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def sync_buffers(self, model) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank: each process's own batches moved its
        own, and the checkpoint and the evaluation take rank 0's."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def _collective_device(self):
        import torch

        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        """Destroy the process group this engine initialized (idempotent)."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False
