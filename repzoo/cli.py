"""The ``repzoo`` command: list, info, convert, demo."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .errors import RepZooError

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    print(model_table(names) if args.markdown else "\n".join(names))
    return 0


def model_table(names: List[str]) -> str:
    """The README's model table: name, alias, family, parameters of both forms, pretrained tags."""
    from .registry import count_params, get_model_entry, pretrained_tags

    rows = ["| model | alias | family | params (train) | params (deploy) | pretrained |",
            "|---|---|---|---:|---:|---|"]
    for name in names:
        entry = get_model_entry(name)
        tags = ", ".join(pretrained_tags(name)) or "-"
        rows.append(f"| {name} | `{entry.alias}` | {entry.family} | {count_params(name, False) / 1e6:.2f}M "
                    f"| {count_params(name, True) / 1e6:.2f}M | {tags} |")
    return "\n".join(rows)


def _cmd_info(args: argparse.Namespace) -> int:
    from .registry import model_info

    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key in ("name", "alias", "family", "paper"):
        print(f"{key:15s} {info[key]}")
    print(f"{'params':15s} train {info['params_train']:,}  deploy {info['params_deploy']:,}")
    print(f"{'config':15s} {info['config']}")
    cfg = info["pretrained_cfg"]
    print(f"{'eval':15s} input {cfg['input_size']}, {cfg['interpolation']}, crop_pct {cfg['crop_pct']}, "
          f"mean {cfg['mean']}, std {cfg['std']}")
    print(f"{'pretrained':15s} {', '.join(info['pretrained_tags']) or '-'}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import save_state_dict
    from .factory import create_model
    from .reparam import conversion_error

    train = create_model(args.name, checkpoint_path=args.checkpoint)
    x = torch.randn(2, train.in_chans, *train.pretrained_cfg["input_size"][1:])
    err = conversion_error(train, x)
    if not err < 1e-9:
        raise RepZooError(f"conversion check failed: relative difference {err:.3g} on a random batch")
    deploy = create_model(args.name, checkpoint_path=args.checkpoint, deploy=True)
    save_state_dict(deploy.state_dict(), args.output)
    print(f"verified on a random batch (float64 relative difference {err:.2e}); wrote {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.name, batch_size=args.batch_size, image_size=args.image_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repzoo", description="Structurally re-parameterized networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list model names")
    p.add_argument("pattern", nargs="?", help="shell-style wildcard, e.g. 'RepVGG-B*'")
    p.add_argument("--pretrained", action="store_true", help="only models with released weights")
    p.add_argument("--markdown", action="store_true", help="a table with parameters and pretrained tags")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="what a model is")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert a train-time checkpoint to the deploy form")
    p.add_argument("name")
    p.add_argument("checkpoint", help="train-time checkpoint (.pth, .pth.tar, .safetensors)")
    p.add_argument("output", help="deploy weights: .safetensors or .pth")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("demo", help="build, convert, verify and time a model (offline)")
    p.add_argument("name", nargs="?", default="RepVGG-A0")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RepZooError as err:
        print(f"repzoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
