"""The suite reads only what the repository holds: the audit hook in conftest.py refuses anything beside it."""
import pytest

from conftest import REPO_ROOT


def test_a_file_beside_the_repository_cannot_be_opened(tmp_path):
    beside = REPO_ROOT.parent / "another-checkout" / "reference.md"
    with pytest.raises(PermissionError, match="beside the repository"):
        open(beside)  # refused before the file system is asked: whether it exists does not matter
    assert (REPO_ROOT / "pyproject.toml").read_text()  # the repository itself,
    (tmp_path / "x").write_text("ok")  # the temporary folder,
    assert (tmp_path / "x").read_text() == "ok"
    assert pytest.__file__ and open(pytest.__file__).read()  # and the installed packages stay readable
