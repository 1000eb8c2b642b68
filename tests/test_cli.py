"""The ``repzoo`` command: list, info, convert, demo (in-process, plus the installed console script)."""
import argparse
import shutil
import subprocess
import sys

import warnings

import pytest
import torch

import repzoo
from repzoo.cli import main

from conftest import randomize_bn, rel_diff


def test_list(capsys):
    assert main(["list", "RepVGG-B2*"]) == 0
    assert capsys.readouterr().out.split() == ["RepVGG-B2", "RepVGG-B2g2", "RepVGG-B2g4"]


def test_info(capsys):
    assert main(["info", "repvgg_a2"]) == 0
    out = capsys.readouterr().out
    assert "RepVGG-A2" in out and "28,210,600" in out and "25,499,944" in out


def test_unknown_name_is_a_clear_error(capsys):
    assert main(["info", "RepVGG-Z9"]) == 2
    assert "Unknown model 'RepVGG-Z9'" in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_convert_writes_verified_deploy_weights(tmp_path, capsys, ext):
    torch.manual_seed(0)
    model = randomize_bn(repzoo.create_model("RepVGG-A0")).eval()
    train_path, out_path = tmp_path / "train.pth", tmp_path / f"deploy.{ext}"
    torch.save({"model": model.state_dict()}, train_path)
    assert main(["convert", "RepVGG-A0", str(train_path), str(out_path)]) == 0
    assert "verified" in capsys.readouterr().out
    sd = repzoo.read_state_dict(out_path)
    assert set(sd) == set(repzoo.create_model("RepVGG-A0", deploy=True).state_dict())
    deploy = repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=out_path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_diff(deploy(x), model(x)) < 1e-5  # float32 weights


def test_convert_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    path = tmp_path / "a1.pth"
    torch.save(repzoo.create_model("RepVGG-A1").state_dict(), path)
    assert main(["convert", "RepVGG-A0", str(path), str(tmp_path / "out.pth")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_demo(capsys):
    assert main(["demo", "RepVGG-A0", "--image-size", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "(equal)" in out and "speed-up" in out and "9,108,968" in out and "8,309,384" in out


def test_console_script_is_installed():
    exe = shutil.which("repzoo")
    cmd = [exe] if exe else [sys.executable, "-m", "repzoo.cli"]
    out = subprocess.run(cmd + ["list", "RepVGG-A0*"], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["RepVGG-A0"]


@pytest.mark.heavy  # a large variant (RepOpt-VGG-B1-hs), converted twice
def test_convert_takes_the_head_size_from_the_checkpoint(tmp_path, capsys):
    """A Hyper-Search model has 100 classes: no option needed, the file says so."""
    torch.manual_seed(0)
    hs = randomize_bn(repzoo.create_model("RepOpt-VGG-B1-hs", num_classes=100)).eval()
    train_path, out_path = tmp_path / "hs.pth", tmp_path / "hs_deploy.safetensors"
    torch.save({"model": hs.state_dict(), "epoch": 239}, train_path)
    assert main(["convert", "RepOpt-VGG-B1-hs", str(train_path), str(out_path)]) == 0
    sd = repzoo.read_state_dict(out_path)
    assert sd["linear.weight"].shape == (100, 2048) and "stage1.0.conv.bias" in sd
    capsys.readouterr()
    # asked for another head: reset, and said so once (two models are built), without a source line
    assert main(["convert", "RepOpt-VGG-B1-hs", str(train_path), str(tmp_path / "x.pth"), "--num-classes", "10"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repzoo: warning: ") and "classifier was reset" in err[0], err
    assert repzoo.read_state_dict(tmp_path / "x.pth")["linear.weight"].shape == (10, 2048)


@pytest.mark.heavy  # a training run (the demo's RepOptimizer trajectory)
def test_demo_of_a_repopt_model_shows_gr_equals_csla_on_the_released_scales(capsys, monkeypatch):
    monkeypatch.setenv("REPZOO_OFFLINE", "1")  # the released scales ship with repzoo
    assert main(["demo", "RepOpt-GhostNet-0.5x", "--image-size", "32", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "(equal)" in out and "RepOptimizer (target model) vs SGD (CSLA model of the released scales)" in out
    assert "the same trajectory" in out and "step 3" in out


# ------------------------------------------------------------------ errors are one line, for every command
# The cases come from the parser itself: every sub-command it has (the ones added later too), every option of
# a checked type (each type carries the values it must refuse), every model argument.

from repzoo import cli_support  # noqa: E402
from repzoo.cli import build_parser  # noqa: E402

MODEL_DESTS = ("name", "model", "models")


def _commands(parser, path=()):
    """``[(("export",), subparser), (("cache", "ls"), ...), ...]``: every runnable sub-command."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, path + (name,))
    return found or [(path, parser)]


COMMANDS = _commands(build_parser())


def _filled(sub, tmp_path, skip=None, model="RepVGG-A0", with_model=False):
    """argv of the required arguments of ``sub`` (and of its model argument, ``with_model``) with plausible
    values (an existing file where one is needed), in the parser's order."""
    existing = tmp_path / "exists.pth"
    existing.write_bytes(b"")
    argv = []
    for action in sub._actions:
        wanted = action.required or (with_model and action.dest in MODEL_DESTS)
        if action.dest == skip or isinstance(action, argparse._HelpAction) or not wanted:
            continue
        value = model if action.dest in MODEL_DESTS else str(existing) if action.type is cli_support.existing_file \
            else str(tmp_path) if action.type is cli_support.existing_folder \
            else str(tmp_path / "out.bin") if action.dest == "output" else str(existing)
        argv += ([action.option_strings[0]] if action.option_strings else []) + [value]
    return argv


def _fails_in_one_line(capsys, argv, code=None):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and (code is None or rc == code), (argv, rc, err)
    assert "Traceback" not in err and lines and lines[-1].startswith("repzoo: error: "), (argv, err)
    return lines[-1]


CHECKED = [(path, action.option_strings[0] if action.option_strings else action.dest, bad)
           for path, sub in COMMANDS for action in sub._actions
           for bad in getattr(action.type, "bad_values", ())]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REPZOO_OFFLINE", "1")
    monkeypatch.setenv("REPZOO_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_cases_cover_the_commands():
    """Not vacuous: the parser's commands are found, and the checked options of the ones known today."""
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"list", "info", "convert", "export", "bench", "demo", "download", "cache ls", "cache rm",
            "predict"} <= names
    options = {(" ".join(p), o) for p, o, _ in CHECKED}
    assert {("bench", "--device"), ("bench", "--batch-size"), ("demo", "--image-size"), ("export", "--image-size"),
            ("predict", "--top-k"), ("convert", "checkpoint"), ("export", "--num-classes")} <= options


@pytest.mark.parametrize("path,sub", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_number_option_is_checked(path, sub):
    """A bare int / float option lets 0 or -5 through to a ZeroDivisionError: use a checked type of cli_support."""
    bare = [a.option_strings or a.dest for a in sub._actions if a.type in (int, float)]
    assert not bare, f"repzoo {' '.join(path)}: {bare} take a bare int/float: use cli_support.positive_int etc."


@pytest.mark.parametrize("path,option,bad", CHECKED, ids=[f"{' '.join(p)} {o} {b}" for p, o, b in CHECKED])
def test_a_bad_value_is_refused_at_the_edge(path, option, bad, offline, capsys):
    sub = dict(COMMANDS)[path]
    argv = list(path) + ([option, bad] if option.startswith("-") else [bad])
    dest = next(a.dest for a in sub._actions if option in a.option_strings or a.dest == option)
    line = _fails_in_one_line(capsys, argv + _filled(sub, offline, skip=dest), code=2)
    assert option.lstrip("-") in line.replace("_", "-") and " ".join(path) in line, line


@pytest.mark.parametrize("path,sub", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_an_unknown_option_is_one_line(path, sub, offline, capsys):
    line = _fails_in_one_line(capsys, list(path) + _filled(sub, offline) + ["--no-such-option"], code=2)
    assert "--no-such-option" in line


MODEL_COMMANDS = [(p, s) for p, s in COMMANDS if any(a.dest in MODEL_DESTS for a in s._actions)]


@pytest.mark.parametrize("path,sub", MODEL_COMMANDS, ids=[" ".join(p) for p, _ in MODEL_COMMANDS])
def test_an_unknown_model_is_one_line(path, sub, offline, capsys):
    argv = list(path) + _filled(sub, offline, model="RepVGG-Z9", with_model=True)
    line = _fails_in_one_line(capsys, argv, code=2)
    assert "RepVGG-Z9" in line and ("Unknown model" in line or "No model" in line), line


SIZED = [(p, s) for p, s in MODEL_COMMANDS if any("--image-size" in a.option_strings for a in s._actions)]


@pytest.mark.parametrize("path,sub", SIZED, ids=[" ".join(p) for p, _ in SIZED])
@pytest.mark.parametrize("size", ["97", "300"])
def test_an_image_size_the_model_cannot_take_is_refused_before_it_runs(path, sub, size, offline, capsys):
    """RepMLPNet-T224 takes multiples of 224 only: said in one line, before torch.export or a timer starts."""
    argv = list(path) + _filled(sub, offline, model="RepMLPNet-T224", with_model=True) + ["--image-size", size]
    line = _fails_in_one_line(capsys, argv, code=2)
    assert f"--image-size {size} does not fit RepMLPNet-T224" in line and "multiples of 224" in line, line


@pytest.mark.parametrize("raised,code,shown", [
    (ValueError("bad\nsecond line"), 1, "ValueError: bad -- this is a bug in repzoo"),
    (ZeroDivisionError("float division by zero"), 1, "ZeroDivisionError: float division by zero"),
    (repzoo.RepZooError("what to do next"), 2, "repzoo: error: what to do next"),
])
def test_the_boundary_turns_any_exception_into_one_line(raised, code, shown, monkeypatch, capsys):
    def boom(args):
        raise raised

    monkeypatch.setattr("repzoo.cli._cmd_info", boom)
    line = _fails_in_one_line(capsys, ["info", "RepVGG-A0"], code=code)
    assert shown in line and "second line" not in line, line
    monkeypatch.setenv("REPZOO_DEBUG", "1")
    if code == 1:  # REPZOO_DEBUG shows a bug's traceback
        with pytest.raises(type(raised)):
            main(["info", "RepVGG-A0"])


def test_version_and_an_empty_list(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"repzoo {repzoo.__version__}"
    for argv in (["list", "nothing"], ["list", "RepVGG-Z*"], ["list", "RepGhostNet-*", "--pretrained", "--full"]):
        if argv[-1] == "--full":  # a pattern that matches is fine
            assert main(argv) == 0 and "### RepGhostNet" in capsys.readouterr().out
            continue
        assert "no model" in _fails_in_one_line(capsys, argv, code=2).lower()


# ------------------------------------------------------------------ names that are silently wrong


@pytest.mark.parametrize("name,kwargs", [("RepVGG-A0.foo", {}), ("RepVGG-A0", {"tag": "foo"}),
                                         ("DBB-ResNet-18", {"tag": "in1k"}), ("RepVGG-A0.rvgg_in22k", {})])
def test_an_unknown_tag_is_refused_without_pretrained_too(name, kwargs):
    with pytest.raises(repzoo.RepZooError, match="has no pretrained tag"):
        repzoo.create_model(name, **kwargs)


@pytest.mark.parametrize("name,model,tag", [
    ("repvgg_a0.rvgg_in1k", "RepVGG-A0", "in1k"),  # timm's name of the file the in1k tag also lists
    ("repghostnet_050.in1k", "RepGhostNet-0.5x", "repghost_in1k"),  # timm's file, not the authors' in1k
    ("RepGhostNet-0.5x.in1k", "RepGhostNet-0.5x", "in1k"),
    ("RepVGG-A0.in1k", "RepVGG-A0", "in1k"),
])
def test_timm_tag_names_map_to_the_manifest_tag(name, model, tag):
    from repzoo.factory import resolve_tag
    from repzoo.registry import resolve_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "another project's name"
        entry, given = resolve_name(name)
    assert (entry.name, resolve_tag(entry.name, given, given=name)) == (model, tag)


# ------------------------------------------------------------------ advice that fits where the user is


def test_advice_names_the_option_of_the_interface_in_use(tmp_path, capsys):
    """A deploy file given to `repzoo convert` says there is nothing to convert; given to `repzoo export` without
    --deploy it names --deploy; in Python, a 7-class file loads as a 7-class model (the CLI's inference), and a
    model of another head is told num_classes=7."""
    torch.manual_seed(0)
    deploy7 = repzoo.create_model("RepVGG-A0", deploy=True, num_classes=7)
    path = tmp_path / "d7.pth"
    torch.save(deploy7.state_dict(), path)
    line = _fails_in_one_line(capsys, ["convert", "RepVGG-A0", str(path), str(tmp_path / "o.pth")], code=2)
    assert "already in deploy" in line and "repzoo export RepVGG-A0 --deploy" in line and "deploy=True" not in line
    line = _fails_in_one_line(capsys, ["export", "RepVGG-A0", "--checkpoint", str(path), "--output",
                                       str(tmp_path / "x.onnx")], code=2)
    assert "--deploy" in line and not (tmp_path / "x.onnx").exists()
    assert repzoo.create_model("RepVGG-A0", deploy=True, checkpoint_path=path).num_classes == 7
    with pytest.raises(repzoo.IncompatibleCheckpointError, match="num_classes=7 to load it"):
        repzoo.load_checkpoint(repzoo.create_model("RepVGG-A0", deploy=True), path)
