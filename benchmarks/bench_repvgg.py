"""RepVGG inference benchmark (issue 3) — not a test.

Measures, in one run:
  * images/s of the train-time vs the deploy form (RepVGG-A0, RepVGG-B1);
  * repzoo's deploy form vs timm's own ``repvgg_a0`` / ``repvgg_b1`` after timm's
    ``reparameterize_model`` (same input, same threads);
  * ``import repzoo`` time on top of ``import torch`` (median of fresh interpreters).

    python benchmarks/bench_repvgg.py                          # CPU, float32
    python benchmarks/bench_repvgg.py --device cuda --bf16 --channels-last --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def images_per_second(model, x, min_time: float, warmup: int, sync) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync()
        n, start = 0, time.perf_counter()
        while True:
            model(x)
            n += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and n >= 3:
                return n * x.shape[0] / elapsed


def import_time(repeats: int = 7) -> dict:
    def run(code: str) -> float:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        return float(out)

    base = "import time; t = time.perf_counter(); import torch; t1 = time.perf_counter(); "
    torch_t = [run(base + "print(t1 - t)") for _ in range(repeats)]
    extra = [run(base + "import repzoo; print(time.perf_counter() - t1)") for _ in range(repeats)]
    return {"import_torch_s": statistics.median(torch_t), "import_repzoo_over_torch_s": statistics.median(extra)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["RepVGG-A0", "RepVGG-B1"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import timm
    from timm.utils.model import reparameterize_model

    import repzoo
    from repzoo.demo import randomize_bn

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def prep(model):
        return model.eval().to(device=device, dtype=dtype, memory_format=fmt)

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    results = {"device": str(device), "dtype": str(dtype), "channels_last": args.channels_last,
               "batch_size": args.batch_size, "image_size": args.image_size, "threads": torch.get_num_threads()}
    for name in args.models:
        torch.manual_seed(0)
        train = randomize_bn(repzoo.create_model(name)).eval()
        deploy = repzoo.reparameterize(repzoo.create_model(name, checkpoint_path=train.state_dict()))
        timm_model = reparameterize_model(timm.create_model(repzoo.get_model_entry(name).alias, pretrained=False))
        speeds = {}
        for label, model in (("train", train), ("deploy", deploy), ("timm_deploy", timm_model)):
            speeds[label] = images_per_second(prep(model), x, args.min_time, 3, sync)
        speeds["deploy_over_train"] = speeds["deploy"] / speeds["train"]
        speeds["deploy_over_timm"] = speeds["deploy"] / speeds["timm_deploy"]
        results[name] = speeds
        print(f"{name}: train {speeds['train']:.1f} img/s, deploy {speeds['deploy']:.1f} img/s "
              f"({speeds['deploy_over_train']:.2f}x), timm deploy {speeds['timm_deploy']:.1f} img/s "
              f"(repzoo/timm {speeds['deploy_over_timm']:.2f}x)", flush=True)
    results.update(import_time())
    print(f"import torch {results['import_torch_s']:.3f} s; import repzoo on top "
          f"{results['import_repzoo_over_torch_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
