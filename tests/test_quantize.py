"""Post-training int8 (repzoo.integrations.quantize) and the int8 benchmark's smallest setting, which CI runs:
RepOpt-VGG-B1's int8 top-1 must agree with fp32 on at least 90% of the calibration images."""
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from repzoo import RepZooError
from repzoo.integrations.quantize import (activation_ranges, calibration_batches, int8_layers, int8_weights_only,
                                          kernel_ranges, output_drift, quantize_int8, range_spread,
                                          weight_quant_error)
from repzoo.layers.repvgg_block import RepVGGBlock

from conftest import REPO_ROOT, randomize_bn

SCRIPT = REPO_ROOT / "benchmarks" / "quantize_int8.py"


class Tiny(nn.Module):
    """Two RepVGG blocks in train form, pooled, a linear head: traces, converts, quantizes in a second."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(RepVGGBlock(3, 8, stride=2), RepVGGBlock(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_bn(Tiny(), torch.Generator().manual_seed(0)).eval()


def test_the_smallest_setting_agrees_on_90_percent_of_the_calibration_images(tmp_path):
    out = tmp_path / "int8.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smallest", "--min-agreement", "0.9", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    b1 = report["models"]["RepOpt-VGG-B1"]
    assert b1["calibration"]["top1_agreement"] >= 0.9
    assert b1["calibration"]["images"] == 50 and b1["fp32_accuracy"]["calibration"] >= 0.9  # real margins
    assert b1["int8_layers"] == 29 and b1["float_layers_left"] == 0  # 28 convs and the head, all int8
    assert b1["int8_weight_dtypes"] == ["torch.qint8"]
    assert b1["speed"]["fp32_images_per_s"] > 0 and b1["speed"]["int8_images_per_s"] > 0
    assert "synthetic weights" in done.stdout and "agreement" in done.stdout


def test_min_agreement_fails_loudly(tmp_path, monkeypatch):
    """--min-agreement above what is reachable exits 1 with a message (checked in-process on a stub run)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import quantize_int8 as script
    finally:
        sys.path.remove(str(SCRIPT.parent))
    fake = dict(calibration=dict(top1_agreement=0.5, images=2), test=dict(top1_agreement=0.5), kernels=dict(layers={}))
    monkeypatch.setattr(script, "measure", lambda name, args, data, log: (fake, {}))
    monkeypatch.setattr(script, "synthetic_images", lambda *a, **k: (torch.zeros(2, 3, 8, 8), torch.zeros(2).long()))
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert script.main(["--smallest", "--min-agreement", "0.9"]) == 1
    assert any("FAILED" in line and "RepOpt-VGG-B1 50.0%" in line for line in lines)


def test_quantize_int8_converts_a_copy_and_quantizes_every_layer(tiny):
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    int8 = quantize_int8(tiny, x, batch_size=8)
    assert isinstance(int8, torch.fx.GraphModule)
    assert not tiny.blocks[0].deploy  # the argument is left in train form
    layers = int8_layers(int8)
    assert len(layers) == 3 and set(layers.values()) == {torch.qint8}  # two fused 3x3 convs, one linear
    schemes = {m.weight().qscheme() for n, m in int8.named_modules() if n in layers}
    assert schemes == {torch.per_channel_affine}
    drift = output_drift(tiny, int8, x)
    assert drift["relative_error"] < 0.1 and drift["images"] == 16
    per_tensor = quantize_int8(tiny, [x[:8], (x[8:], None)], per_channel=False)
    assert {m.weight().qscheme() for n, m in per_tensor.named_modules() if n in layers} == {torch.per_tensor_affine}


def test_kernel_ranges_by_hand():
    conv, fc = nn.Conv2d(2, 3, 3, bias=False), nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 1, 2, 2] = -3.0
        conv.weight[1, 0, 0, 0] = 0.5
        conv.weight[1, 1, 1, 1] = -0.25
        conv.weight[2] = 1.0
        fc.weight.copy_(torch.tensor([[0.1, -0.2, 0.0, 0.05], [-4.0, 1.0, 2.0, 3.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4), fc)
    ranges = kernel_ranges(model)
    assert list(ranges) == ["0.weight", "4.weight", "5.weight"]
    assert torch.equal(ranges["0.weight"], torch.tensor([3.0, 0.5, 1.0]))
    assert torch.allclose(ranges["5.weight"], torch.tensor([0.2, 4.0]))
    spread = range_spread(ranges)
    assert spread["0.weight"] == pytest.approx(3.0)  # max 3 / median 1
    assert spread["5.weight"] == pytest.approx(4.0 / 0.2)  # median of two: the lower one (torch.median)
    err = weight_quant_error(model)["0.weight"]
    # crest (max / rms per channel): sqrt(18) = 4.24, 0.5 / sqrt(0.3125 / 18) = 3.79, 1: the median is channel 1's
    assert err["crest"] == pytest.approx(0.5 / math.sqrt((0.25 + 0.0625) / 18))
    # per channel, step = max / 127.5: each max lands on 127.5 steps, rounded off by half a step (-128, or 127 by
    # the clamp); -0.25 is 63.75 of channel 1's steps → 64. Per tensor, step = 3 / 127.5: 0.5 → 21.25 steps,
    # -0.25 → 10.625, 1 → 42.5 (each off by 0.25, 0.375, 0.5 steps)
    norm = math.sqrt(9 + 0.25 + 0.0625 + 18)
    per_channel = math.sqrt(1.5 ** 2 + 0.25 ** 2 + 0.125 ** 2 + 18 * 0.5 ** 2) / 127.5
    per_tensor = 3 / 127.5 * math.sqrt(0.5 ** 2 + 0.25 ** 2 + 0.375 ** 2 + 18 * 0.5 ** 2)
    assert err["per_channel"] == pytest.approx(per_channel / norm, rel=1e-6)
    assert err["per_tensor"] == pytest.approx(per_tensor / norm, rel=1e-6)


def test_kernel_ranges_of_a_train_form_model_are_those_of_its_deploy_form(tiny):
    from repzoo import reparameterize
    import copy

    deploy = reparameterize(copy.deepcopy(tiny))
    train, conv = kernel_ranges(tiny), kernel_ranges(deploy)
    assert list(train) == ["blocks.0.rbr_reparam.weight", "blocks.1.rbr_reparam.weight", "head.weight"]
    for name in conv:
        assert torch.allclose(train[name], conv[name])
    expected = deploy.blocks[1].rbr_reparam.weight.abs().amax((1, 2, 3))
    assert torch.allclose(conv["blocks.1.rbr_reparam.weight"], expected)


def test_int8_weights_only_rounds_each_channel_to_steps_of_its_range(tiny):
    import copy

    from repzoo import reparameterize

    w0 = reparameterize(copy.deepcopy(tiny)).blocks[1].rbr_reparam.weight.detach()
    w = int8_weights_only(tiny).blocks[1].rbr_reparam.weight.detach()
    step = w0.abs().amax((1, 2, 3), keepdim=True) / 127.5
    levels = w / step
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 128
    assert ((w - w0).abs() <= step / 2 + 1e-7).all() and not torch.equal(w, w0)
    assert not tiny.blocks[1].deploy


def test_output_drift_by_hand():
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    drift = output_drift(r, q)
    assert drift["relative_error"] == pytest.approx(3.0 / math.sqrt(14.0))  # ‖(0,0,2,-2,0,1)‖ / ‖r‖
    assert drift["top1_agreement"] == pytest.approx(2 / 3) and drift["images"] == 3
    images = torch.arange(3.0).view(3, 1)  # models are called on the images, in batches
    same = output_drift(lambda x: r[x[:, 0].long()], lambda x: q[x[:, 0].long()], images, batch_size=2)
    assert same == drift
    assert output_drift(r, r) == dict(relative_error=0.0, top1_agreement=1.0, images=3)


def test_activation_ranges_by_hand():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    x = torch.arange(1.0, 101.0).view(1, 1, 10, 10)  # outputs 2, 4, ..., 200
    ranges = activation_ranges(nn.Sequential(conv), x, percentile=50)
    assert ranges["0"]["max"] == 200.0 and ranges["0"]["percentile"] == 100.0
    assert list(ranges) == ["0"] and ranges["0"]["ratio"] == 2.0


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
            return self.conv(x)
        return -self.conv(x)


@pytest.mark.parametrize("calibration, message", [
    (torch.empty(0, 3, 8, 8), "calibration set is empty"),
    ([], "calibration set is empty"),
    (torch.zeros(3), "pass a batch of images"),
    ([torch.zeros(1, 3, 8, 8), "x"], "must be a tensor"),
    (3, "iterable of batches"),
])
def test_bad_calibration_sets(tiny, calibration, message):
    with pytest.raises(RepZooError, match=message):
        quantize_int8(tiny, calibration)


def test_bad_models_and_arguments(tiny):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RepZooError, match="torch.fx cannot trace Untraceable"):
        quantize_int8(Untraceable(), x)
    with pytest.raises(RepZooError, match="expected a torch.nn.Module"):
        quantize_int8("RepVGG-A0", x)
    with pytest.raises(RepZooError, match="engine 'tpu' is not available"):
        quantize_int8(tiny, x, backend="tpu")
    with pytest.raises(RepZooError, match="batch_size"):
        calibration_batches(x, batch_size=0)
    with pytest.raises(RepZooError, match="percentile"):
        activation_ranges(tiny, x, percentile=0)
    with pytest.raises(RepZooError, match="same shape"):
        output_drift(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(RepZooError, match="needs images"):
        output_drift(tiny, torch.zeros(2, 4))


def test_a_model_fx_cannot_trace_is_named():
    """A forward that branches on tensor values cannot be traced: FX graph mode cannot quantize it, and the
    error names the model (every repzoo model traces, see test_timm_contract.py)."""

    class BranchesOnValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    with pytest.raises(RepZooError, match="torch.fx cannot trace BranchesOnValues"):
        quantize_int8(BranchesOnValues().eval(), torch.zeros(1, 3, 16, 16))
