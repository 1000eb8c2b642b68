"""The training data path: uint8 out of the workers, normalized and erased on the batch, decoded images cached."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from repzoo.cli import build_parser
from repzoo.train import get_recipe, scan_image_folder, write_digits_folder
from repzoo.train.data import (CACHE_BUDGET, BatchPrep, ImageFolderDataset, cache_fits, class_indices, decoded_bytes,
                               train_transform)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_folder(root)
    return root


def test_the_batch_is_what_timms_per_image_transform_makes(folder):
    """uint8 images normalized on the batch equal timm's ToTensor + Normalize of the same augmented images."""
    from timm.data import create_transform

    index = scan_image_folder(folder / "train")
    rec = get_recipe("repvgg")
    kwargs = dict(input_size=(3, 32, 32), is_training=True, scale=rec.scale, hflip=rec.hflip, color_jitter=None,
                  interpolation="bilinear")
    per_image = ImageFolderDataset(index, create_transform(**kwargs, mean=MEAN, std=STD), class_indices(index, 10),
                                   (3, 32, 32))
    split = ImageFolderDataset(index, train_transform(rec, 32, MEAN), class_indices(index, 10), (3, 32, 32),
                               blank_dtype="uint8")
    keys = [(3, i) for i in range(0, 64, 4)]  # (epoch, image): the same augmentation in both
    want = torch.stack([per_image[k][0] for k in keys])
    raw = torch.stack([split[k][0] for k in keys])
    assert raw.dtype == torch.uint8
    got = BatchPrep(MEAN, STD, device="cpu")(raw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert BatchPrep(MEAN, STD, device="cpu", channels_last=True)(raw).is_contiguous(memory_format=torch.channels_last)


def test_random_erasing_runs_on_the_batch_as_timms_prefetcher_does(folder):
    raw = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    plain = BatchPrep(MEAN, STD, device="cpu")(raw)
    torch.manual_seed(0)
    erased = BatchPrep(MEAN, STD, device="cpu", reprob=1.0)(raw)
    changed = (erased != plain).flatten(1).any(1)
    assert bool(changed.all())  # probability 1: every image has an erased box
    assert float((erased != plain).float().mean()) < 0.5  # a box, not the whole image


def test_decoded_images_are_cached_and_the_cache_gives_the_same_tensors(folder, tmp_path):
    shutil.copytree(folder / "train", tmp_path / "train")
    index = scan_image_folder(tmp_path / "train")
    tf = train_transform(get_recipe("repvgg"), 32, MEAN)
    cached = ImageFolderDataset(index, tf, class_indices(index, 10), (3, 32, 32), blank_dtype="uint8",
                                cache_images=True)
    plain = ImageFolderDataset(index, tf, class_indices(index, 10), (3, 32, 32), blank_dtype="uint8")
    first = cached[(0, 5)]
    assert torch.equal(first[0], plain[(0, 5)][0]) and first[2]
    os.remove(index.samples[5][0])  # the file is gone: only the cache still has it
    again, gone = cached[(0, 5)], plain[(0, 5)]
    assert again[2] and torch.equal(again[0], first[0])
    assert not gone[2] and gone[0].dtype == torch.uint8 and not gone[0].any()  # a blank, flagged
    assert cached[(1, 5)][2]


def test_the_auto_cache_rule_counts_the_decoded_bytes(folder):
    index = scan_image_folder(folder / "train")
    assert decoded_bytes(index) == len(index.samples) * 32 * 32 * 3
    assert decoded_bytes(index) * 2 * 8 < CACHE_BUDGET  # the digits are cached by default, even with 8 workers
    assert cache_fits([index, index], 8)
    assert not cache_fits([index], 2, budget=decoded_bytes(index) * 2 - 1)  # one byte short
    args = build_parser().parse_args(["train", str(folder), "--model", "RepVGG-A0", "--output", "o"])
    assert args.cache_images is None
    args = build_parser().parse_args(["train", str(folder), "--model", "RepVGG-A0", "--output", "o",
                                      "--no-cache-images"])
    assert args.cache_images is False
