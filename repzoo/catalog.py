"""What the zoo holds: names (with or without released weights), and what each variant is.

The registry knows the architectures, the manifest the released files; this module joins them
for [list_models][repzoo.catalog.list_models], [model_info][repzoo.catalog.model_info], the README's and
the docs' model tables, and the CLI.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import torch

from .registry import get_model_entry, model_names, name_alias
from .weights import manifest
from .weights.pretrained import pretrained_cfg

__all__ = ["list_models", "model_info", "count_params", "count_macs", "pretrained_tags", "weights_sources",
           "model_table", "family_tables"]


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


# --------------------------------------------------------------------------- the README's and the docs' tables


def weights_sources(name: str) -> str:
    """Where a model's released files come from, in a few words: ``HF (timm), Drive, by hand``; ``-`` for none
    (``repzoo info NAME`` lists each file's sources in full)."""
    import urllib.parse

    known = manifest.load_manifest()
    if not known.tags(name):
        return "-"
    kinds = []
    for rec in known.model(name).weights:
        for f in rec.files:
            for src in f.sources:
                kinds.append({"hf": f"HF ({src.location.split('/')[0]})", "gdrive": "Drive"}.get(
                    src.kind, urllib.parse.urlsplit(src.location).hostname))
            if not f.sources and f.manual:
                kinds.append("by hand")
    return ", ".join(dict.fromkeys(kinds))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def model_table(names: List[str]) -> str:
    """The README's model table: name, alias, family, parameters of both forms, pretrained tags."""
    rows = ["| model | alias | family | params (train) | params (deploy) | pretrained |",
            "|---|---|---|---:|---:|---|"]
    for name in names:
        entry = get_model_entry(name)
        tags = ", ".join(pretrained_tags(name)) or "-"
        rows.append(f"| {name} | `{entry.alias}` | {entry.family} | {_millions(count_params(name, False))} "
                    f"| {_millions(count_params(name, True))} | {tags} |")
    return "\n".join(rows)


#: the order of the families in the docs (the order the papers came out, the zoo's own story); others follow
FAMILY_ORDER = ("RepVGG", "RepVGGplus", "RepOpt-VGG", "RepGhostNet", "RepOpt-GhostNet", "OREPA", "RepMLPNet")


def _family_rank(family: str) -> tuple:
    return (FAMILY_ORDER.index(family), "") if family in FAMILY_ORDER else (len(FAMILY_ORDER), family)


def family_tables(names: List[str]) -> str:
    """The docs' model tables, one per family (a heading each, in the order the families first appear): the
    parameters of both forms, multiply-accumulates of the deploy form at the evaluation size, that size, the
    released top-1 (in parentheses: reported by the authors, no weights released) and where the weights come
    from, families in ``FAMILY_ORDER``. Six columns, so that a table fits a 1400-px window; the rest is
    ``repzoo info NAME``."""
    known = manifest.load_manifest()
    families: Dict[str, List[str]] = {}
    for name in names:
        families.setdefault(get_model_entry(name).family, []).append(name)
    parts = []
    for family, members in sorted(families.items(), key=lambda kv: _family_rank(kv[0])):
        rows = [f"### {family}", "",
                "| model | params (M) train → deploy | GMACs | input | top-1 | weights from |",
                "|---|---:|---:|---:|---:|---|"]
        for name in members:
            entry = get_model_entry(name)
            top1 = known.weights(name).top1 if known.tags(name) else None
            shown = f"{top1:.2f}" if top1 is not None else (
                f"({entry.reported['top1']:.2f})" if "top1" in entry.reported else "-")
            params = f"{count_params(name, False) / 1e6:.2f} → {count_params(name, True) / 1e6:.2f}"
            rows.append(f"| {name} | {params} "
                        f"| {count_macs(name) / 1e9:.2f} | {pretrained_cfg(name)['input_size'][1]} | {shown} "
                        f"| {weights_sources(name)} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)
