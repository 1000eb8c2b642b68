"""The suite reads only what the repository holds: the audit hook in conftest.py refuses anything beside it."""
import re
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


_S, _MD = "\u00a7", ".md"  # a section sign and a Markdown suffix, spelt so this file cites nothing itself
_SECTION_MARK = re.compile(r"(?<!RFC )(?<!RFC \d{4} )§\s*\d")
_DOCUMENT = re.compile(r"(?<![/\w\"'])([\w-]+\.md)\b")  # a name cited in prose, not a path or string


def _cited_documents(text: str) -> set:
    return set(_DOCUMENT.findall(text))


def test_tests_cite_only_what_a_clone_holds():
    """A fact a test depends on is stated in the test or in tests/data/README.md with its public source:
    no section marks of a study the clone lacks, no Markdown file the repository does not have."""
    root = Path(conftest.REPO_ROOT)
    held = {p.name for p in root.rglob("*.md") if ".git" not in p.parts} | {"README.md"}
    problems = []
    for path in sorted(p for p in (root / "tests").glob("*.py") if p.name != Path(__file__).name):
        text = path.read_text(encoding="utf-8")
        problems += [f"{path.name}: section mark {m.group(0)!r}" for m in _SECTION_MARK.finditer(text)]
        problems += [f"{path.name}: cites {doc}" for doc in sorted(_cited_documents(text) - held)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, found", [
    (f"the rules ({_S}5.2)", True), (f"see a study {_S}2", True), (f"(RFC 9110 {_S}13.1.5)", False), ("no mark", False)])
def test_the_section_mark_check_sees_marks(text, found):
    assert bool(_SECTION_MARK.search(text)) is found


def test_the_document_check_sees_markdown_names():
    assert _cited_documents(f"facts in shelf{_MD} (see notes{_MD})") == {f"shelf{_MD}", f"notes{_MD}"}
    assert _cited_documents('a file written as tmp_path / "bench.md", or docs/index.md') == set()
