"""RepMLPNet benchmark — not a test.

Measures, in one run (float32, CPU unless ``--device``):
  * images/s of the train-time vs the deploy form at the native resolution (RepMLPNet-T224,
    RepMLPNet-B256; batch 8);
  * the time locality injection (``repzoo.reparameterize``) takes, per model (all six by default);
  * the peak memory conversion allocates beyond the model it converts, against the goal of no more
    than one extra copy of the largest block's weights. Every allocation and free of the CPU
    allocator during the conversion is recorded (``repzoo.bench.peak_memory``: the profiler) and
    the running sum's maximum is the peak. The same is reported for converting a train-time state
    dict on load (``repzoo.convert_state_dict``), whose result is a new copy of every FC by nature.

    python benchmarks/bench_repmlpnet.py
    python benchmarks/bench_repmlpnet.py --speed-models RepMLPNet-T224 --convert-models RepMLPNet-L256 --json out.json
"""
import argparse
import json
import time

import torch

ALL = ["RepMLPNet-T224", "RepMLPNet-B224", "RepMLPNet-T256", "RepMLPNet-B256", "RepMLPNet-D256", "RepMLPNet-L256"]


def peak_allocated(build, convert) -> int:
    """The most bytes the CPU allocator held at once while ``convert(build())`` converted, beyond what it
    held when the conversion began (``repzoo.bench.peak_memory``)."""
    from repzoo.bench import peak_memory

    peak = peak_memory(build, convert)
    return peak["peak_bytes"] - peak["held_before_bytes"]


def largest_block_bytes(model) -> int:
    from repzoo.layers import RepMLPBlock

    return max(sum(t.numel() * t.element_size() for t in m.state_dict().values())
               for m in model.modules() if isinstance(m, RepMLPBlock))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-models", nargs="*", default=["RepMLPNet-T224", "RepMLPNet-B256"])
    parser.add_argument("--convert-models", nargs="*", default=ALL)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each form, interleaved (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import repzoo
    from repzoo.demo import randomize_bn

    device = torch.device(args.device)
    results = {"device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
               "torch": torch.__version__, "speed": {}, "conversion": {}}

    def build(name):
        torch.manual_seed(0)
        return randomize_bn(repzoo.create_model(name)).eval()

    for name in args.speed_models:
        train = build(name).to(device)
        size = train.pretrained_cfg["input_size"][1]
        deploy = repzoo.reparameterize(build(name)).to(device)
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        from repzoo.bench import interleaved_images_per_second

        speeds = dict(zip(("train", "deploy"), interleaved_images_per_second([train, deploy], x, args.repeats)))
        speeds["deploy_over_train"] = speeds["deploy"] / speeds["train"]
        results["speed"][name] = dict(speeds, image_size=size)
        print(f"{name} ({size}x{size}, batch {args.batch_size}): train {speeds['train']:.2f} img/s, "
              f"deploy {speeds['deploy']:.2f} img/s ({speeds['deploy_over_train']:.2f}x)", flush=True)
        del train, deploy

    for name in args.convert_models:
        model = build(name)
        start = time.perf_counter()
        repzoo.reparameterize(model)
        seconds = time.perf_counter() - start

        model = build(name)
        largest = largest_block_bytes(model)
        fc_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k.endswith("fc3.weight"))
        del model
        in_place = peak_allocated(lambda n=name: build(n), repzoo.reparameterize)
        with torch.device("meta"):
            target = repzoo.create_model(name, deploy=True)
        on_load = peak_allocated(lambda n=name: build(n).state_dict(),
                                 lambda sd, t=target: repzoo.convert_state_dict(t, sd))
        results["conversion"][name] = dict(seconds=seconds, largest_block_bytes=largest,
                                           reparameterize_peak_bytes=in_place,
                                           reparameterize_peak_over_largest_block=in_place / largest,
                                           convert_state_dict_peak_bytes=on_load, all_fc3_bytes=fc_bytes)
        print(f"{name}: locality injection {seconds:.3f} s; peak extra memory {in_place / 2**20:.1f} MiB = "
              f"{in_place / largest:.3f}x the largest block ({largest / 2**20:.1f} MiB); on load "
              f"{on_load / 2**20:.1f} MiB (all fc3 kernels: {fc_bytes / 2**20:.1f} MiB)", flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
