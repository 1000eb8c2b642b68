"""RepVGG inference benchmark — not a test.

Measures, in one run:
  * images/s of the train-time vs the deploy form, and repzoo's deploy form vs timm's own ``repvgg_*``
    after timm's ``reparameterize_model`` (``repzoo.bench.run_bench``: the three interleaved, same input,
    same threads; the same code as ``repzoo bench --no-train --no-load``);
  * ``import repzoo`` time on top of ``import torch`` (median of fresh interpreters).

    python benchmarks/bench_repvgg.py                          # CPU, float32, RepVGG-A0 and RepVGG-B1
    python benchmarks/bench_repvgg.py --device cuda --bf16 --channels-last --batch-size 128
"""
import argparse
import json
import statistics
import subprocess
import sys


def import_time(repeats: int = 7) -> dict:
    def run(code: str) -> float:
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)

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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from repzoo.bench import markdown, run_bench

    report = run_bench(args.models, device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                       bf16=args.bf16, channels_last=args.channels_last, repeats=args.repeats, train=False,
                       load=False)
    print(markdown(report))
    report.update(import_time())
    print(f"import torch {report['import_torch_s']:.3f} s; import repzoo on top "
          f"{report['import_repzoo_over_torch_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
