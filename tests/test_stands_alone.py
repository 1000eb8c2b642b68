"""The suite reads only what the repository holds: the audit hook in conftest.py refuses anything beside it."""
import sys
from pathlib import Path

import pytest

import conftest


def test_a_file_beside_the_repository_cannot_be_opened(tmp_path, monkeypatch):
    """Wherever this clone lives: a layout like a team's (a checkout with reference material beside it)."""
    work = tmp_path / "work"
    repo, sibling = work / "main", work / "references" / "notes.md"
    monkeypatch.setattr(conftest, "_BESIDE", work.resolve())
    monkeypatch.setattr(conftest, "_READABLE", (repo.resolve(), Path(sys.prefix).resolve()))
    with pytest.raises(PermissionError, match="beside the repository"):
        conftest._audit("open", (str(sibling), "r", 0))  # refused before the file system is asked
    for readable in (repo / "pyproject.toml", Path(sys.prefix) / "lib", Path(pytest.__file__)):
        conftest._audit("open", (str(readable), "r", 0))  # the repository, the interpreter, other folders


def test_the_hook_is_installed():
    beside = conftest._BESIDE / "another-checkout" / "reference.md"
    if not conftest.beside_the_repository(beside.resolve()):
        pytest.skip(f"this clone lies in a readable place ({conftest._BESIDE}): nothing beside it can be told apart")
    with pytest.raises(PermissionError, match="beside the repository"):
        open(beside)
