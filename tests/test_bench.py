"""`repzoo bench`: one run measures every figure it promises, names the machine, writes JSON, markdown, a plot."""
import json

import pytest

import torch

from repzoo.bench import TIMM_TWINS, markdown, peak_memory, run_bench
from repzoo.cli import main


@pytest.fixture(scope="module")
def report():
    return run_bench(["RepVGG-A0", "RepOpt-GhostNet-0.5x"], batch_size=2, image_size=32, repeats=1, warmup=1,
                     train_repeats=1, load_repeats=1, progress=False)


@pytest.mark.heavy  # every figure of `repzoo bench`: timed runs of two models
def test_every_figure_is_measured(report):
    assert {"cpu", "cores", "threads", "torch", "device"} <= set(report["machine"])
    a0, ghost = report["rows"]
    for row in (a0, ghost):
        assert row["train_form_images_per_s"] > 0 and row["deploy_images_per_s"] > 0 and row["convert_seconds"] >= 0
        step = row["train_step"]
        # the step holds at least the weights, their gradients and (SGD) momentum: 3 x 4 bytes per parameter
        assert step["images_per_s"] > 0 and step["peak_bytes"] >= 12 * row["params_train"] > 0
        assert step["held_before_bytes"] >= 4 * row["params_train"]
        assert row["deploy_speedup"] == pytest.approx(row["deploy_images_per_s"] / row["train_form_images_per_s"])
    assert a0["timm_twin"] == TIMM_TWINS["RepVGG-A0"] == "repvgg_a0" and a0["deploy_vs_timm"] > 0
    assert "timm_twin" not in ghost  # timm has no RepOpt-GhostNet
    load = a0["warm_pretrained_deploy_load"]
    assert load["seconds"] > 0 and load["weight_bytes"] == a0["params_deploy"] * 4
    assert a0["top1"] == pytest.approx(72.41) and ghost["top1"] == pytest.approx(66.50)
    assert (a0["params_train"], a0["params_deploy"]) == (9_108_968, 8_309_384)


def test_peak_memory_counts_what_is_live_at_once():
    mib = 2 ** 20

    def run(held):
        a = torch.empty(8 * mib, dtype=torch.uint8)  # 8 MiB, then 2 MiB more while a is live
        b = torch.empty(2 * mib, dtype=torch.uint8)
        del a, b
        torch.empty(6 * mib, dtype=torch.uint8)  # less than the peak: does not raise it

    peak = peak_memory(lambda: torch.empty(4 * mib, dtype=torch.uint8), run)
    assert peak == dict(peak_bytes=14 * mib, held_before_bytes=4 * mib)


@pytest.mark.heavy  # the same timed runs as above (the default tier checks the written markdown below)
def test_markdown_names_the_machine_and_has_a_row_per_model(report):
    table = markdown(report).splitlines()
    assert table[0].startswith("Measured on ") and "torch" in table[0]
    speed = table[2:table.index("", 2)]  # the inference table, then the costs table, each a row per model
    assert [line.split("|")[1].strip() for line in speed[2:]] == ["RepVGG-A0", "RepOpt-GhostNet-0.5x"]
    assert [line.split("|")[1].strip() for line in table[-2:]] == ["RepVGG-A0", "RepOpt-GhostNet-0.5x"]
    assert all(line.count("|") <= 8 for line in table if line.startswith("|"))  # at most 7 columns


def test_the_command_writes_json_markdown_and_a_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    assert main(["bench", "--models", "RepVGG-A0", "--image-size", "32", "--batch-size", "2", "--repeats", "1",
                 "--no-train", "--no-load", "--quiet", "--json", f"{out}.json", "--markdown", f"{out}.md",
                 "--plot", f"{out}.png"]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["model"] == "RepVGG-A0"
    assert (tmp_path / "bench.md").read_text().startswith("Measured on")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RepVGG-A0" in capsys.readouterr().out
