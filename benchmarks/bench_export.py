"""Deploy models in PyTorch eager vs onnxruntime vs torch.compile on the CPU — a benchmark, not a test.

    python benchmarks/bench_export.py                                   # RepVGG-A0 and RepVGG-B1, batch 1 and 8
    python benchmarks/bench_export.py --models RepVGG-A0 --batch-sizes 1 --seconds 2

Images/s of the deploy form (224x224, float32, the machine's threads) in one run: medians of timed
repetitions after warm-up. The ONNX file is written with ``repzoo.export`` (checked against PyTorch
first); ``torch.compile`` runs with the inductor backend where a C++ compiler is present.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import torch

import repzoo


def images_per_second(fn, x: torch.Tensor, seconds: float) -> float:
    for _ in range(3):
        fn(x)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return x.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="RepVGG-A0,RepVGG-B1")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import onnxruntime as ort

    compiler = shutil.which("c++") or shutil.which("gcc")
    results, work = [], tempfile.mkdtemp(prefix="repzoo_bench_export_")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, "
          f"torch.compile backend {'inductor' if compiler else 'eager (no C++ compiler)'}")
    for name in args.models.split(","):
        model = repzoo.create_model(name, deploy=True).eval()
        path = f"{work}/{name}.onnx"
        repzoo.export(model, path, input_size=(3, args.image_size, args.image_size))
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        compiled = torch.compile(model, backend="inductor" if compiler else "eager")
        for bs in map(int, args.batch_sizes.split(",")):
            x = torch.randn(bs, 3, args.image_size, args.image_size)
            with torch.no_grad():
                eager = images_per_second(model, x, args.seconds)
                onnx = images_per_second(lambda t, s=session: s.run(None, {"input": t.numpy()}), x, args.seconds)
                comp = images_per_second(compiled, x, args.seconds)
            row = dict(model=name, batch=bs, eager=eager, onnxruntime=onnx, compile=comp)
            results.append(row)
            print(f"{name:10s} batch {bs}: eager {eager:7.1f}  onnxruntime {onnx:7.1f} ({onnx / eager:.2f}x)  "
                  f"torch.compile {comp:7.1f} ({comp / eager:.2f}x) images/s")
    shutil.rmtree(work)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
