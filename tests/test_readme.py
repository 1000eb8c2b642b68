"""The README is part of the product: its examples run and its model table is the registry's."""
import re

import pytest

import repzoo
from repzoo.catalog import model_table

from conftest import REPO_ROOT, run_example

README = (REPO_ROOT / "README.md").read_text()
NOT_RUN = "<!-- not run: needs the network -->"


def python_blocks():
    blocks = re.findall(r"(<!-- [^>]*-->\n)?```python\n(.*?)```", README, flags=re.S)
    return [code for marker, code in blocks if marker.strip() != NOT_RUN], sum(m.strip() == NOT_RUN for m, _ in blocks)


def test_only_the_network_example_is_not_run():
    runnable, skipped = python_blocks()
    assert len(runnable) >= 2 and skipped == 1


@pytest.mark.parametrize("index", range(len(python_blocks()[0])))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example may write a file (the export)
    run_example(python_blocks()[0][index], f"README.md block {index}")


def test_readme_model_table_is_the_registry():
    table = README.split("<!-- models:start -->\n")[1].split("<!-- models:end -->")[0].strip()
    assert table == model_table(repzoo.list_models())


def test_readme_set_up_commands_are_the_ci_commands():
    """Exactly two set-up commands; the second is CI's install and default tier, and the heavy-tier command
    the README states beside it is CI's last step."""
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == ['python3 -m pip install -q -c constraints.txt -e ".[test]"', "python3 -m pytest -q",
                  "python3 -m pytest -q -m heavy -n 0"]
    set_up = README.split("## Set up")[1].split("\n## ")[0]
    bash_blocks = re.findall(r"```bash\n(.*?)```", set_up, flags=re.S)
    assert len(bash_blocks) == 2
    assert bash_blocks[0].strip() == "python3 -m pip install -c constraints.txt -e . && repzoo demo"
    assert bash_blocks[1].strip() == f"{ci[0]} && {ci[1]}"
    assert f"`{ci[2]}`" in README
