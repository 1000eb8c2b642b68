"""What the zoo holds: names (with or without released weights), and what each variant is.

The registry knows the architectures, the manifest the released files; this module joins them
for :func:`list_models`, :func:`model_info`, the README table and the CLI.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import torch

from .registry import get_model_entry, model_names, name_alias
from .weights import manifest
from .weights.pretrained import pretrained_cfg

__all__ = ["list_models", "model_info", "count_params", "count_macs", "pretrained_tags"]


def pretrained_tags(name: str) -> List[str]:
    """Tags of the released weights of ``name`` (``in1k`` …), read from the manifest."""
    return manifest.load_manifest().tags(get_model_entry(name).name)


def list_models(pattern: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Canonical names, naturally sorted (``0.5x < 0.58x < 0.8x``, ``B1 < B1g2 < B2``).

    ``pattern`` is a shell wildcard, case-insensitive, matched against the canonical name and its
    alias; ``pretrained`` keeps the names with released weights.
    """
    names = model_names(pattern)
    return [n for n in names if pretrained_tags(n)] if pretrained else names


@functools.lru_cache(maxsize=None)
def count_params(name: str, deploy: bool) -> int:
    """Parameters of the train-time or deploy form, counted on the ``meta`` device (no memory)."""
    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=deploy)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def count_macs(name: str, deploy: bool = True, input_size: Optional[tuple] = None) -> int:
    """Multiply-accumulates of one image through the model (what the papers call FLOPs) at its evaluation
    size (or ``input_size``), counted by ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device."""
    from torch.utils.flop_counter import FlopCounterMode

    from .weights.pretrained import pretrained_cfg

    size = tuple(input_size or pretrained_cfg(name)["input_size"])
    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=deploy).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, *size))
    return counter.get_total_flops() // 2


def model_info(name: str) -> Dict[str, Any]:
    """What a variant is: family, paper, config, parameters of both forms, eval config, tags, and what its
    authors reported of it (``reported``: top-1, training memory and time, where they did)."""
    entry = get_model_entry(name)
    cfg = pretrained_cfg(entry.name)
    return {
        "name": entry.name,
        "alias": entry.alias,
        "family": entry.family,
        "paper": entry.paper,
        "config": dict(entry.config),
        "params_train": count_params(entry.name, False),
        "params_deploy": count_params(entry.name, True),
        "input_size": tuple(cfg["input_size"]),
        "macs_deploy": count_macs(entry.name, True),
        "pretrained_cfg": cfg,
        "pretrained_tags": pretrained_tags(entry.name),
        "hub_entry": name_alias(entry.name),
        "reported": dict(entry.reported),
    }
