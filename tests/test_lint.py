"""The code meets the lint rules configured in pyproject.toml ([tool.ruff]): ruff runs here, so a new
unused import, blind except or stale ``# noqa`` code fails the suite."""
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def _ruff(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)


def test_ruff_is_installed_with_the_test_extra():
    assert _ruff("--version").returncode == 0, "ruff is in the test extra: pip install -e '.[test]'"


def test_the_repository_passes_ruff():
    result = _ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("code, rule", [
    ("import os\n", "F401"),                                                   # an unused import
    ("try:\n    pass\nexcept Exception:\n    pass\n", "BLE001"),               # a blind except
    ("x = 1  # noqa: E731\n", "RUF100"),                                       # a stale noqa code
    ("for i in range(3):\n    f = lambda: i\n", "E731"),                       # a lambda assigned
])
def test_the_configuration_catches(tmp_path, code, rule):
    """The repository's own configuration, applied to a file that breaks one rule, reports that rule."""
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "bad.py").write_text(code)
    result = _ruff("check", "--no-cache", "--output-format", "concise", "bad.py", cwd=tmp_path)
    assert result.returncode == 1 and rule in result.stdout, result.stdout + result.stderr
