"""The conversion core: pure functions against torch's own modules, and declared conv-BN pairs."""
import torch
import torch.nn.functional as F
from torch import nn

import repzoo
from repzoo.reparam import fuse_conv_bn, pad_kernel, sum_branches

from conftest import randomize_bn, rel_diff


def test_fuse_conv_bn_equals_conv_then_eval_bn(float64):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1, groups=2, bias=True)
    bn = randomize_bn(nn.BatchNorm2d(4, eps=1e-3)).eval()
    x = torch.randn(2, 6, 7, 5)
    k, b = fuse_conv_bn(conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv.bias)
    assert rel_diff(F.conv2d(x, k, b, padding=1, groups=2), bn(conv(x))) < 1e-13


def test_sum_branches_is_the_sum_of_padded_kernels(float64):
    torch.manual_seed(1)
    k5, k3, k1 = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 3, 3), torch.randn(4, 2, 1, 1)
    b = [torch.randn(4) for _ in range(3)]
    kernel, bias = sum_branches([(k1, b[0]), (k5, b[1]), (k3, b[2])], 5)
    assert torch.allclose(kernel, k5 + pad_kernel(k3, 5) + pad_kernel(k1, 5), rtol=0, atol=1e-15)
    assert torch.allclose(bias, b[0] + b[1] + b[2])
    assert torch.equal(pad_kernel(k1, 3)[:, :, 1, 1], k1[:, :, 0, 0]) and pad_kernel(k1, 3).abs().sum() == k1.abs().sum()


class _Stemmed(nn.Module):
    """A user's model: its own conv-BN stem, declared for folding, and a repzoo backbone."""

    conv_bn_pairs = (("stem", "stem_bn"),)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(3)
        self.body = repzoo.create_model("RepVGG-A0", num_classes=5)

    def forward(self, x):
        return self.body(self.stem_bn(self.stem(x)))


def test_declared_conv_bn_pairs_fold_in_place_and_in_state_dicts(float64):
    torch.manual_seed(2)
    model = randomize_bn(_Stemmed()).eval()
    train_sd = dict(model.state_dict())
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        ref = model(x)
        repzoo.reparameterize(model)
        assert isinstance(model.stem_bn, nn.Identity) and model.stem.bias is not None
        assert rel_diff(model(x), ref) < 1e-10
        converted = repzoo.convert_state_dict(model, train_sd)
        assert converted.keys() == model.state_dict().keys()
        assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        repzoo.reparameterize(model)  # idempotent
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
