"""``repzoo validate`` / ``repzoo.train.validate`` on a real image set (scikit-learn's digits written as an
image folder), checked against a plain loop over the same files, and its refusals of bad folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import repzoo
from repzoo import RepZooError
from repzoo.cli import main
from repzoo.train import scan_image_folder, validate, write_digits_folder
from repzoo.train.data import class_indices

from conftest import randomize_bn


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    counts = write_digits_folder(root)
    return root, counts


def small_val(digits, tmp_path, per_class=6):
    """A copy of the first ``per_class`` val images of each digit (a quick folder to break)."""
    root, _ = digits
    out = tmp_path / "val"
    for d in sorted((root / "val").iterdir()):
        (out / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_class]:
            shutil.copy(f, out / d.name / f.name)
    return out


def test_digits_are_written_as_a_fixed_80_20_image_folder(digits, tmp_path):
    root, counts = digits
    assert counts == {"train": 1438, "val": 359} and sum(counts.values()) == 1797  # sklearn's 1,797 digits
    for split in ("train", "val"):
        assert sorted(p.name for p in (root / split).iterdir()) == [str(i) for i in range(10)]
    per_class = {d.name: len(list(d.iterdir())) for d in (root / "val").iterdir()}
    assert all(34 <= n <= 38 for n in per_class.values()), per_class  # 20 % of each digit's 174 to 183
    with Image.open(next((root / "val" / "3").iterdir())) as img:
        assert img.mode == "RGB" and img.size == (32, 32)
    again = tmp_path / "again"
    write_digits_folder(again)  # the same seed gives the same split, image for image
    assert sorted(p.name for p in (again / "val" / "7").iterdir()) == sorted(p.name for p in (root / "val" / "7").iterdir())


def _reference_top1(model, folder, size):
    """Top-1 by a plain loop: PIL, the transform timm makes from the model's config, one image at a time."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({"input_size": (3, size, size)}, model=model))
    correct = total = 0
    with torch.no_grad():
        for label, d in enumerate(sorted(folder.iterdir(), key=lambda p: p.name)):
            for f in sorted(d.iterdir()):
                with Image.open(f) as img:
                    pred = model(transform(img.convert("RGB"))[None]).argmax(1).item()
                correct += pred == label
                total += 1
    return 100.0 * correct / total, total


def test_top1_and_both_forms_match_a_plain_loop(digits, tmp_path):
    """A checkpoint in the authors' training format ({'model': sd}) for a 10-class head, validated in the train form,
    both forms and the deploy form: the same top-1 as a plain loop, and 0 differing predictions."""
    folder = small_val(digits, tmp_path)
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model("RepVGG-A0", num_classes=10), torch.Generator().manual_seed(1)).eval()
    ckpt = tmp_path / "train.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, ckpt)
    expected, n = _reference_top1(model, folder, 32)
    assert n == 60 and 0 < expected < 100  # not a degenerate model: some right, some wrong
    both = validate("RepVGG-A0", folder, checkpoint=ckpt, both_forms=True, image_size=32, workers=0, progress=False)
    assert both.images == 60 and both.top1 == pytest.approx(expected)
    assert both.differing_predictions == 0 and both.deploy_top1 == pytest.approx(expected)
    assert both.top1 <= both.top5 <= 100 and both.loss > 0 and both.images_per_second > 0
    assert both.data_config["input_size"] == (3, 32, 32) and both.machine["cores"] >= 1
    deploy = validate("RepVGG-A0", folder, checkpoint=ckpt, deploy=True, image_size=32, workers=2, batch_size=7,
                      progress=False)
    assert deploy.form == "deploy" and deploy.top1 == pytest.approx(expected)


def test_the_command_reports_json(digits, tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["data", "digits", str(out)]) == 0
    assert "1438 train and 359 val" in capsys.readouterr().out
    folder = small_val((out, None), tmp_path, per_class=2)
    assert main(["validate", str(folder), "--model", "RepVGG-A0", "--image-size", "32", "--both-forms", "--json",
                 "--quiet", "--workers", "0", "--crop-pct", "1.0", "--interpolation", "bicubic"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 20 and report["differing_predictions"] == 0
    assert report["data_config"]["crop_pct"] == 1.0 and report["data_config"]["interpolation"] == "bicubic"
    assert set(report) >= {"top1", "top5", "loss", "images_per_second", "machine"}


def test_bad_folders_get_clear_errors(digits, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepZooError, match="no class sub-folders"):
        scan_image_folder(empty)
    (empty / "cat").mkdir()
    with pytest.raises(RepZooError, match="holds no images"):
        scan_image_folder(empty)

    folder = small_val(digits, tmp_path, per_class=2)
    (folder / "4" / "notes.txt").write_text("not an image")
    with pytest.raises(RepZooError, match=r"1 file\(s\) that are not images .*notes.txt.*--on-bad-image skip"):
        validate("RepVGG-A0", folder, image_size=32, workers=0, progress=False)
    (folder / "5" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["validate", str(folder), "--model", "RepVGG-A0", "--image-size", "32", "--quiet",
                 "--on-bad-image", "skip", "--workers", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 20 and sorted(p.rsplit("/", 1)[1] for p in report["skipped_images"]) == \
        ["broken.png", "notes.txt"]
    (folder / "4" / "notes.txt").unlink()
    rc = main(["validate", str(folder), "--model", "RepVGG-A0", "--image-size", "32", "--quiet", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "Cannot decode" in err and "broken.png" in err and "Traceback" not in err

    (folder / "5" / "broken.png").unlink()
    ckpt = tmp_path / "ten.pth"
    torch.save(repzoo.create_model("RepVGG-A0", num_classes=10).state_dict(), ckpt)
    (folder / "extra").mkdir()
    shutil.copy(next((folder / "1").iterdir()), folder / "extra" / "x.png")
    with pytest.raises(RepZooError, match="11 classes"):  # the head of the checkpoint has 10
        validate("RepVGG-A0", folder, checkpoint=ckpt, num_classes=10, image_size=32, workers=0, progress=False)


def test_synset_folders_take_their_imagenet_index_and_a_class_map_its_lines(tmp_path):
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    assert len(synsets) == 1000 and synsets[0] == "n01440764" and synsets == sorted(synsets)
    for name in (synsets[0], synsets[391], synsets[999]):  # a subset keeps each synset's own index
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name / "a.png")
    index = scan_image_folder(tmp_path / "val")
    assert index.synsets
    assert class_indices(index, 1000) == {synsets[0]: 0, synsets[391]: 391, synsets[999]: 999}
    cmap = tmp_path / "classes.txt"
    cmap.write_text("\n".join([synsets[999], "other", synsets[0], synsets[391]]) + "\n")
    assert class_indices(index, 4, str(cmap)) == {synsets[999]: 0, synsets[0]: 2, synsets[391]: 3}
    cmap.write_text(synsets[0] + "\n")
    with pytest.raises(RepZooError, match="does not name"):
        class_indices(index, 1000, str(cmap))
    with pytest.raises(RepZooError, match="has 3 classes .* head has 2"):
        class_indices(index, 2)


def test_the_guide_commands_run(tmp_path, monkeypatch, capsys):
    """docs/guides/validation.md's shell commands, run as written (in a fresh folder)."""
    from conftest import run_shell_commands

    monkeypatch.chdir(tmp_path)
    run_shell_commands("docs/guides/validation.md", expected=2)
    out = capsys.readouterr().out
    assert "wrote 1438 train and 359 val images" in out and "0 of 359 predictions differ" in out
