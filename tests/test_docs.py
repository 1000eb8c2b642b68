"""The documentation is part of the product: the site builds with --strict, its model table is the registry's,
and every Python example in it runs (offline: a mirror folder holds generated files under the released names)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repzoo
from repzoo.catalog import family_tables

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


#: a Sphinx role left as text (``:func:`x``` renders as ``:func:<code>x</code>``): mkdocstrings does not read them
RAW_ROLE = re.compile(r":(func|class|mod|meth|attr|exc|data|obj):(<code>|`)")


def site_problems(config: Path, site: Path) -> list:
    """Everything wrong with a strict build of ``config`` into ``site``: each warning line mkdocs (or griffe,
    mkdocstrings, autorefs) printed, a failed exit, and each page of the built HTML that shows a raw role."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                         cwd=config.parent, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    problems = [line for line in (out.stdout + out.stderr).splitlines() if re.match(r"\W*(WARNING|ERROR)\b", line)]
    if out.returncode != 0:
        problems.append(f"mkdocs exited with {out.returncode}: {out.stderr[-2000:]}")
    for page in sorted(site.rglob("*.html")) if site.is_dir() else []:
        found = RAW_ROLE.findall(page.read_text(encoding="utf-8"))
        if found:
            problems.append(f"{page.relative_to(site)}: {len(found)} raw Sphinx role(s) ({found[0][0]})")
    return problems


def test_the_site_builds_strictly_without_a_warning(tmp_path):
    """About 5 s on 2 cores: the whole site, the API page from the docstrings."""
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    assert site_problems(REPO_ROOT / "mkdocs.yml", site) == []
    assert (site / "models" / "index.html").is_file() and (site / "api" / "index.html").is_file()
    api = (site / "api" / "index.html").read_text()
    assert "create_model" in api and 'class="autorefs autorefs-internal"' in api  # cross-references render as links
    plots = [p.name for p in (site / "assets").glob("*.png")]
    assert {"deploy_speedup.png", "top1_vs_speed.png", "kernel_ranges.png"} <= set(plots), plots


@pytest.mark.parametrize("page,problem", [
    ("See [the configs](../configs/a.py).", "contains a link '../configs/a.py'"),  # a dead link
    ("Raises :class:`RepZooError`.", "raw Sphinx role"),  # a role the toolchain shows as text
    ("[create_model][repzoo.nowhere]", "repzoo.nowhere"),  # a cross-reference with no target
])
def test_a_site_with_a_warning_or_a_raw_role_fails_the_check(tmp_path, page, problem):
    """The check above sees each kind of fault (here in a one-page site, with mkdocs-autorefs as on the real one)."""
    pytest.importorskip("mkdocs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# A page\n\n{page}\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nplugins:\n  - autorefs\n", encoding="utf-8")
    problems = site_problems(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert any(problem in p for p in problems), problems


def test_the_model_table_is_the_registry():
    text = (DOCS / "models.md").read_text(encoding="utf-8")
    table = text.split("<!-- models:start -->\n")[1].split("<!-- models:end -->")[0].strip()
    assert table == family_tables(repzoo.list_models())


def test_the_bench_table_is_what_the_command_prints_for_the_committed_report():
    """docs/benchmarks.md holds `repzoo bench`'s own markdown of benchmarks/results/bench_cpu.json (as
    benchmarks/plot_bench.py writes it), and the page names the machine of every figure block."""
    import json

    from repzoo.bench import markdown

    report = json.loads((REPO_ROOT / "benchmarks" / "results" / "bench_cpu.json").read_text())
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    block = text.split("<!-- bench:start -->\n")[1].split("\n<!-- bench:end -->")[0]
    assert block == markdown(report)
    assert block.startswith(f"Measured on {report['machine']['cpu']} ({report['machine']['cores']} cores")
    header = [line for line in block.splitlines() if line.startswith("| model")]
    assert len(header) == 2 and all(h.count("|") <= 8 for h in header)  # narrow tables, not one of 12 columns


def test_every_page_is_linked_from_the_home_page():
    import yaml

    def leaves(node):
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for v in node.values() for p in leaves(v)]
        return [p for v in node for p in leaves(v)]

    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    missing = [p for p in leaves(nav) if p != "index.md" and f"]({p})" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
    assert sorted(leaves(nav)) == sorted(p.relative_to(DOCS).as_posix() for p in pages())  # nav has every page


#: the most columns a table may have: 7 narrow columns fit the page in a 1400-px window (checked with headless
#: Chromium screenshots of the built site: `chromium --headless --screenshot --window-size=1400,900`)
MAX_COLUMNS = 7


@pytest.mark.parametrize("page", [p.relative_to(DOCS).as_posix() for p in pages()] + ["../README.md"])
def test_no_table_is_too_wide_to_read(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks are not tables
    widths = [line.count("|") - 1 for line in text.splitlines() if line.startswith("|")]
    assert max(widths, default=0) <= MAX_COLUMNS, f"{page}: a table of {max(widths)} columns"


def test_hugging_face_links_download_the_file():
    """A browser link to a Hub file is /resolve/ (the file), not /blob/ (an HTML page about it): in the docs,
    the README, and every manual link the manifest gives (printed when a download fails)."""
    from repzoo.weights.manifest import load_manifest

    texts = {p.name: p.read_text(encoding="utf-8") for p in pages() + [REPO_ROOT / "README.md"]}
    blob = {n for n, t in texts.items() if re.search(r"huggingface\.co/[^\s)]*/blob/", t)}
    assert not blob, blob
    links = [s.manual_link() for _, _, f in load_manifest().files() for s in f.sources if s.kind == "hf"]
    assert links and all(re.match(r"https://huggingface\.co/[^/]+/[^/]+/resolve/[^/]+/\S+$", u) for u in links), links[:3]


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
