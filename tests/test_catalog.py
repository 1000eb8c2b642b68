"""The catalog: multiply-accumulates counted, checked by hand and against the papers' tables."""
import pytest
import torch
from torch import nn

import repzoo
from repzoo.catalog import count_macs


def _macs_by_hand(model: nn.Module, size) -> int:
    """Σ over convs of out_h·out_w·C_out·(C_in/groups)·k_h·k_w, plus in·out of each Linear (hooks on a real run)."""
    total = []

    def conv_hook(m, inp, out):
        total.append(out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups)
                     * m.kernel_size[0] * m.kernel_size[1])

    def linear_hook(m, inp, out):
        total.append(m.in_features * m.out_features)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.device("meta"), torch.no_grad():
        model(torch.empty(1, *size))
    return sum(total)


@pytest.mark.parametrize("name", ["RepVGG-A0", "RepVGG-B1g4", "RepGhostNet-0.5x", "RepOpt-VGG-B1"])
def test_the_counter_counts_what_the_layers_compute(name):
    with torch.device("meta"):
        model = repzoo.create_model(name, deploy=True).eval()
    assert count_macs(name) == _macs_by_hand(model, (3, 224, 224))


@pytest.mark.parametrize("name, paper", [("RepVGG-A0", 1.4), ("RepVGG-A1", 2.4), ("RepVGG-B0", 3.1),
                                         ("RepVGG-B1", 11.8), ("RepVGG-B2g4", 11.3), ("RepMLPNet-T224", 2.8),
                                         ("RepMLPNet-L256", 11.5)])
def test_deploy_macs_match_the_papers_tables(name, paper):
    """The papers' "FLOPs (B)" are multiply-accumulates of the deploy model at its evaluation size, given to one
    decimal (L256 counts 11.58 against the README's 11.5: within 1%)."""
    assert abs(count_macs(name) / 1e9 - paper) <= max(0.05, 0.01 * paper)
    assert repzoo.model_info(name)["macs_deploy"] == count_macs(name)
