"""The ``repzoo`` command: list, info, convert, export, bench, demo, download, cache, predict, validate, train, data."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .cli_support import (Parser, check_image_size, device, existing_file, existing_folder, fraction,
                          non_negative_float, non_negative_int, positive_float, positive_int, run_command)
from .errors import RepZooError

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from .catalog import family_tables, list_models, model_table

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        which = " with released weights" if args.pretrained else ""
        raise RepZooError(f"No model{which} matches {args.pattern!r}: patterns are shell wildcards "
                          f"('RepVGG-B*', '*ghost*'); `repzoo list` shows every name.")
    if args.full:
        print(family_tables(names))
    else:
        print(model_table(names) if args.markdown else "\n".join(names))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .catalog import model_info

    info = model_info(args.name)
    if args.json:
        info["weights"] = _weights_report(info["name"])
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key in ("name", "alias", "family", "paper"):
        print(f"{key:15s} {info[key]}")
    print(f"{'params':15s} train {info['params_train']:,}  deploy {info['params_deploy']:,}")
    print(f"{'config':15s} {info['config']}")
    print(f"{'MACs':15s} {info['macs_deploy'] / 1e9:.2f} G (deploy form, at {info['input_size'][1]}x{info['input_size'][2]})")
    cfg = info["pretrained_cfg"]
    print(f"{'eval':15s} input {cfg['input_size']}, {cfg['interpolation']}, crop_pct {cfg['crop_pct']}, "
          f"mean {cfg['mean']}, std {cfg['std']}")
    print(f"{'pretrained':15s} {', '.join(info['pretrained_tags']) or '-'}")
    if info["reported"]:
        print(f"{'reported':15s} {_reported_line(info['reported'])}")
    _print_weights(_weights_report(info["name"]))
    return 0


def _reported_line(reported: dict) -> str:
    """``top-1 72.13, training: 5.2 GB GPU memory, 0.120 s per batch (setting)``."""
    parts = [f"top-1 {reported['top1']:.2f}"] if "top1" in reported else []
    cost = [f"{reported['train_gpu_memory_gb']} GB GPU memory" if "train_gpu_memory_gb" in reported else "",
            f"{reported['train_time_per_batch_s']:.3f} s per batch" if "train_time_per_batch_s" in reported else ""]
    if any(cost):
        parts.append("training: " + ", ".join(c for c in cost if c))
    return ", ".join(parts) + (f" ({reported['setting']})" if "setting" in reported else "")


def _cmd_convert(args: argparse.Namespace) -> int:
    import os

    import torch

    from .factory import create_model
    from .registry import get_model_entry
    from .reparam import conversion_error
    from .weights.checkpoint import output_format, read_state_dict, save_state_dict

    output_format(args.output)  # before any work: an extension repzoo writes
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise RepZooError(f"The output folder {out_dir} does not exist: create it first, or write elsewhere.")
    if os.path.exists(args.output) and os.path.exists(args.checkpoint) and os.path.samefile(args.output, args.checkpoint):
        raise RepZooError(f"{args.output} is the input checkpoint: write the deploy weights to another file.")
    name = get_model_entry(args.name).name
    state = read_state_dict(args.checkpoint, checkpoint_key=args.checkpoint_key)
    _refuse_a_deploy_checkpoint(name, state, args.checkpoint)
    num_classes = args.num_classes  # None: the checkpoint's own head
    train = create_model(name, checkpoint_path=state, num_classes=num_classes)
    x = torch.randn(2, train.in_chans, *train.pretrained_cfg["input_size"][1:])
    err = conversion_error(train, x)
    if not err < 1e-9:
        raise RepZooError(f"conversion check failed: relative difference {err:.3g} on a random batch")
    deploy = create_model(name, checkpoint_path=state, deploy=True, num_classes=num_classes)
    save_state_dict(deploy.state_dict(), args.output)
    print(f"verified on a random batch (float64 relative difference {err:.2e}); wrote {args.output}")
    return 0


def _refuse_a_deploy_checkpoint(name: str, state, path: str) -> None:
    """`repzoo convert` of a file that is already in deploy form: say so, with what to do with it instead."""
    import torch

    from .registry import get_model_entry
    from .weights.adapters import adapt_state_dict, detect_key_style
    from .weights.checkpoint import checkpoint_form

    with torch.device("meta"):
        model = get_model_entry(name).builder(deploy=True)
    if checkpoint_form(model, adapt_state_dict(state, detect_key_style(state, name), name)) == "deploy":
        raise RepZooError(f"{path} is already in deploy (converted) form: there is nothing to convert. Use it as "
                          f"it is, e.g. `repzoo export {name} --deploy --checkpoint {path}`.")


def _cmd_export(args: argparse.Namespace) -> int:
    import os

    from .factory import create_model
    from .integrations.export import FORMATS, export
    from .registry import get_model_entry

    if args.pretrained and args.checkpoint:
        raise RepZooError("Pass --pretrained or --checkpoint, not both.")
    name = get_model_entry(args.name).name
    check_image_size(name, args.image_size)
    model = create_model(name, pretrained=args.pretrained, checkpoint_path=args.checkpoint, deploy=args.deploy,
                         num_classes=args.num_classes)
    output = args.output or f"{name}{'-deploy' if args.deploy else ''}{FORMATS[args.format]}"
    size = None
    if args.image_size:
        size = (model.in_chans, args.image_size, args.image_size)
    report = export(model, output, format=args.format, input_size=size, batch_size=args.batch_size)
    print(report)
    if args.deploy and report.conv_nodes is not None and report.conv_nodes != report.conv_layers:
        for written in report.files:
            os.remove(written)
        raise RepZooError(f"the exported graph has {report.conv_nodes} convolutions for {report.conv_layers} layers")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import markdown, plot, run_bench
    from .catalog import list_models

    names = [n for pattern in args.models.split(",") for n in (list_models(pattern) if any(c in pattern for c in "*?[")
                                                             else [pattern])]
    if not names:
        raise RepZooError(f"No model matches {args.models!r}: `repzoo list` shows every name.")
    for name in names:
        check_image_size(name, args.image_size)
    if args.runtimes or args.fastest:  # the deploy paths, verified, each timed in its own process
        from .deploy import run_cli

        return run_cli(args, names)
    report = run_bench(names, device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                       bf16=args.bf16, channels_last=args.channels_last, threads=args.threads, repeats=args.repeats,
                       train=not args.no_train, load=not args.no_load, progress=not args.quiet)
    table = markdown(report)
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.plot:
        print(f"plot: {plot(report, args.plot)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_image_size(args.name, args.image_size)
    run_demo(args.name, batch_size=args.batch_size, image_size=args.image_size)
    return 0


def _weights_report(name: str) -> list:
    """For `repzoo info`: every tag's files with sources, size, sha256 and cache state."""
    from .weights import cache
    from .weights.manifest import load_manifest

    manifest = load_manifest()
    if not manifest.tags(name):
        return []
    model = manifest.model(name)
    return [dict(tag=w.tag, top1=w.top1, eval=w.eval.as_pretrained_cfg(), license=w.license, paper=w.paper,
                 note=w.note, deploy_cache=[str(p) for p in cache.deploy_files(model.name, w.tag)],
                 files=[dict(file_name=f.file_name, form=f.form, key_style=f.key_style, size=f.size, sha256=f.sha256,
                             sources=[s.describe() for s in f.sources], manual=[str(m) for m in f.manual],
                             **cache.file_state(f)) for f in w.files])
            for w in model.weights]


def _print_weights(report: list) -> None:
    for w in report:
        top1 = f"top-1 {w['top1']}%" if w["top1"] is not None else "top-1 not published"
        ev = w["eval"]
        print(f"weights {w['tag']}: {top1}; eval {ev['input_size'][1]}px {ev['interpolation']} "
              f"crop_pct {ev['crop_pct']}; license {w['license'] or 'not stated'}")
        for i, f in enumerate(w["files"], 1):
            size = f"{f['size']:,} bytes" if f["size"] else "size unknown"
            print(f"  file {i}: {f['file_name']} ({f['form']} form, {f['key_style']} keys, {size})")
            print(f"    sha256    {f['sha256'] or 'unknown (recorded at the first download)'}")
            for s in f["sources"]:
                print(f"    source    {s}")
            for m in f["manual"]:
                print(f"    by hand   {m}")
            state = f"cached at {f['cached']}" if f["cached"] else "not cached"
            if f["hf_cache"]:
                state += f"; in the Hugging Face cache at {f['hf_cache']}"
            print(f"    cache     {state}")
            if f["recorded_sha256"]:
                print(f"    recorded  sha256 {f['recorded_sha256']}")
        for p in w["deploy_cache"]:
            print(f"  deploy cache: {p}")


def _cmd_download(args: argparse.Namespace) -> int:
    from .weights.pretrained import download

    path = download(args.name, tag=args.tag, deploy=args.deploy, progress=False if args.quiet else None)
    print(path)
    return 0


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    from .weights.cache import inventory
    from .weights.files import cache_dir

    entries = inventory()
    print(f"repzoo cache: {cache_dir()}")
    for e in entries:
        about = (f"sha256 {e['sha256'] or 'not recorded'}" if e["kind"] == "file"
                 else f"(deploy form of {e['model']} {e['tag']}, from {e['source_file']})")
        print(f"  {e['name']}  {_human(int(e['size']))}  {about}")
    files = sum(e["kind"] == "file" for e in entries)
    print(f"{files} files, {len(entries) - files} deploy files, {_human(sum(int(e['size']) for e in entries))}")
    return 0


def _cmd_cache_rm(args: argparse.Namespace) -> int:
    from .weights.cache import remove

    removed = remove(args.target)
    if not removed:
        print(f"repzoo: error: nothing cached for {args.target!r} (see `repzoo cache ls`)", file=sys.stderr)
        return 1
    for name in removed:
        print(f"removed {name}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .factory import create_model

    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    model = create_model(args.model, pretrained=True, deploy=True, tag=args.tag).eval()
    transform = create_transform(**resolve_data_config(model=model))
    names = ImageNetInfo() if model.num_classes == 1000 else None
    for path in args.images:
        x = _read_image(path, transform)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(min(args.top_k, probs.numel()))
        print(f"{path}:")
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            label = names.index_to_description(i) if names else f"class {i}"
            print(f"  {rank}. {p:.4f}  {label}  [{i}]")
    return 0


def _read_image(path: str, transform):
    """The transformed image, or a :class:`RepZooError` (unreadable, or so large it looks like a bomb)."""
    from PIL import Image

    from .train.data import decode_image

    try:
        return transform(decode_image(path)).unsqueeze(0)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RepZooError(f"Refused image {path!r}: {err} Pass a photo of ordinary size "
                          f"(at most {Image.MAX_IMAGE_PIXELS:,} pixels).") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise RepZooError(f"Cannot read image {path!r} ({err}). Pass JPEG/PNG files.") from None


def _cmd_validate(args: argparse.Namespace) -> int:
    from .train import validate

    check_image_size(args.model, args.image_size)
    result = validate(args.model, args.data, checkpoint=args.checkpoint, pretrained=args.pretrained,
                      deploy=args.deploy, both_forms=args.both_forms, num_classes=args.num_classes,
                      class_map=args.class_map, batch_size=args.batch_size, workers=args.workers,
                      image_size=args.image_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
                      bf16=args.bf16, channels_last=args.channels_last, device=args.device,
                      on_bad_image=args.on_bad_image, progress=not args.quiet)
    print(result.to_json() if args.json else result)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    check_image_size(args.model, args.image_size)
    overrides = dict(warmup_epochs=args.warmup_epochs, smoothing=args.smoothing, mixup=args.mixup, cutmix=args.cutmix,
                     hflip=args.hflip, weight_decay=args.weight_decay, clip_grad=args.clip_grad, ema_decay=args.ema,
                     scale=tuple(args.scale) if args.scale else None, auto_augment=args.auto_augment)
    summary = train(args.model, args.data, args.output, recipe=args.recipe, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, image_size=args.image_size, workers=args.workers,
                    pretrained=args.pretrained, checkpoint=args.checkpoint, scales=args.scales,
                    resume=not args.no_resume, seed=args.seed, bf16=args.bf16, channels_last=args.channels_last,
                    amp=args.amp, compile=args.compile, fsdp=args.fsdp, device=args.device,
                    on_bad_image=args.on_bad_image, progress=not args.quiet, cache_images=args.cache_images,
                    **overrides)
    if summary["rank"] != 0:  # under torchrun: the main process reports
        return 0
    print(f"{summary['model']}: best val top-1 {summary['best_top1']:.2f}, final {summary['final_top1']:.2f}, "
          f"deploy form {summary['deploy_top1']:.2f} ({summary['deploy']}, {summary['seconds']:.0f} s)")
    if "scales" in summary:
        print(f"scales: {summary['scales']}")
    return 0


def _cmd_data_digits(args: argparse.Namespace) -> int:
    from .train import write_digits_folder

    counts = write_digits_folder(args.output, size=args.image_size, seed=args.seed)
    print(f"wrote {counts['train']} train and {counts['val']} val images ({args.image_size} px) to "
          f"{args.output}/train and {args.output}/val")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = Parser(prog="repzoo", description="Structurally re-parameterized networks.")
    parser.add_argument("--version", action="version", version=f"repzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list model names")
    p.add_argument("pattern", nargs="?", help="shell-style wildcard, e.g. 'RepVGG-B*'")
    p.add_argument("--pretrained", action="store_true", help="only models with released weights")
    p.add_argument("--markdown", action="store_true", help="a table with parameters and pretrained tags")
    p.add_argument("--full", action="store_true", help="the docs' tables, per family: also MACs, input size, top-1, "
                   "sources")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="what a model is")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert a train-time checkpoint to the deploy form")
    p.add_argument("name")
    p.add_argument("checkpoint", type=existing_file, help="train-time checkpoint (.pth, .pth.tar, .safetensors)")
    p.add_argument("output", help="deploy weights: .safetensors or .pth")
    p.add_argument("--num-classes", type=non_negative_int, default=None,
                   help="classifier size (default: the checkpoint's own, e.g. 100 for a Hyper-Search model)")
    p.add_argument("--checkpoint-key", default=None, help="the wrapper to read (model_ema, state_dict_ema, …)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="export a model to ONNX, TorchScript, torch.export or OpenVINO, checked before it is kept")
    p.add_argument("name")
    p.add_argument("--format", choices=["onnx", "torchscript", "exported", "openvino"], default="onnx")
    p.add_argument("--deploy", action="store_true", help="export the converted (plain) form")
    p.add_argument("--checkpoint", type=existing_file, default=None, help="weights to export (any supported format)")
    p.add_argument("--pretrained", action="store_true", help="the released weights")
    p.add_argument("--num-classes", type=non_negative_int, default=None,
                   help="classifier size (default: the checkpoint's own)")
    p.add_argument("--output", default=None, help="default: <name>[-deploy].onnx / .pt / .pt2 / .xml (+ .bin)")
    p.add_argument("--image-size", type=positive_int, default=None, help="example input size (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="measure inference, training, conversion and warm loads of models")
    p.add_argument("--models", default="RepVGG-A0,RepVGG-B1,RepOpt-VGG-B1", help="comma-separated names or wildcards")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps (one that exists here)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--image-size", type=positive_int, default=None, help="default: each model's evaluation size")
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights and inputs (autocast for training)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurements")
    p.add_argument("--no-load", action="store_true", help="skip the warm pretrained-load measurements")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--markdown", default=None, help="write the table here")
    p.add_argument("--plot", default=None, help="a PNG of released top-1 vs deploy images/s (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--runtimes", default=None, help="deploy paths to verify and time side by side (all: every one; "
                   "eager,channels_last,compile,bf16,compile-bf16,int8,onnxruntime,onnxruntime-int8,openvino)")
    p.add_argument("--fastest", action="store_true", help="say which verified deploy path is fastest (all paths "
                   "unless --runtimes)")
    p.add_argument("--batch-sizes", default="1,16", help="with --runtimes / --fastest: batch sizes (default 1,16)")
    p.add_argument("--rounds", type=positive_int, default=3, help="with --runtimes: interleaved rounds")
    p.add_argument("--checkpoint", type=existing_file, default=None, help="with --runtimes: trained weights")
    p.add_argument("--images", type=existing_folder, default=None, help="with --runtimes: an image folder "
                   "(<split>/<class>/...) to verify on (default: the digits)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="build, convert, verify and time a model (offline)")
    p.add_argument("name", nargs="?", default="RepVGG-A0")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--image-size", type=positive_int, default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("download", help="fetch and verify a model's released weights (and convert with --deploy)")
    p.add_argument("name")
    p.add_argument("--tag", default=None, help="pretrained tag (default: the first, see `repzoo info NAME`)")
    p.add_argument("--deploy", action="store_true", help="also convert once and keep the deploy weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("cache", help="list or remove cached weights")
    cache = p.add_subparsers(dest="cache_command", required=True)
    c = cache.add_parser("ls", help="list the cached files and deploy files")
    c.set_defaults(func=_cmd_cache_ls)
    c = cache.add_parser("rm", help="remove a model's files, a file, or a deploy file")
    c.add_argument("target", metavar="NAME_OR_FILE")
    c.set_defaults(func=_cmd_cache_rm)

    p = sub.add_parser("predict", help="classify images with a pretrained model (deploy form)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True)
    p.add_argument("--tag", default=None)
    p.add_argument("--top-k", type=positive_int, default=5)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("validate", help="top-1 / top-5 / loss of a model on an image folder (class sub-folders)")
    p.add_argument("data", type=existing_folder, help="a folder with one sub-folder of images per class")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", type=existing_file, default=None, help="weights (any format repzoo reads)")
    p.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                   help="the released weights (optionally a tag)")
    p.add_argument("--deploy", action="store_true", help="evaluate the converted (plain) form")
    p.add_argument("--both-forms", action="store_true", help="the train form and its conversion; count differing "
                   "predictions")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="the head's size (default: the checkpoint's, or the number of class folders)")
    p.add_argument("--class-map", type=existing_file, default=None, help="a file of class names, one per line")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the model's evaluation size")
    p.add_argument("--crop-pct", type=fraction, default=None)
    p.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], default=None)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--on-bad-image", choices=["stop", "skip"], default="stop",
                   help="a file that is not a readable image: stop with an error, or leave it out and count it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="train a model on an image folder (train/, val/) with its authors' recipe")
    p.add_argument("data", type=existing_folder, help="a folder with train/<class>/ and val/<class>/")
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True, help="checkpoints, metrics, the deploy weights (resumes from here)")
    p.add_argument("--recipe", default=None, help="a recipe name (default: the model's family's)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None, help="for the recipe's base batch (scaled linearly)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="per process (global: x the processes)")
    p.add_argument("--image-size", type=positive_int, default=None)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--warmup-epochs", type=non_negative_float, default=None)
    p.add_argument("--weight-decay", type=non_negative_float, default=None)
    p.add_argument("--smoothing", type=non_negative_float, default=None)
    p.add_argument("--mixup", type=non_negative_float, default=None)
    p.add_argument("--cutmix", type=non_negative_float, default=None)
    p.add_argument("--hflip", type=non_negative_float, default=None)
    p.add_argument("--scale", type=fraction, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="RandomResizedCrop's area range")
    p.add_argument("--auto-augment", default=None, help="timm's auto-augment string, e.g. rand-m9-mstd0.5")
    p.add_argument("--clip-grad", type=non_negative_float, default=None)
    p.add_argument("--ema", type=non_negative_float, default=None, help="EMA decay (0: off)")
    p.add_argument("--pretrained", action="store_true", help="start from the released weights (a new head)")
    p.add_argument("--checkpoint", type=existing_file, default=None, help="start from these weights")
    p.add_argument("--scales", default=None, help="a RepOpt target's scale file (default: the released scales)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT/last.pth exists")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--amp", action="store_true", help="mixed precision: bfloat16 (float16 + GradScaler on GPUs without)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--device", type=device, default=None, help="default: this process's GPU if any, else the CPU")
    p.add_argument("--on-bad-image", choices=["stop", "skip"], default="stop")
    p.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=None,
                   help="keep decoded images in the loaders' memory (default: when a copy per worker fits in 1 GiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("data", help="write a real small image set as an image folder")
    data = p.add_subparsers(dest="data_command", required=True)
    c = data.add_parser("digits", help="scikit-learn's 1,797 handwritten digits as OUTPUT/train and OUTPUT/val")
    c.add_argument("output")
    c.add_argument("--image-size", type=positive_int, default=32)
    c.add_argument("--seed", type=non_negative_int, default=0)
    c.set_defaults(func=_cmd_data_digits)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``repzoo ARGV``; the exit code (errors are one ``repzoo: error: ...`` line, see cli_support)."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
