"""``repzoo validate``: a model's top-1 / top-5 / loss on an image folder, in one form or both.

The eval transform is the model's pretrained config (timm's ``resolve_data_config``), with ``image_size`` /
``crop_pct`` / ``interpolation`` overriding it. ``both_forms`` runs the train-time form and its conversion
over the same batches and counts the predictions that differ (the goal is 0).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

from ..errors import RepZooError
from ..machine import machine
from .data import ImageFolderDataset, class_indices, scan_image_folder

__all__ = ["ValidationResult", "validate"]


@dataclass
class ValidationResult:
    """What ``validate`` measured (percentages for top-1 / top-5; ``loss`` is the mean cross-entropy)."""

    model: str
    form: str
    images: int
    top1: float
    top5: float
    loss: float
    images_per_second: float
    seconds: float
    data_config: Dict[str, Any]
    machine: Dict[str, Any]
    skipped_images: List[str] = field(default_factory=list)
    deploy_top1: Optional[float] = None  #: with ``both_forms``: the converted form's top-1
    differing_predictions: Optional[int] = None  #: with ``both_forms``: top-1 predictions that differ

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def __str__(self) -> str:
        lines = [f"{self.model} ({self.form} form) on {self.images} images: top-1 {self.top1:.2f}  "
                 f"top-5 {self.top5:.2f}  loss {self.loss:.4f}  {self.images_per_second:.1f} img/s"]
        if self.differing_predictions is not None:
            lines.append(f"deploy form: top-1 {self.deploy_top1:.2f}, {self.differing_predictions} of {self.images} "
                         "predictions differ from the train form")
        if self.skipped_images:
            lines.append(f"skipped {len(self.skipped_images)} unreadable file(s), first: {self.skipped_images[0]}")
        m = self.machine
        lines.append(f"on {m['cpu']} ({m['cores']} cores, {m['threads']} threads, {' '.join(m['flags']) or 'no AVX2'}"
                     + (f", {m['gpu']}" if m.get("gpu") else "") + f"), torch {m['torch']}, {m['device']}")
        return "\n".join(lines)


def _build(model: str, *, checkpoint, pretrained, deploy: bool, num_classes: Optional[int]):
    from ..factory import create_model

    kwargs: Dict[str, Any] = dict(deploy=deploy)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint is not None:
        if pretrained:
            raise RepZooError("Pass either a checkpoint or pretrained weights, not both.")
        kwargs["checkpoint_path"] = checkpoint
    elif pretrained:
        kwargs["pretrained"] = True
        if isinstance(pretrained, str):
            kwargs["tag"] = pretrained
    return create_model(model, **kwargs)


def validate(model: str, data, *, checkpoint=None, pretrained: Union[bool, str] = False, deploy: bool = False,
             both_forms: bool = False, num_classes: Optional[int] = None, class_map: Optional[str] = None,
             batch_size: int = 64, workers: int = 2, image_size: Optional[int] = None,
             crop_pct: Optional[float] = None, interpolation: Optional[str] = None, bf16: bool = False,
             channels_last: bool = False, device: str = "cpu", on_bad_image: str = "stop",
             progress: bool = True) -> ValidationResult:
    """Evaluate ``model`` (a registered name) on the image folder ``data`` (``data/<class>/<image>``).

    Weights: ``checkpoint`` (any file repzoo reads: the authors' train or deploy files, timm-keyed files,
    repzoo's own training output) or ``pretrained`` (``True`` or a tag). ``deploy`` evaluates the converted
    form; ``both_forms`` the train form and its conversion, over the same batches. ``num_classes``: the
    head's size (default: the checkpoint's, or the number of class folders when they are not ImageNet synsets).
    ``on_bad_image``: ``'stop'`` (a :class:`RepZooError` naming the file) or ``'skip'`` (left out, counted).
    """
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..registry import get_model_entry
    from ..reparam import reparameterize

    model = get_model_entry(model).name  # an unknown name fails first, with suggestions
    if both_forms and deploy:
        raise RepZooError("both_forms evaluates the train form and its conversion: leave out deploy.")
    index = scan_image_folder(data, on_bad_image=on_bad_image)
    if num_classes is None and checkpoint is None and not pretrained:
        num_classes = 1000 if (index.synsets or class_map) else len(index.classes)
    if num_classes is None and checkpoint is not None and not index.synsets and class_map is None:
        num_classes = len(index.classes)
    net = _build(model, checkpoint=checkpoint, pretrained=pretrained, deploy=deploy, num_classes=num_classes)
    mapping = class_indices(index, net.num_classes, class_map)
    overrides = {"input_size": (3, image_size, image_size) if image_size else None, "crop_pct": crop_pct,
                 "interpolation": interpolation}
    config = resolve_data_config({k: v for k, v in overrides.items() if v is not None}, model=net)
    transform = create_transform(**config)
    dataset = ImageFolderDataset(index, transform, mapping, config["input_size"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         persistent_workers=False)

    dev = torch.device(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    forms = [net.eval()]
    if both_forms:
        forms.append(reparameterize(copy.deepcopy(net)).eval())
    forms = [f.to(dev, memory_format=memory) for f in forms]
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    correct1, correct5, loss_sum, seen, differ = [0] * len(forms), [0] * len(forms), 0.0, 0, 0
    skipped: List[str] = []
    compute = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), unit="img", desc=f"validate {model}", leave=False)
    start = time.perf_counter()
    position = 0
    with torch.no_grad():
        for images, targets, ok in loader:
            paths = [dataset.samples[position + i][0] for i in range(len(targets))]
            position += len(targets)
            if not bool(ok.all()):
                bad = [p for p, good in zip(paths, ok.tolist()) if not good]
                if on_bad_image == "stop":
                    raise RepZooError(f"Cannot decode {bad[0]}: remove or replace it, or pass --on-bad-image skip "
                                      "to leave such files out (they are counted).")
                skipped += bad
                images, targets = images[ok], targets[ok]
                if not len(targets):
                    continue
            images, targets = images.to(dev, memory_format=memory), targets.to(dev)
            t0 = time.perf_counter()
            with autocast:
                outputs = [form(images).float() for form in forms]
            compute += time.perf_counter() - t0
            for i, out in enumerate(outputs):
                top = out.topk(min(5, out.shape[1]), dim=1).indices
                correct1[i] += int((top[:, 0] == targets).sum())
                correct5[i] += int((top == targets[:, None]).any(dim=1).sum())
            loss_sum += float(torch.nn.functional.cross_entropy(outputs[0], targets, reduction="sum"))
            if both_forms:
                differ += int((outputs[0].argmax(1) != outputs[1].argmax(1)).sum())
            seen += len(targets)
            if bar is not None:
                bar.update(len(paths))
    if bar is not None:
        bar.close()
    if seen == 0:
        raise RepZooError(f"None of the {len(dataset)} images of {data} could be decoded.")
    pct = 100.0 / seen
    return ValidationResult(
        model=model, form="deploy" if deploy else "train", images=seen, top1=correct1[0] * pct, top5=correct5[0] * pct,
        loss=loss_sum / seen, images_per_second=seen * len(forms) / compute if compute else float("nan"),
        seconds=time.perf_counter() - start, data_config={k: config[k] for k in sorted(config)},
        machine=machine(device), skipped_images=skipped + index.not_images,
        deploy_top1=correct1[1] * pct if both_forms else None, differing_predictions=differ if both_forms else None)
