"""The timm → official key adapter for RepVGG, proved numerically against timm's own models.

timm's ``repvgg_*`` (timm/models/byobnet.py) is an independent implementation: the test builds
it with random weights and non-trivial BN statistics, maps its state dict, loads it strictly
into repzoo's model, and compares float64 logits.
"""
from __future__ import annotations

import pytest
import torch

import repzoo
from repzoo.weights.adapters import adapt_state_dict, key_styles
from repzoo.errors import IncompatibleCheckpointError

from conftest import randomize_bn, rel_diff

timm = pytest.importorskip("timm")

#: every RepVGG that timm 1.0.31 ships (timm/models/byobnet.py, huggingface/pytorch-image-models v1.0.31): timm name -> repzoo name
TIMM_REPVGG = {f"repvgg_{v.lower()}": f"RepVGG-{v}" for v in "A0 A1 A2 B0 B1 B1g4 B2 B2g4 B3 B3g4 D2se".split()}

#: numerics on a representative subset: plain A, grouped convs (b1g4), SE (d2se). Float64 convs of
#: the big variants are slow on CPU, so the deploy round trip (tested per family elsewhere) runs on a0.
NUMERIC = [("repvgg_a0", True), ("repvgg_b1g4", False), ("repvgg_d2se", False)]


def _meta_pair(timm_name: str):
    with torch.device("meta"):
        ref = timm.create_model(timm_name, pretrained=False)
        ours = repzoo.create_model(TIMM_REPVGG[timm_name])
    return ref, ours


def _random_timm(timm_name: str, seed: int = 0) -> torch.nn.Module:
    """timm's model with random weights (fan-in scaled) and randomized BN stats, without timm's slow init."""
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.uniform_(-((3 / fan_in) ** 0.5), (3 / fan_in) ** 0.5, generator=g)  # unit variance per fan-in
        for name, b in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                b.zero_()
    return randomize_bn(model, g).eval()


def test_timm_is_a_registered_key_style():
    repzoo.get_model_entry("RepVGG-A0")  # importing the family files registers their adapters
    assert "timm" in key_styles("RepVGG")


@pytest.mark.parametrize("timm_name", sorted(TIMM_REPVGG))
def test_mapping_is_one_to_one_with_the_same_shapes(timm_name):
    ref, ours = _meta_pair(timm_name)
    timm_sd, our_sd = ref.state_dict(), ours.state_dict()
    mapped = adapt_state_dict(timm_sd, "timm", TIMM_REPVGG[timm_name])
    assert len(mapped) == len(timm_sd) == len(our_sd)  # no key lost or merged
    assert set(mapped) == set(our_sd)
    assert all(mapped[k].shape == our_sd[k].shape for k in our_sd)


@pytest.mark.parametrize("timm_name, check_deploy", NUMERIC)
def test_mapped_weights_compute_timms_function(timm_name, check_deploy, float64):
    ref = _random_timm(timm_name)
    sd = adapt_state_dict(ref.state_dict(), "timm", TIMM_REPVGG[timm_name])
    with torch.device("meta"):
        ours = repzoo.create_model(TIMM_REPVGG[timm_name])
    ours.load_state_dict(sd, strict=True, assign=True)
    ours.eval()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
        assert rel_diff(got, expected) < 1e-10
        if check_deploy:  # and the converted (deploy) form computes the same
            assert rel_diff(repzoo.reparameterize(ours)(x), expected) < 1e-10
    assert expected.abs().max() > 1e-3  # a non-trivial output


def test_timm_deploy_keys_map_to_the_deploy_model(float64):
    """timm's re-parameterized form (``reparam_conv``) maps onto repzoo's deploy form."""
    from timm.utils import reparameterize_model

    ref = _random_timm("repvgg_a0", seed=3)
    deployed = reparameterize_model(ref)
    sd = adapt_state_dict(deployed.state_dict(), "timm", "RepVGG-A0")
    with torch.device("meta"):
        ours = repzoo.create_model("RepVGG-A0", deploy=True)
    ours.load_state_dict(sd, strict=True, assign=True)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_diff(ours.eval()(x), deployed(x)) < 1e-10


def test_foreign_keys_are_refused_with_their_names():
    sd = {"stem.conv_kxk.conv.weight": torch.zeros(1), "blocks.0.conv.weight": torch.zeros(1)}
    with pytest.raises(IncompatibleCheckpointError, match="blocks.0.conv.weight"):
        adapt_state_dict(sd, "timm", "RepVGG-A0")


def test_unknown_key_style_lists_the_known_ones():
    with pytest.raises(IncompatibleCheckpointError, match="official"):
        adapt_state_dict({}, "mmpretrain", "RepVGG-A0")
