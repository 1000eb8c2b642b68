"""Quantization-aware fine-tuning through the equivalent kernel (repzoo.integrations.quantize): the fused kernel it
trains through is the conversion's, in float64; its rounding is the x86 backend's; a few steps give an int8 model
close to its float twin; bad input is refused. The digits study itself is a benchmark
(benchmarks/int8_accuracy.py); its committed report is checked against the docs here."""
import copy
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.reparam import is_deploy
from repzoo import RepZooError
from repzoo.integrations.quantize import (EquivalentKernelQAT, fake_quant_weight, int8_layers, output_drift,
                                          prepare_equivalent_kernel_qat, quantize_aware_finetune, quantize_int8)
from repzoo.layers.repopt import LinearAddBlock, RepOptVGGBlock
from repzoo.layers.repvgg_block import RepVGGBlock

from conftest import REPO_ROOT, randomize_bn

SCRIPT = REPO_ROOT / "benchmarks" / "int8_accuracy.py"


class Tiny(nn.Module):
    """RepVGG blocks (with an identity branch, and with RepVGGplus's post-SE), RepOpt-VGG's target and
    Hyper-Search blocks, a linear head: every kind of block the fine-tuning wraps, in a second."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(RepVGGBlock(3, 8, stride=2), RepVGGBlock(8, 8), RepVGGBlock(8, 8, se="post"),
                                    RepOptVGGBlock(8, 8), LinearAddBlock(8, 8, scale_init=0.7))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    model = randomize_bn(Tiny(), torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # the Hyper-Search block's scales away from their start
        for p in model.blocks[4].parameters():
            if p.dim() == 1 and p.shape[0] == 8:
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    return model


def test_the_kernel_it_trains_through_is_the_conversions_in_float64(tiny):
    model = copy.deepcopy(tiny).double()
    qat = prepare_equivalent_kernel_qat(model).double().eval()
    deploy = repzoo.reparameterize(copy.deepcopy(model))
    wrapped = [m for m in qat.quantized_modules() if isinstance(m, EquivalentKernelQAT)]
    assert len(wrapped) == 5
    for block, converted in zip(wrapped, deploy.blocks):
        fused = block.equivalent()
        assert set(fused) == {k for k in converted.state_dict() if k.startswith(("rbr_reparam.", "conv."))}
        for key, tensor in fused.items():
            assert tensor.dtype == torch.float64 and tensor.requires_grad
            assert _rel(tensor, converted.state_dict()[key]) < 1e-12, key
    # and the conversion is what the branches compute: the first identity block's kernel by hand
    b = model.blocks[1]

    def t(bn):
        return bn.weight / torch.sqrt(bn.running_var + bn.eps), bn.bias - bn.running_mean * bn.weight / torch.sqrt(
            bn.running_var + bn.eps)

    (t3, s3), (t1, s1), (ti, si) = t(b.rbr_dense.bn), t(b.rbr_1x1.bn), t(b.rbr_identity)
    kernel = b.rbr_dense.conv.weight * t3[:, None, None, None]
    kernel = kernel + F.pad(b.rbr_1x1.conv.weight * t1[:, None, None, None], [1, 1, 1, 1])
    kernel = kernel + F.pad(torch.eye(8, dtype=torch.float64)[:, :, None, None] * ti[:, None, None, None], [1, 1, 1, 1])
    fused = wrapped[1].equivalent()
    assert _rel(fused["rbr_reparam.weight"], kernel) < 1e-12 and _rel(fused["rbr_reparam.bias"], s3 + s1 + si) < 1e-12
    # without rounding, the prepared model is the train form (eval mode), exactly
    qat.set_fake_quant(False)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    assert _rel(qat(x), model(x)) < 1e-12


def test_gradients_reach_every_branch_through_the_rounding(tiny):
    qat = prepare_equivalent_kernel_qat(tiny).train()
    qat(torch.randn(4, 3, 16, 16)).logsumexp(1).sum().backward()
    block = qat.model.blocks[1].block
    for name in ("rbr_dense.conv.weight", "rbr_dense.bn.weight", "rbr_dense.bn.bias", "rbr_1x1.conv.weight",
                 "rbr_1x1.bn.weight", "rbr_identity.weight", "rbr_identity.bias"):
        grad = block.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    hs = qat.model.blocks[4].block
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hs.parameters() if p.requires_grad)
    assert qat.model.head.layer.weight.grad.abs().sum() > 0
    assert all(m.running_mean.abs().sum() > 0 for m in qat.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    qat(torch.randn(2, 3, 16, 16))  # the BN statistics stay frozen (the forward is the deploy block's)
    assert all(torch.equal(v, qat.float_model().state_dict()[k]) for k, v in before.items() if "running" in k)


def test_fake_quant_weight_rounds_as_the_x86_int8_model_does(tiny):
    w = torch.tensor([[1.0, -0.5, 0.25, 0.1], [-2.0, 0.02, 1.0, 0.0]])
    step = torch.tensor([1.0, 2.0]) / 127.5  # max |w| / 127.5 per output channel
    by_hand = (w / step[:, None]).round().clamp(-128, 127) * step[:, None]
    assert torch.allclose(fake_quant_weight(w), by_hand, atol=1e-7)
    assert fake_quant_weight(w)[0, 0] == pytest.approx(127 * step[0].item())  # +max rounds to 128: clamped to 127
    deploy = repzoo.reparameterize(copy.deepcopy(tiny))
    int8 = quantize_int8(deploy, torch.randn(8, 3, 16, 16))
    convs = {n: m for n, m in int8.named_modules() if n in int8_layers(int8)}
    assert len(convs) == 8  # 5 block kernels, the post-SE's two 1x1 convs, the head
    for name, layer in convs.items():
        float_weight = deploy.get_submodule(name).weight.detach()
        assert torch.equal(layer.weight().dequantize(), fake_quant_weight(float_weight)), name
    per_tensor = quantize_int8(deploy, torch.randn(8, 3, 16, 16), per_channel=False)
    for name in convs:
        float_weight = deploy.get_submodule(name).weight.detach()
        rounded = fake_quant_weight(float_weight, per_channel=False)
        assert torch.equal(per_tensor.get_submodule(name).weight().dequantize(), rounded), name
        assert len(torch.unique((rounded / (float_weight.abs().max() / 127.5)).round())) <= 256  # one step for all


def _batches(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, size, size, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def test_a_few_steps_give_an_int8_model_close_to_its_float_twin(tiny):
    before = copy.deepcopy(tiny.state_dict())
    data = _batches(3)
    result = quantize_aware_finetune(tiny, data, epochs=2, lr=0.01)
    assert len(result.losses) == 6 and all(torch.isfinite(torch.tensor(result.losses)))
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in before.items())  # the argument is not changed
    assert is_deploy(result.deploy) and not is_deploy(result.train_form)
    assert any(not torch.equal(v, result.train_form.state_dict()[k]) for k, v in before.items())  # it trained
    x = torch.randn(16, 3, 16, 16)
    assert _rel(result.deploy(x), result.train_form(x)) < 1e-5  # deploy = the fine-tuned train form, converted
    drift = output_drift(result.deploy, result.int8, x)
    assert drift["relative_error"] < 0.1, drift
    assert set(int8_layers(result.int8).values()) == {torch.qint8} and len(int8_layers(result.int8)) == 8
    # repzoo's image-folder batches (images, labels, ok) are taken, the unreadable images left out; steps stop early
    flagged = [(x, y, torch.arange(8) != 3) for x, y in data]
    assert len(quantize_aware_finetune(tiny, flagged, steps=2).losses) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "positive integers"),
    (dict(steps=0), "positive integers"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(observe_fraction=2.0), "observe_fraction"),
    (dict(backend="no-such-engine"), "not available"),
])
def test_bad_arguments_are_refused(tiny, kwargs, message):
    with pytest.raises(RepZooError, match=message):
        quantize_aware_finetune(tiny, _batches(1), **kwargs)


def test_bad_models_and_data_are_refused(tiny):
    with pytest.raises(RepZooError, match="deploy form"):
        quantize_aware_finetune(repzoo.reparameterize(copy.deepcopy(tiny)), _batches(1))
    with pytest.raises(RepZooError, match="no re-parameterizable block"):
        prepare_equivalent_kernel_qat(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(RepZooError, match="torch.nn.Module"):
        prepare_equivalent_kernel_qat("RepVGG-A0")
    with pytest.raises(RepZooError, match="re-iterable"):
        quantize_aware_finetune(tiny, torch.randn(8, 3, 16, 16))
    with pytest.raises(RepZooError, match=r"\(images, labels\)"):
        quantize_aware_finetune(tiny, [torch.randn(8, 3, 16, 16)])
    with pytest.raises(RepZooError, match="holds no batch"):
        quantize_aware_finetune(tiny, [])
    with pytest.raises(RepZooError, match="no length"):
        quantize_aware_finetune(tiny, iter(_batches(1)))
    with pytest.raises(RepZooError, match="no labelled image"):
        quantize_aware_finetune(tiny, iter(_batches(1)), steps=3)  # a one-shot generator runs dry
    with pytest.raises(RepZooError, match="train form"):
        EquivalentKernelQAT(RepVGGBlock(4, 4, deploy=True), nn.Identity())


def test_the_docs_tables_are_what_the_study_prints_for_the_committed_report():
    """docs/quantization.md shows benchmarks/results/int8_accuracy.json as the benchmark prints it, and the report has
    what its table says: int8 at most 0.5 points below fp32 after QAT (RepVGG-A0) and after PTQ alone (RepOpt-VGG-B1),
    where RepVGG-A0's PTQ loses more."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import int8_accuracy as study
    finally:
        sys.path.remove(str(SCRIPT.parent))
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "int8_accuracy.json").read_text())
    page = (REPO_ROOT / "docs" / "quantization.md").read_text(encoding="utf-8")
    for table in study.markdown(report["rows"]).split("\n\n"):
        assert table in page, table.splitlines()[0]
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["RepVGG-A0"]["val_images"] == 359 and rows["RepVGG-A0"]["qat_drop"] <= 0.5  # at most 0.5 below
    assert rows["RepOpt-VGG-B1"]["ptq_drop"] <= 0.5 and rows["RepVGG-A0"]["ptq_drop"] > 0.5
