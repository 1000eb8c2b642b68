"""The model contract every repzoo classifier follows (timm's surface)."""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidArgumentError
from ..layers.pool import GlobalPool
from ..reparam import is_deploy

__all__ = ["RepClassifier", "StagedClassifier", "VGGStyleClassifier", "Stage", "feature_indices"]


class Stage(nn.Sequential):
    """A stage of blocks: an ``nn.Sequential`` (keys ``<stage>.<i>.*``) that runs its blocks through
    activation checkpointing when ``grad_checkpointing`` is set and the model trains.

    Models call stages as modules, never their blocks one by one, so hooks on a stage (FSDP2's
    ``fully_shard`` per stage, say) run.
    """

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and self.training:
            for block in self:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        for block in self:
            x = block(x)
        return x


class RepClassifier(nn.Module):
    """Base of every classification model.

    A subclass sets ``num_classes``, ``num_features`` (the width ``forward_features`` returns),
    ``feature_info``, ``head_name`` (the attribute holding the final ``nn.Linear``) and
    ``drop_rate``, builds its head with :meth:`_make_head`, and implements ``forward_features``;
    it may set ``head_hidden_size`` (the width of the pre-logits, when the head adds a layer),
    ``train_only_prefixes`` (state-dict prefixes of modules dropped at deploy), ``input_multiple``
    and ``feature_cls`` (below), and override :meth:`drop_train_only_modules`.
    """

    head_name = "linear"
    train_only_prefixes: Tuple[str, ...] = ()
    grad_checkpointing = False
    #: the input's height and width must be multiples of these (RepMLPNet: its native resolution)
    input_multiple: Tuple[int, int] = (1, 1)
    #: how ``create_model(features_only=True)`` wraps the model: ``"list"`` (timm's ``FeatureListNet``,
    #: for models whose feature modules run in registration order) or ``"getter"`` (``FeatureGetterNet``,
    #: through :meth:`forward_intermediates`)
    feature_cls = "list"
    #: the attribute holding the :class:`~repzoo.layers.GlobalPool` (``global_pool=''`` leaves the map unpooled)
    pool_name = "global_pool"
    #: True where the head pools before a layer of its own (RepGhostNet's ``conv_head``, as timm's GhostNet):
    #: with ``global_pool=''`` that layer then runs on the unpooled map
    pools_early = False
    #: the name of the first convolution's module (timm's ``pretrained_cfg['first_conv']``)
    first_conv = "stage0.rbr_dense.conv"
    __jit_unused_properties__ = ["deploy", "default_cfg", "pre_logits_width", "head_hidden_size"]

    @property
    def deploy(self) -> bool:
        """True when every re-parameterizable block is in its deploy form (and every declared conv-BN pair folded)."""
        return is_deploy(self)

    @property
    def default_cfg(self) -> Dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    @property
    def head_hidden_size(self) -> int:
        """The width of ``forward_head(x, pre_logits=True)``: ``num_features`` unless the head adds a layer."""
        return self.__dict__.get("_head_hidden_size") or self.num_features

    @head_hidden_size.setter
    def head_hidden_size(self, value: int) -> None:
        self.__dict__["_head_hidden_size"] = int(value)

    @property
    def pre_logits_width(self) -> int:
        return self.head_hidden_size

    def set_global_pool(self, global_pool: str) -> None:
        """timm's ``global_pool``: ``'avg'`` (default), ``'max'``, or ``''`` for the unpooled feature map."""
        setattr(self, self.pool_name, GlobalPool(global_pool))

    def head_keys(self) -> List[str]:
        """State-dict keys that depend on ``num_classes``."""
        return [f"{self.head_name}.weight", f"{self.head_name}.bias"]

    def _make_head(self, num_classes: int, like: Optional[torch.Tensor] = None) -> nn.Module:
        """``Linear(pre-logits width, num_classes)``, or ``Identity`` for ``num_classes=0`` (pooled features)."""
        if num_classes <= 0:
            return nn.Identity()
        kw = {} if like is None else dict(device=like.device, dtype=like.dtype)
        return nn.Linear(self.pre_logits_width, num_classes, **kw)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh head for ``num_classes`` (0: ``forward`` returns the pooled pre-logits); ``global_pool``
        (timm's): ``'avg'``, ``'max'``, or ``''`` (with 0 classes, ``forward`` returns the unpooled map)."""
        if global_pool is not None:
            self.set_global_pool(global_pool)
        self.num_classes = num_classes
        setattr(self, self.head_name, self._make_head(num_classes, next(self.parameters())))
        if hasattr(self, "pretrained_cfg"):
            self.pretrained_cfg = dict(self.pretrained_cfg, num_classes=num_classes)

    @torch.jit.ignore
    def cfg_fields(self, input_size: Sequence[int]) -> Dict[str, Any]:
        """The pretrained-cfg fields timm derives from the model: ``pool_size`` (the final map at
        ``input_size``), ``first_conv`` (the modules whose ``.weight`` takes the input channels),
        ``classifier`` (the head), and for models whose input size is fixed by their blocks,
        ``fixed_input_size`` / ``min_input_size``."""
        reduction = self.feature_info[-1]["reduction"]
        out = dict(pool_size=tuple(-(-int(s) // reduction) for s in input_size[1:]), classifier=self.head_name)
        in_chans = getattr(self, "in_chans", 3)
        takes_input = [k for k, v in self.state_dict().items() if v.dim() == 4 and v.shape[1] == in_chans]
        first = [k[: -len(".weight")] for k in takes_input if k.endswith(".weight")]
        if takes_input and not first:  # OREPA's train-form stem composes its kernel from parameters of its own
            first = [takes_input[0].rpartition(".")[0]]
        if first:  # the convs of the stem: those under the first module that takes the input
            top = first[0].split(".")[0]
            out["first_conv"] = tuple(k for k in first if k.split(".")[0] == top)
            if len(out["first_conv"]) == 1:
                out["first_conv"] = out["first_conv"][0]
        multiple = tuple(getattr(self, "input_multiple", (1, 1)))
        if multiple != (1, 1):
            # only multiples of the native size run: timm's generic tests and tools then keep the native size
            out.update(fixed_input_size=True, min_input_size=(in_chans, *multiple))
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, Stage):
                module.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stage0", blocks=r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.linear(x)  # families with another head_name override this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_modules(self) -> List[nn.Module]:
        """The modules, in order, whose outputs :attr:`feature_info` describes (the stages)."""
        return [self.get_submodule(info["module"]) for info in self.feature_info]

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: the feature maps of the stages in ``indices`` (default all; an int ``n``
        means the last ``n``), and unless ``intermediates_only`` the final features too."""
        if output_fmt != "NCHW":
            raise ValueError(f"only output_fmt='NCHW' is supported, not {output_fmt!r}")
        take = feature_indices(indices, len(self.feature_info))
        outs: List[torch.Tensor] = []
        for i, step in enumerate(self._feature_steps()):
            x = step(x)
            if i in take:
                outs.append(x)
            if stop_early and i >= max(take):
                break
        return outs if intermediates_only else (x, outs)

    def _feature_steps(self) -> List[nn.Module]:
        """Modules that take the input from one feature level to the next; the last one's output is
        ``forward_features``'s (default: the feature modules, for models whose stages chain)."""
        return self.feature_modules()

    def drop_train_only_modules(self) -> None:
        """Delete modules that exist only for training (called by ``repzoo.reparameterize``)."""
        for prefix in self.train_only_prefixes:
            name = prefix.rstrip(".")
            if hasattr(self, name):
                delattr(self, name)


def feature_indices(indices: Optional[Union[int, Sequence[int]]], n: int) -> List[int]:
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise InvalidArgumentError(f"indices={indices}: this model has {n} feature levels")
        return list(range(n - indices, n))
    out = []
    for i in indices:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise InvalidArgumentError(f"feature index {i} is out of range: this model has {n} feature levels "
                                       f"(0..{n - 1}, or -{n}..-1 from the end)")
        out.append(j)
    return out


class StagedClassifier(RepClassifier):
    """A stem ``stage0``, four :class:`Stage` s ``stage1..4`` (stage ``s`` at stride ``2^(s+1)``), then
    ``global_pool``, ``head_drop`` and ``linear``: the body of RepVGG, RepOpt-VGG and OREPA's networks."""

    def _add_stages(self, stages: Sequence[Sequence[nn.Module]], widths: Sequence[int], num_classes: int,
                    drop_rate: float) -> None:
        """Add ``stage1..`` from their blocks and output widths (extending :attr:`feature_info`), then the head."""
        for s, (blocks, width) in enumerate(zip(stages, widths), start=1):
            self.add_module(f"stage{s}", Stage(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (s + 1), module=f"stage{s}"))
        self.num_features = widths[-1]
        self.global_pool = GlobalPool("avg")
        self.head_drop = nn.Dropout(drop_rate)
        self.linear = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        return self.stage4(x)


class VGGStyleClassifier(StagedClassifier):
    """The VGG-style body shared by RepVGG and RepOpt-VGG.

    ``stage0`` (one block, stride 2), ``stage1..4`` (:class:`Stage`, first block stride 2),
    ``global_pool``, ``head_drop``, ``linear``. ``make_block(in_ch, out_ch, stride, layer, index)`` builds
    each block; ``layer`` counts blocks from 1 (stage0 is 0), ``index`` is the position in its stage.
    """

    def _build_body(self, widths: Sequence[int], num_blocks: Sequence[int], make_block: Callable[..., nn.Module],
                    num_classes: int, in_chans: int, drop_rate: float) -> None:
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.stage0 = make_block(in_chans, widths[0], 2, 0, 0)
        self.feature_info = [dict(num_chs=widths[0], reduction=2, module="stage0")]
        stages, in_ch, layer = [], widths[0], 1
        for n, out_ch in zip(num_blocks, widths[1:]):
            blocks = []
            for i in range(n):
                blocks.append(make_block(in_ch, out_ch, 2 if i == 0 else 1, layer, i))
                in_ch, layer = out_ch, layer + 1
            stages.append(blocks)
        self._add_stages(stages, widths[1:], num_classes, drop_rate)
