"""RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality (Ding et al., CVPR 2022).

Keys, widths and order follow DingXiaoH/RepMLP (``repmlpnet.py``) so that the released
``RepMLPNet-*-train.pth`` files and ``convert.py``'s deploy files load as they are; mmpretrain's
converted B224/B256 checkpoints load through the ``mmpretrain`` key adapter at the end of this file.

The model: a 4x4 patch embedding, four stages of :class:`RepMLPNetUnit` joined by 2x2 stride-2
conv-BN-ReLU downsamplings (``embeds``), then ``head_norm`` (BN), global average pooling and
``head``. Each unit is ``x + RepMLPBlock(prebn1(x))`` then ``+ FFN(prebn2(·))``. Locality injection
(:class:`~repzoo.layers.RepMLPBlock`) is the deploy conversion; every other BN stays, as in the
reference. Each stage's RepMLPBlocks work on fixed partitions (56…7 or 64…8), so the input's height
and width must be multiples of the native resolution; multiples are computed partition by partition.
"""
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.fx
from torch import nn

from ..errors import IncompatibleCheckpointError, InvalidArgumentError
from ..layers.conv_bn import ConvBn
from ..layers.repmlp import RepMLPBlock
from ..registry import register_model
from ..weights.adapters import register_key_adapter
from ..layers.pool import GlobalPool
from .base import RepClassifier, Stage

__all__ = ["RepMLPNet", "RepMLPNetUnit", "FFNBlock", "VARIANTS"]

PAPER = "https://arxiv.org/abs/2112.11081"
FAMILY = "RepMLPNet"

TINY, BASE, DEEP = (64, 128, 256, 512), (96, 192, 384, 768), (80, 160, 320, 640)
TILES_224, TILES_256 = (56, 28, 14, 7), (64, 32, 16, 8)

#: name -> the reference factory's arguments (all six: reparam_conv_k (1, 3), patch 4, GP reduce 4, FFN 4x)
VARIANTS: Dict[str, dict] = {
    "RepMLPNet-T224": dict(channels=TINY, num_blocks=(2, 2, 6, 2), hs=TILES_224, sharesets_nums=(1, 4, 16, 128)),
    "RepMLPNet-B224": dict(channels=BASE, num_blocks=(2, 2, 12, 2), hs=TILES_224, sharesets_nums=(1, 4, 32, 128)),
    "RepMLPNet-T256": dict(channels=TINY, num_blocks=(2, 2, 6, 2), hs=TILES_256, sharesets_nums=(1, 4, 16, 128)),
    "RepMLPNet-B256": dict(channels=BASE, num_blocks=(2, 2, 12, 2), hs=TILES_256, sharesets_nums=(1, 4, 32, 128)),
    "RepMLPNet-D256": dict(channels=DEEP, num_blocks=(2, 2, 18, 2), hs=TILES_256, sharesets_nums=(1, 4, 16, 128)),
    "RepMLPNet-L256": dict(channels=BASE, num_blocks=(2, 2, 18, 2), hs=TILES_256, sharesets_nums=(1, 4, 32, 256)),
}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> ConvBn:
    """``relu(bn(conv(x)))``: keys ``conv.weight``, ``bn.*`` (the ReLU is the Sequential's third child)."""
    block = ConvBn(in_channels, out_channels, kernel_size, stride, 0)
    block.add_module("relu", nn.ReLU())
    return block


class FFNBlock(nn.Module):
    """``bn(W2 · gelu(bn(W1 · x)))`` with 1x1 convs ``C → hidden → C``: keys ``ffn_fc1.*``, ``ffn_fc2.*``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.ffn_fc1 = ConvBn(channels, hidden, 1)
        self.ffn_fc2 = ConvBn(hidden, channels, 1)
        self.act = nn.GELU()  # the exact (erf) form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_fc2(self.act(self.ffn_fc1(x)))


class RepMLPNetUnit(nn.Module):
    """``y = x + repmlp_block(prebn1(x))``, ``out = y + ffn_block(prebn2(y))``."""

    def __init__(self, channels: int, h: int, w: int, reparam_conv_k: Sequence[int] = (1, 3),
                 globalperceptron_reduce: int = 4, ffn_expand: int = 4, num_sharesets: int = 1,
                 deploy: bool = False):
        super().__init__()
        self.repmlp_block = RepMLPBlock(channels, channels, h, w, reparam_conv_k, globalperceptron_reduce,
                                        num_sharesets, deploy)
        self.ffn_block = FFNBlock(channels, channels * ffn_expand)
        self.prebn1 = nn.BatchNorm2d(channels)
        self.prebn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.repmlp_block(self.prebn1(x))
        return y + self.ffn_block(self.prebn2(y))


def checked_input(x: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """``x`` when its height and width are multiples of ``mh`` and ``mw``; else an error naming the sizes
    that work. torch.fx records it as one call (the check runs on the real input, not the traced shape)."""
    height, width = x.shape[-2], x.shape[-1]
    if height % mh != 0 or width % mw != 0 or height == 0 or width == 0:
        sizes_h = f"{mh}, {2 * mh}, {3 * mh}, {4 * mh}, ..."
        sizes_w = f"{mw}, {2 * mw}, {3 * mw}, {4 * mw}, ..."
        which = (f"height and width must be multiples of {mh} ({sizes_h})" if mh == mw else
                 f"height must be a multiple of {mh} ({sizes_h}) and its width a multiple of {mw} ({sizes_w})")
        raise InvalidArgumentError(
            f"RepMLPNet's blocks cut each stage's feature map into fixed partitions, so the input's {which}; "
            f"got {height}x{width}. Resize or crop to the native {mh}x{mw} (pretrained_cfg['input_size']); "
            f"multiples are computed partition by partition.")
    return x


torch.fx.wrap("checked_input")


class RepMLPNet(RepClassifier):
    """RepMLPNet: ``conv_embedding``, ``stages`` (four :class:`~repzoo.models.base.Stage` of units),
    ``embeds`` (three downsamplings), ``head_norm``, ``head``.

    The state dict lists all of ``stages.*`` before ``embeds.*`` (the reference's registration
    order), while the forward pass interleaves them; features come from each stage's output.
    ``hs``/``ws`` are the stages' partition sizes, ``sharesets_nums`` their FC kernel sets.
    Inputs must have heights and widths that are multiples of :attr:`input_multiple`.
    """

    head_name = "head"
    #: the stages and the downsamplings between them are not registered in the order they run:
    #: ``features_only`` goes through :meth:`forward_intermediates` (timm's ``FeatureGetterNet``)
    feature_cls = "getter"

    def __init__(self, channels: Sequence[int], num_blocks: Sequence[int], hs: Sequence[int],
                 sharesets_nums: Sequence[int], ws: Optional[Sequence[int]] = None,
                 reparam_conv_k: Sequence[int] = (1, 3), globalperceptron_reduce: int = 4, ffn_expand: int = 4,
                 patch_size: int = 4, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 deploy: bool = False):
        super().__init__()
        ws = hs if ws is None else ws
        if not len(channels) == len(num_blocks) == len(hs) == len(ws) == len(sharesets_nums):
            raise InvalidArgumentError("channels, num_blocks, hs, ws and sharesets_nums need one entry per stage")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.patch_size = patch_size
        n = len(channels)
        # The input size the partitions fix: stage s sees the input / (patch · 2^s) and cuts it into hs[s] x ws[s].
        self.input_multiple: Tuple[int, int] = (
            _lcm(patch_size * 2 ** s * hs[s] for s in range(n)), _lcm(patch_size * 2 ** s * ws[s] for s in range(n)))

        self.conv_embedding = conv_bn_relu(in_chans, channels[0], patch_size, patch_size)
        self.stages = nn.ModuleList([
            Stage(*[RepMLPNetUnit(channels[s], hs[s], ws[s], reparam_conv_k, globalperceptron_reduce, ffn_expand,
                                  sharesets_nums[s], deploy) for _ in range(num_blocks[s])])
            for s in range(n)])
        self.embeds = nn.ModuleList([conv_bn_relu(channels[s], channels[s + 1], 2, 2) for s in range(n - 1)])
        self.head_norm = nn.BatchNorm2d(channels[-1])
        self.feature_info = [dict(num_chs=channels[s], reduction=patch_size * 2 ** s, module=f"stages.{s}")
                             for s in range(n)]
        self.num_features = channels[-1]
        self.global_pool = GlobalPool("avg")
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)

    # ------------------------------------------------------------------ input sizes
    def check_input_size(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, or :class:`~repzoo.errors.InvalidArgumentError`, naming the sizes that work, unless the
        input's height and width are multiples of :attr:`input_multiple`."""
        return checked_input(x, self.input_multiple[0], self.input_multiple[1])

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input_size(x)
        x = self.conv_embedding(x)
        for stage, embed in zip(self.stages, self.embeds):
            x = embed(stage(x))
        return self.stages[-1](x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.head_norm(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API (the stage outputs, before ``head_norm``), with the input-size check first."""
        x = self.check_input_size(x)
        return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)

    def _feature_steps(self) -> List[nn.Module]:
        firsts = [self.conv_embedding] + list(self.embeds)
        return [nn.Sequential(first, stage) for first, stage in zip(firsts, self.stages)]

    def group_matcher(self, coarse: bool = False) -> Dict[str, object]:
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return dict(stem=r"^conv_embedding", blocks=[(blocks, None), (r"^embeds\.(\d+)", (99999,)),
                                                     (r"^head_norm", (99999,))])


def _lcm(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def _create(name: str, **kwargs) -> RepMLPNet:
    return RepMLPNet(**VARIANTS[name], **kwargs)


def _register(name: str):
    return register_model(name, family=FAMILY, paper=PAPER, config=VARIANTS[name])


@_register("RepMLPNet-T224")
def repmlpnet_t224(**kwargs) -> RepMLPNet:
    """RepMLPNet-T224: 38.29M train / 38.33M deploy params, 76.62% top-1 at 224."""
    return _create("RepMLPNet-T224", **kwargs)


@_register("RepMLPNet-B224")
def repmlpnet_b224(**kwargs) -> RepMLPNet:
    """RepMLPNet-B224: 68.24M train / 68.33M deploy params, 80.32% top-1 at 224."""
    return _create("RepMLPNet-B224", **kwargs)


@_register("RepMLPNet-T256")
def repmlpnet_t256(**kwargs) -> RepMLPNet:
    """RepMLPNet-T256: 58.69M train / 58.74M deploy params, 77.44% top-1 at 256."""
    return _create("RepMLPNet-T256", **kwargs)


@_register("RepMLPNet-B256")
def repmlpnet_b256(**kwargs) -> RepMLPNet:
    """RepMLPNet-B256: 96.45M train / 96.57M deploy params, 81.03% top-1 at 256."""
    return _create("RepMLPNet-B256", **kwargs)


@_register("RepMLPNet-D256")
def repmlpnet_d256(**kwargs) -> RepMLPNet:
    """RepMLPNet-D256: 86.89M train / 86.99M deploy params, 80.83% top-1 at 256."""
    return _create("RepMLPNet-D256", **kwargs)


@_register("RepMLPNet-L256")
def repmlpnet_l256(**kwargs) -> RepMLPNet:
    """RepMLPNet-L256: 117.64M train / 117.82M deploy params, 81.68% top-1 at 256."""
    return _create("RepMLPNet-L256", **kwargs)


# ----------------------------------------------------------------------------- mmpretrain re-hosts
# mmpretrain's RepMLPNet (mmpretrain/models/backbones/repmlp.py; B224 and B256 converted from the
# authors' 2021 release) holds the same tensors under other module names, one to one:
#   backbone.patch_embed.projection.weight   -> conv_embedding.conv.weight
#   backbone.patch_embed.norm.*              -> conv_embedding.bn.*
#   backbone.stages.{s}.{i}.repmlp_block.gp.conv{1,2}.conv.* -> stages.{s}.{i}.repmlp_block.gp.fc{1,2}.*
#   backbone.stages.{s}.{i}.norm{1,2}.*      -> stages.{s}.{i}.prebn{1,2}.*
#   backbone.stages.{s}.{i}.*  (fc3, fc3_bn, repconv{k}, ffn_block: unchanged) -> stages.{s}.{i}.*
#   backbone.downsample_layers.{s}.*         -> embeds.{s}.*
#   backbone.final_norm.*                    -> head_norm.*
#   head.fc.*                                -> head.*
_MM_PREFIXES = (("backbone.patch_embed.projection.", "conv_embedding.conv."),
                ("backbone.patch_embed.norm.", "conv_embedding.bn."),
                ("backbone.downsample_layers.", "embeds."),
                ("backbone.final_norm.", "head_norm."),
                ("head.fc.", "head."))
_MM_UNIT = ((".repmlp_block.gp.conv1.conv.", ".repmlp_block.gp.fc1."),
            (".repmlp_block.gp.conv2.conv.", ".repmlp_block.gp.fc2."),
            (".norm1.", ".prebn1."), (".norm2.", ".prebn2."))


def _mmpretrain_key(key: str) -> str:
    for old, new in _MM_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    if not key.startswith("backbone.stages."):
        raise KeyError(key)
    key = key[len("backbone."):]
    for old, new in _MM_UNIT:
        if old in key:
            return key.replace(old, new, 1)
    return key


def _is_mmpretrain(keys: Iterable[str]) -> bool:
    return any(k.startswith(("backbone.patch_embed.", "backbone.stages.")) for k in keys)


@register_key_adapter("mmpretrain", FAMILY, detect=_is_mmpretrain)
def mmpretrain_to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An mmpretrain ``RepMLPNet`` classifier state dict with DingXiaoH/RepMLP's key names (the table above)."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        try:
            out[_mmpretrain_key(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise IncompatibleCheckpointError(
            f"{len(unknown)} keys are not those of an mmpretrain RepMLPNet classifier (e.g. {', '.join(unknown[:5])}); "
            "is this a checkpoint of another model?")
    return out
