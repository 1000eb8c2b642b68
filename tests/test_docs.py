"""The documentation is part of the product: the site builds with --strict, its model table is the registry's,
and every Python example in it runs (offline: a mirror folder holds generated files under the released names)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repzoo
from repzoo.cli import full_model_table

from conftest import REPO_ROOT, run_example

DOCS = REPO_ROOT / "docs"
NOT_RUN = re.compile(r"<!-- not run: [^>]+-->\n```python\n.*?```", re.S)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
#: pretrained weights the examples ask for: (model, tag) -> written under the manifest's file name, in its key style
EXAMPLE_WEIGHTS = [("RepVGG-A0", None), ("RepGhostNet-0.5x", None), ("RepGhostNet-0.5x", "repghost_in1k")]


#: pages whose examples another test runs, where they need to run
RUN_ELSEWHERE = {"detection_segmentation.md": "tests/test_openmmlab.py runs them from the repository root (they "
                                              "read configs/), each in its own mmengine scope"}


def pages():
    return sorted(p for p in DOCS.rglob("*.md"))


def examples(page: Path):
    text = NOT_RUN.sub("", page.read_text(encoding="utf-8"))
    return BLOCK.findall(text)


def test_the_site_builds_strictly_with_the_plot(tmp_path):
    pytest.importorskip("mkdocs")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "models" / "index.html").is_file() and (site / "api" / "index.html").is_file()
    assert "create_model" in (site / "api" / "index.html").read_text()  # the API reference, from docstrings
    plots = [p.name for p in (site / "assets").glob("*.png")]
    assert any(name.startswith("bench") for name in plots), plots


def test_the_model_table_is_the_registry():
    text = (DOCS / "models.md").read_text(encoding="utf-8")
    table = text.split("<!-- models:start -->\n")[1].split("<!-- models:end -->")[0].strip()
    assert table == full_model_table(repzoo.list_models())


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    """A cache, and a mirror folder with generated files for the pretrained examples; offline."""
    from safetensors.torch import save_file

    from repzoo.bench import TIMM_TWINS
    from repzoo.weights.manifest import load_manifest

    root = tmp_path_factory.mktemp("docs_examples")
    mirror = root / "mirror"
    mirror.mkdir()
    for name, tag in EXAMPLE_WEIGHTS:
        rec = load_manifest().weights(name, tag).files[0]
        torch.manual_seed(0)
        if rec.key_style == "timm":
            import timm

            save_file({k: v.contiguous() for k, v in timm.create_model(TIMM_TWINS[name]).state_dict().items()},
                      str(mirror / rec.file_name))
        else:
            torch.save({"model": repzoo.create_model(name).state_dict()}, mirror / rec.file_name)
    return dict(REPZOO_HOME=str(root / "home"), REPZOO_MIRROR=str(mirror), REPZOO_OFFLINE="1", REPZOO_PROGRESS="0")


@pytest.mark.parametrize("page", [p.relative_to(DOCS).as_posix() for p in pages()
                                  if examples(p) and p.relative_to(DOCS).as_posix() not in RUN_ELSEWHERE])
def test_every_example_runs(page, example_env, tmp_path, monkeypatch):
    for key, value in example_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # examples write files where they run
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(examples(DOCS / page)):
        run_example(code, f"docs/{page} example {i}", namespace)


def test_examples_that_do_not_run_say_why():
    for page in pages():
        text = page.read_text(encoding="utf-8")
        marked = len(re.findall(r"<!-- not run: ([^>]+)-->\n```python", text))
        assert marked == len(NOT_RUN.findall(text)), page
        for reason in re.findall(r"<!-- not run: ([^>]+)-->", text):
            assert len(reason.strip()) > 10, (page, reason)
