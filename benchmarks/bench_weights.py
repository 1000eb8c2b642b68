"""Warm pretrained deploy loads — a benchmark, not a test.

``create_model(NAME, pretrained=True, deploy=True)`` with the authors' train file in a
``REPZOO_MIRROR`` folder and its deploy copy already cached, against

* reading the cached deploy file: ``safetensors.torch.load_file`` plus one copy of every tensor
  (goal: repzoo ≤ 1.5× this);
* timm's way to the same deploy model: ``timm.create_model(pretrained=True)`` from a local file of
  the same weights, then ``timm.utils.reparameterize_model`` (goal: repzoo ≥ 2× faster);

and the same warm load after the mirror folder is removed (it must still work: the deploy copy
is found from the manifest name, the tag and the hash recorded at the file's first use).

Each measurement runs in a fresh interpreter (imports excluded, page cache warm, 1 thread);
medians of ``--runs``. Weights are generated (random) in the official formats; nothing is
downloaded.

    python benchmarks/bench_weights.py                          # RepVGG-B1, 5 runs each
    python benchmarks/bench_weights.py --model RepVGG-A0 --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

_MEASURE = textwrap.dedent(
    """
    import json, sys, time, warnings
    import torch
    mode, name, timm_name, path = sys.argv[1:5]
    torch.set_num_threads(1)
    import repzoo, timm, timm.utils
    from safetensors.torch import load_file
    warnings.simplefilter("ignore")

    def call():
        if mode == "load_file":
            return {k: v.clone() for k, v in load_file(path).items()}
        if mode == "timm":
            m = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=path))
            return timm.utils.reparameterize_model(m.eval()).state_dict()
        return repzoo.create_model(name, pretrained=True, deploy=True).state_dict()

    t = time.perf_counter()
    sd = call()
    elapsed = time.perf_counter() - t
    checksum = sum(float(v.double().sum()) for v in sd.values() if v.is_floating_point())  # reads every byte
    print(json.dumps(dict(seconds=elapsed, read=time.perf_counter() - t, checksum=checksum)))
    """
)


def prepare(name: str, timm_name: str, home: str, mirror: str) -> dict:
    """The mirror's train file, repzoo's deploy copy (converted once), and timm's file of the same weights."""
    os.environ.update(REPZOO_HOME=home, REPZOO_MIRROR=mirror, REPZOO_OFFLINE="1")
    import torch
    from safetensors.torch import save_file

    import repzoo
    from repzoo.weights.manifest import load_manifest
    from repzoo.weights.pretrained import download

    rec = load_manifest().weights(name).files[0]
    train_file = os.path.join(mirror, rec.file_name)
    torch.manual_seed(0)
    model = repzoo.create_model(name)
    torch.save({"model": model.state_dict(), "epoch": 0}, train_file)
    timm_file = os.path.join(mirror, "timm.safetensors")
    import timm

    ref = timm.create_model(timm_name, pretrained=False)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, timm_file)
    deploy_file = str(download(name, deploy=True, progress=False))
    return dict(train=train_file, deploy=deploy_file, timm=timm_file)


def measure(mode: str, name: str, timm_name: str, path: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, mode, name, timm_name, path], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RepVGG-B1")
    parser.add_argument("--timm-model", default=None, help="timm's name of the same model (default: the alias)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--prepare-only", nargs=2, metavar=("HOME", "MIRROR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from repzoo.registry import get_model_entry

    timm_name = args.timm_model or get_model_entry(args.model).alias
    if args.prepare_only:
        print(json.dumps(prepare(args.model, timm_name, *args.prepare_only)))
        return
    work = tempfile.mkdtemp(prefix="repzoo_bench_weights_")
    home, mirror = os.path.join(work, "home"), os.path.join(work, "mirror")
    os.makedirs(mirror)
    out = subprocess.run([sys.executable, __file__, "--model", args.model, "--timm-model", timm_name,
                          "--prepare-only", home, mirror], check=True, capture_output=True, text=True)
    paths = json.loads(out.stdout.strip().splitlines()[-1])
    env = dict(os.environ, REPZOO_HOME=home, REPZOO_MIRROR=mirror, REPZOO_OFFLINE="1", HF_HUB_OFFLINE="1")
    modes = {"load_file": paths["deploy"], "repzoo": paths["deploy"], "timm": paths["timm"]}
    results = {m: [] for m in modes}
    for _ in range(args.runs):  # interleaved, so that background load hits all alike
        for mode, path in modes.items():
            results[mode].append(measure(mode, args.model, timm_name, path, env))
    shutil.rmtree(mirror)  # the mirror is gone (an unmounted drive, a laptop off the cluster)
    results["repzoo, mirror removed"] = [measure("repzoo", args.model, timm_name, paths["deploy"], env)
                                         for _ in range(args.runs)]
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
    med_read = {m: statistics.median(r["read"] for r in rs) for m, rs in results.items()}
    same = {round(r["checksum"], 3) for m in ("load_file", "repzoo", "repzoo, mirror removed") for r in results[m]}
    assert len(same) == 1, f"not the same weights: {same}"
    size = os.path.getsize(paths["deploy"]) / 2 ** 20
    print(f"{args.model}: warm pretrained deploy load, deploy file {size:.0f} MiB; median of {args.runs} fresh "
          "interpreters each (imports excluded), 1 thread, page cache warm")
    print(f"  {'':26s} {'call':>8s}    {'+ read every weight':>20s}")
    for mode, seconds in med.items():
        print(f"  {mode:26s} {seconds * 1e3:8.1f} ms {med_read[mode] * 1e3:14.1f} ms")
    ratio_call = med["repzoo"] / med["load_file"]
    ratio_read = med_read["repzoo"] / med_read["load_file"]  # both followed by the same read of every weight
    speedup = med["timm"] / med["repzoo"]
    print(f"  repzoo / (load_file + copy): {ratio_call:.2f}x for the call (its tensors map the file); "
          f"{ratio_read:.2f}x when both then read every weight (the same checksum)   (goal <= 1.5x)")
    print(f"  timm create_model + reparameterize_model / repzoo   {speedup:.2f}x faster   (goal >= 2x)")
    print(f"  with the mirror removed: {med['repzoo, mirror removed'] / med['load_file']:.2f}x load_file "
          "(the deploy copy found from the first-use record)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, ms={m: s * 1e3 for m, s in med.items()},
                           ms_read={m: s * 1e3 for m, s in med_read.items()}, ratio_call=ratio_call, ratio_read=ratio_read,
                           timm_speedup=speedup), f, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
