"""Image folders as ImageNet's val split lays them out: one sub-folder per class, class names sorted.

``scan_image_folder`` reads the layout once and refuses what would fail half-way through a run (no folder,
no classes, no images, files that are not images); ``ImageFolderDataset`` decodes lazily and never raises in
a worker: an image that cannot be decoded comes back flagged, for the loop to stop on or to skip and count.
``write_digits_folder`` writes scikit-learn's handwritten digits (1,797 real 8x8 scans) as such a folder.

Training splits the data path as timm's ``create_loader`` does with its prefetcher: the workers run the
augmentation (``train_transform``) and hand over uint8 images; the main process turns the batch to float,
normalizes it and applies random erasing (:class:`BatchPrep`), one vectorized pass instead of one per image.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import RepZooError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderIndex", "scan_image_folder", "class_indices", "ImageFolderDataset",
           "EpochSampler", "decode_image", "decoded_bytes", "CACHE_BUDGET", "cache_fits", "train_transform",
           "BatchPrep", "write_digits_folder"]

#: what torchvision's ImageFolder and timm's readers take as images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SYNSET = re.compile(r"n\d{8}")


@dataclass
class ImageFolderIndex:
    """The classes (sorted folder names) and ``(path, class position)`` samples of an image folder."""

    root: Path
    classes: List[str]
    samples: List[Tuple[str, int]]
    not_images: List[str] = field(default_factory=list)

    @property
    def synsets(self) -> bool:
        """Whether every class folder is named by an ImageNet synset (``n01440764``)."""
        return all(_SYNSET.fullmatch(c) for c in self.classes)


def scan_image_folder(root, *, on_bad_image: str = "stop") -> ImageFolderIndex:
    """The layout of ``root``, or a :class:`RepZooError` saying what is wrong with it.

    Files that are not images (by extension) are refused with ``on_bad_image='stop'``, listed in
    ``not_images`` and left out with ``'skip'``. Hidden files (``.DS_Store``) are ignored.
    """
    if on_bad_image not in ("stop", "skip"):
        raise RepZooError(f"on_bad_image must be 'stop' or 'skip', not {on_bad_image!r}")
    root = Path(root)
    if not root.is_dir():
        raise RepZooError(f"{root} is not a folder: pass a folder with one sub-folder of images per class "
                          "(as ImageNet's val split: val/n01440764/*.JPEG ...).")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise RepZooError(f"{root} has no class sub-folders: put the images of each class in a folder of its own "
                          f"({root}/<class>/<image>.jpg).")
    samples, not_images = [], []
    for position, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for file in sorted(filenames):
                if file.startswith("."):
                    continue
                path = os.path.join(dirpath, file)
                (samples if file.lower().endswith(IMAGE_EXTENSIONS) else not_images).append(
                    (path, position) if file.lower().endswith(IMAGE_EXTENSIONS) else path)
    if not_images and on_bad_image == "stop":
        shown = ", ".join(not_images[:3]) + (f" and {len(not_images) - 3} more" if len(not_images) > 3 else "")
        raise RepZooError(f"{root} holds {len(not_images)} file(s) that are not images ({shown}): remove them, "
                          f"or pass --on-bad-image skip to leave them out. Images are {', '.join(IMAGE_EXTENSIONS)}.")
    if not samples:
        raise RepZooError(f"{root} holds no images in its {len(classes)} class folder(s): images are "
                          f"{', '.join(IMAGE_EXTENSIONS)} files.")
    return ImageFolderIndex(root, classes, samples, not_images)


def class_indices(index: ImageFolderIndex, num_classes: int, class_map: Optional[str] = None) -> Dict[str, int]:
    """The head's index of each class folder.

    - ``class_map``: a text file of class names, one per line; a folder's index is its line (timm's
      ``--class-map``);
    - folders named by ImageNet synsets, for a 1000-class head: the ImageNet-1k index (the synsets sorted,
      as the authors' ``test.py`` and timm's ``validate.py`` have it; a subset of the 1000 folders keeps its
      indices);
    - otherwise the folders sorted, 0 … N-1.
    """
    if class_map is not None:
        try:
            names = [ln.strip() for ln in Path(class_map).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise RepZooError(f"Cannot read the class map {class_map}: {err}") from None
        where = {n: i for i, n in enumerate(names)}
        missing = [c for c in index.classes if c not in where]
        if missing:
            raise RepZooError(f"The class map {class_map} does not name the folder(s) {', '.join(missing[:5])}: "
                              "it needs one line per class name.")
        mapping = {c: where[c] for c in index.classes}
    elif index.synsets and num_classes == 1000:
        from timm.data import ImageNetInfo

        order = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
        unknown = [c for c in index.classes if c not in order]
        if unknown:
            raise RepZooError(f"{', '.join(unknown[:5])} are not ImageNet-1k synsets: pass --class-map.")
        mapping = {c: order[c] for c in index.classes}
    else:
        mapping = {c: i for i, c in enumerate(index.classes)}
    top = max(mapping.values())
    if top >= num_classes:
        raise RepZooError(f"{index.root} has {len(index.classes)} classes (largest index {top}) but the model's "
                          f"head has {num_classes}: pass --num-classes {len(index.classes)} for a model trained on "
                          "these classes, or --class-map to place them in the head's classes.")
    return mapping


class ImageFolderDataset:
    """``(image tensor, class index, ok)``; a file that cannot be decoded gives ``ok=False`` and a blank image.

    ``with_index``: ``(image, class index, ok, sample index)``, to name the file a shuffled batch could not decode.
    A key ``(epoch, i)`` (what :class:`EpochSampler` yields) seeds ``random`` and torch from both before the
    transform: an image's augmentation depends on its epoch alone, whatever the worker, the number of workers
    or processes, or a resume. ``cache_images``: keep each decoded image in memory after its first decode (in
    each loader worker: a copy per worker), for folders that fit; decoding is most of the data path's work.
    """

    def __init__(self, index: ImageFolderIndex, transform: Callable, mapping: Dict[str, int], blank_shape: Sequence[int],
                 with_index: bool = False, blank_dtype: str = "float32", cache_images: bool = False):
        self.samples = [(p, mapping[index.classes[c]]) for p, c in index.samples]
        self.transform, self.blank_shape, self.with_index = transform, tuple(blank_shape), with_index
        self.blank_dtype = blank_dtype  #: the dtype the transform returns ('uint8' for `train_transform`)
        self.cache: Optional[Dict[int, Any]] = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            import random

            import torch

            epoch, key = key
            seed = (int(epoch) * 1_000_003 + int(key)) % (2**62)
            random.seed(seed)
            torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from (~1 us)
        item = self._load(key)
        return (*item, key) if self.with_index else item

    def _load(self, i: int):
        import torch
        from PIL import Image

        path, target = self.samples[i]
        try:
            cached = self.cache.get(i) if self.cache is not None else None
            if cached is not None:
                return self.transform(cached.copy()), target, True  # the transform gets a copy it may change
            img = decode_image(path)
            if self.cache is not None:
                self.cache[i] = img.copy()
            return self.transform(img), target, True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            return torch.zeros(self.blank_shape, dtype=getattr(torch, self.blank_dtype)), target, False


def decode_image(path: str):
    """The RGB image in ``path``, decoded; PIL's decompression-bomb warning is an error here."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            return img.convert("RGB")


def decoded_bytes(index: ImageFolderIndex) -> Optional[int]:
    """The memory the folder's images take decoded (RGB), judged by the first image's size (read from its
    header), or None when that image cannot be read."""
    from PIL import Image

    try:
        with Image.open(index.samples[0][0]) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return len(index.samples) * width * height * 3


#: the most memory the loaders' image caches take by default (``repzoo train``'s ``cache_images=None``)
CACHE_BUDGET = 1 << 30


def cache_fits(indexes: Sequence[ImageFolderIndex], workers: int, budget: int = CACHE_BUDGET) -> bool:
    """Whether every loader worker's decoded copy of its split (``indexes``: the splits of a run) fits in
    ``budget`` bytes, all of them together: the rule ``repzoo train`` caches decoded images by."""
    sizes = [decoded_bytes(index) for index in indexes]
    return None not in sizes and sum(sizes) * max(workers, 1) <= budget


def train_transform(recipe, image_size: int, mean: Optional[Sequence[float]] = None,
                    interpolation: str = "bilinear") -> Callable:
    """The recipe's training augmentation in the workers: timm's ``create_transform`` with ``use_prefetcher``
    (random resized crop, flip, colour jitter, RandAugment filling with ``mean``; PIL image in, uint8 CHW
    tensor out). Normalizing and random erasing are left to :class:`BatchPrep`, on the batch."""
    from timm.data import create_transform

    return create_transform(input_size=(3, image_size, image_size), is_training=True, use_prefetcher=True,
                            **({"mean": tuple(mean)} if mean is not None else {}),
                            scale=recipe.scale, hflip=recipe.hflip, color_jitter=recipe.color_jitter or None,
                            auto_augment=recipe.auto_augment or None, interpolation=interpolation)


class BatchPrep:
    """A uint8 batch from the workers made the model's input on ``device``: float, normalized by ``mean`` /
    ``std`` (0-1 scale, as a pretrained config gives them), random erasing with probability ``reprob`` (timm's
    ``RandomErasing``, per-pixel noise, as timm's ``PrefetchLoader`` applies it), then ``channels_last``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, device, reprob: float = 0.0,
                 channels_last: bool = False):
        import torch

        self.device = torch.device(device)
        self.mean = torch.tensor([255.0 * m for m in mean], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor([255.0 * s for s in std], device=self.device).view(1, -1, 1, 1)
        self.erase = None
        if reprob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(probability=reprob, mode="pixel", device=self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x):
        x = x.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous(memory_format=self.memory_format)


class EpochSampler:
    """``torch.utils.data.DistributedSampler``'s indices (one shuffle per epoch, this process's share) as
    ``(epoch, index)`` keys, for :class:`ImageFolderDataset` to seed each image's augmentation by."""

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        from torch.utils.data import DistributedSampler

        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch = self.inner.epoch
        return ((epoch, i) for i in self.inner)


def write_digits_folder(root, *, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, int]:
    """Write scikit-learn's handwritten digits (1,797 labelled 8x8 scans, 10 classes) as ``root/train/<digit>/`` and
    ``root/val/<digit>/`` PNGs, ``size`` px RGB, split at random (``seed``) with ``val_fraction`` in val per class.

    Needs scikit-learn (``pip install repzoo[train]``). Returns the number of images of each split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RepZooError("The digits come with scikit-learn: pip install 'repzoo[train]' (or scikit-learn).") from None
    import numpy as np
    from PIL import Image

    from ..weights.files import atomic_path

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = Path(root) / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                gray = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
                img = Image.fromarray(gray, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
                with atomic_path(folder / f"{i:04d}.png", "an image") as tmp:
                    img.save(tmp, format="PNG")
                counts[split] += 1
    return counts
