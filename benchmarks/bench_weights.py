"""Warm-cache pretrained deploy load (issue 4) — a benchmark, not a test.

``create_model(NAME, pretrained=True, deploy=True)`` from a warm cache (the source file in the
repzoo cache with its recorded hash, and its deploy file in ``<cache>/deploy/``; no network)
against ``safetensors.torch.load_file`` of the same deploy file alone. Each measurement runs in
a fresh interpreter; wall time is the call alone (after the imports), peak RSS is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the call minus the same before it (the
interpreter + torch baseline). Goals: time ratio <= 1.5, RSS above baseline <= 1.5x the bytes
of the weights.

    python benchmarks/bench_weights.py                      # RepVGG-B3, 5 runs each
    python benchmarks/bench_weights.py --model RepVGG-A0 --runs 3 --home /tmp/rz_bench

The cache is filled with generated (random) weights in the official training format; nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    mode, name, path = sys.argv[1:4]
    import repzoo, repzoo.models, repzoo.weights, repzoo.hub  # the interpreter + library baseline
    from safetensors.torch import load_file
    torch.set_num_threads(1)

    def call():
        if mode == "load_file":
            return list(load_file(path).values())
        return list(repzoo.create_model(name, pretrained=True, deploy=True).state_dict().values())

    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    before = rss()
    t = time.perf_counter()
    tensors = call()
    first = time.perf_counter() - t
    after_call = rss()
    t = time.perf_counter()
    total = sum(float(v.max()) for v in tensors)  # reads every byte (as a forward pass does), no copies
    touch = time.perf_counter() - t
    after_touch = rss()
    del tensors
    t = time.perf_counter()
    tensors = call()
    second = time.perf_counter() - t
    print(json.dumps(dict(first=first, touch=touch, second=second, rss_before=before, rss_call=after_call - before,
                          rss_touch=after_touch - before, checksum=total)))
    """
)


def prepare(name: str, home: str) -> str:
    """Fill ``home`` with a generated train checkpoint (+ recorded hash) and its deploy file; the deploy path."""
    os.environ["REPZOO_HOME"] = home
    os.environ["REPZOO_OFFLINE"] = "1"
    os.environ.pop("REPZOO_MIRROR", None)
    import torch

    import repzoo
    from repzoo.hub import cache_path, cached_file
    from repzoo.manifest import load_manifest
    from repzoo.weights import download

    rec = load_manifest().weights(name).files[0]
    target = cache_path(rec.file_name)
    if not target.exists():
        print(f"generating a random {name} training checkpoint at {target} ...", flush=True)
        model = repzoo.create_model(name)
        torch.save({"model": model.state_dict(), "epoch": 0}, f"{target}.tmp")
        os.replace(f"{target}.tmp", target)
        del model
    cached_file(rec.file_name)  # records its sha256 (the manifest has none for the authors' files)
    path = download(name, deploy=True, progress=False)  # converts once, or finds the deploy file
    return str(path)


def measure(mode: str, name: str, path: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, mode, name, path], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RepVGG-B3")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--home", default=os.path.join(tempfile.gettempdir(), "repzoo_bench_weights"))
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.prepare_only:
        print(prepare(args.model, args.home))
        return
    # Prepared in a child: ru_maxrss survives fork+exec, so this process must stay small.
    out = subprocess.run([sys.executable, __file__, "--prepare-only", "--model", args.model, "--home", args.home],
                         check=True, capture_output=True, text=True)
    path = out.stdout.strip().splitlines()[-1]
    size = os.path.getsize(path)
    env = dict(os.environ, REPZOO_HOME=args.home, REPZOO_OFFLINE="1")
    env.pop("REPZOO_MIRROR", None)
    results = {"load_file": [], "create_model": []}
    for _ in range(args.runs):  # interleaved, so that background load hits both alike
        for mode in results:
            results[mode].append(measure(mode, args.model, path, env))

    def med(mode, key):
        return statistics.median(r[key] for r in results[mode])

    a, b = med("load_file", "checksum"), med("create_model", "checksum")
    assert abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0), f"not the same weights ({a} vs {b})"
    mib = 2 ** 20
    print(f"{args.model}: deploy file {path} ({size / mib:.1f} MiB); median of {args.runs} fresh interpreters "
          "each, 1 thread, page cache warm")
    print(f"{'':22s}{'1st call':>10s}{'2nd call':>10s}{'+touch all':>12s}{'RSS +call':>11s}{'RSS +touch':>12s}")
    for mode in results:
        print(f"  {mode:20s}{med(mode, 'first') * 1e3:8.1f}ms{med(mode, 'second') * 1e3:8.1f}ms"
              f"{(med(mode, 'first') + med(mode, 'touch')) * 1e3:10.1f}ms"
              f"{med(mode, 'rss_call') / mib:8.1f}MiB{med(mode, 'rss_touch') / mib:9.1f}MiB")
    print(f"  baseline RSS (interpreter + torch + repzoo + safetensors): {med('create_model', 'rss_before') / mib:.0f} MiB")
    ratio = lambda key: med("create_model", key) / med("load_file", key)  # noqa: E731
    both = lambda m: med(m, "first") + med(m, "touch")  # noqa: E731
    print(f"  time ratio create_model / load_file: 1st call {ratio('first'):.2f}x, 2nd call {ratio('second'):.2f}x, "
          f"with every weight read {both('create_model') / both('load_file'):.2f}x   (goal <= 1.5x)")
    print(f"  peak RSS above baseline / weight bytes: create_model {med('create_model', 'rss_touch') / size:.2f}x, "
          f"load_file {med('load_file', 'rss_touch') / size:.2f}x   (goal <= 1.5x)")

if __name__ == "__main__":
    main()
