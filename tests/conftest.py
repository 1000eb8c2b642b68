"""Shared test helpers and data: float64 comparisons, randomized weights, the reference's signatures
and scale files (copied into ``tests/data``), and a guard that nothing reads outside the repository."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import lzma
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import pytest
import torch

from repzoo.reparam import relative_difference
from repzoo.demo import randomize_bn  # noqa: F401  (the tests' one way to give BNs trained-like statistics)

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist: the cores shared among the workers, not each
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def _keep_jit_builtins_alive() -> None:
    """torch's TorchScript frontend knows its builtin ops by ``id()`` (``torch.jit._builtins``); when torch.ao
    adds an overload to an existing op, ``torch._ops._refresh_packet`` registers a new op object and frees the
    old one, whose id stays in the table. An unrelated object that later gets that address (a Conv2d's
    ``_reversed_padding_repeated_twice`` list) is then taken for a builtin, and scripting fails at random with
    "builtin cannot be used as a value" (seen in CI, after the quantization docs' example ran in the same
    process). Keeping every registered op alive keeps its id unique."""
    import torch.jit._builtins as builtins

    registered = []
    original = builtins._register_builtin

    def register(fn, op):
        registered.append(fn)
        return original(fn, op)

    builtins._register_builtin = register
    builtins._kept_alive = registered


_keep_jit_builtins_alive()
DATA = REPO_ROOT / "tests" / "data"
SIGNATURES_ARCHIVE = DATA / "signatures.tar.xz"
SIGNATURES_SHA256 = DATA / "signatures.sha256"
SCALES_DIR = DATA / "repopt_scales"

#: The released scale files and their sha256 (DingXiaoH/RepOptimizers @ 2e45ff5, the repository root's *.pth; MIT).
SCALES_SHA256 = {
    "RepOpt-VGG-B1-scales.pth": "9b35d848b636fb17b3775f48054806b19b92d8ff113ad368d3ebfc762d10dc36",
    "RepOpt-VGG-B2-scales.pth": "cee5003829df36e683f35064d7957a044326418a07ff53754bee7db499d1b0a0",
    "RepOpt-VGG-L1-scales.pth": "5c02fa844cd5b15bca520ac278b17bf853d5c2f15ef6739bc6c93cd3cb34e446",
    "RepOpt-VGG-L2-scales.pth": "50db188177ede982f26eda0b2569f2aaad1db9b5ffa42287baf6fdd772db5728",
    "RepOptGhostNet_0_5x_scales.pth": "d21b2e5d9eeee06fc46120fcc75084a6403a050bfad262e855167aee0404bd18",
}
#: The model each released scale file is for.
SCALES_MODEL = {
    "RepOpt-VGG-B1": "RepOpt-VGG-B1-scales.pth",
    "RepOpt-VGG-B2": "RepOpt-VGG-B2-scales.pth",
    "RepOpt-VGG-L1": "RepOpt-VGG-L1-scales.pth",
    "RepOpt-VGG-L2": "RepOpt-VGG-L2-scales.pth",
    "RepOpt-GhostNet-0.5x": "RepOptGhostNet_0_5x_scales.pth",
}
B1_SCALES = SCALES_DIR / "RepOpt-VGG-B1-scales.pth"
GHOST_SCALES = SCALES_DIR / "RepOptGhostNet_0_5x_scales.pth"


# --------------------------------------------------------------------------- the repository stands alone

#: A test reads only what the repository holds: nothing in a folder beside it (a team's checkouts keep
#: reference material there, which a user's clone does not have). The interpreter, its packages, the
#: temporary folder and the user's home stay readable wherever they are.
_BESIDE = REPO_ROOT.parent.resolve()
# a readable place above the folder holding the clone (/tmp for /tmp/x/repzoo) does not make its siblings
# readable; a clone right in /tmp or ~ has only readable places beside it
_PLACES = (REPO_ROOT, sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(), Path.home())
_READABLE = tuple({root for root in map(Path.resolve, map(Path, _PLACES)) if root not in _BESIDE.parents})


def beside_the_repository(resolved: Path) -> bool:
    """Whether ``resolved`` lies in a folder beside the repository (and in none of the readable places)."""
    if len(_BESIDE.parts) < 2 or _BESIDE not in resolved.parents:  # a clone at the root: nothing is "beside"
        return False
    return not any(root == resolved or root in resolved.parents or resolved in root.parents for root in _READABLE)


def _audit(event: str, args) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError):
            return
        if beside_the_repository(resolved):
            raise PermissionError(f"a test opened {path}, beside the repository: tests read only what the "
                                  "repository holds")


sys.addaudithook(_audit)


# --------------------------------------------------------------------------- reference data


@functools.lru_cache(maxsize=1)
def _signature_files() -> dict:
    """Every signature file in the archive, checked against its recorded sha256."""
    expected = dict(line.split()[::-1] for line in SIGNATURES_SHA256.read_text().splitlines() if line.strip())
    files = {}
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(SIGNATURES_ARCHIVE.read_bytes()))) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if hashlib.sha256(data).hexdigest() != expected.get(member.name):
                raise AssertionError(f"signature file {member.name} is not intact")
            files[member.name] = data
    if set(files) != set(expected):
        raise AssertionError(f"signature archive and list differ: {sorted(set(files) ^ set(expected))}")
    return files


def signature(name: str) -> dict:
    """The reference signature of ``name``: ``{"signature_train": {key: shape}, "signature_deploy": …}``."""
    return json.loads(_signature_files()[f"{name}.json"])


def signature_names() -> list:
    return sorted(n[: -len(".json")] for n in _signature_files())


# --------------------------------------------------------------------------- helpers


rel_diff = relative_difference  # ‖a − b‖ / ‖b‖, the package's one definition


def run_example(code: str, filename: str, namespace: Optional[dict] = None) -> dict:
    """Run a documentation example, checking its claims: a top-level ``print(...)  # text`` must print what
    ``text`` starts with (``# 22 0: one conv per layer`` is met by ``22 0``); a claim with ``...`` elides the
    output and is not checked."""
    import ast
    import tokenize

    comments = {tok.start[0]: tok.string[1:].strip()
                for tok in tokenize.generate_tokens(io.StringIO(code).readline) if tok.type == tokenize.COMMENT}
    tree = ast.parse(code, filename)
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"
                and "..." not in comments.get(node.end_lineno, "...")):
            call.func = ast.Name("__print_and_check__", ast.Load())
            call.keywords.append(ast.keyword("claim", ast.Constant(comments[node.end_lineno])))
    ast.fix_missing_locations(tree)

    def print_and_check(*args, claim: str, **kwargs):
        printed = " ".join(map(str, args))
        print(printed, **kwargs)
        assert claim.startswith(printed), f"{filename}: prints {printed!r}, its comment says {claim!r}"

    namespace = {} if namespace is None else namespace
    namespace["__print_and_check__"] = print_and_check
    exec(compile(tree, filename, "exec"), namespace)
    return namespace


def meta_model(name: str, **kwargs):
    """A model built on the ``meta`` device: shapes and counts without memory or initialization."""
    import repzoo

    with torch.device("meta"):
        return repzoo.create_model(name, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def patch_manifest(monkeypatch, name="RepVGG-A0", file_index=0, **changes):
    """Serve a copy of the packaged manifest with one file record of ``name`` changed (its sha256, size …)."""
    from repzoo.weights import manifest

    data = json.loads((REPO_ROOT / "repzoo" / "weights" / "weights_manifest.json").read_text(encoding="utf-8"))
    data["models"][name]["weights"][0]["files"][file_index].update(changes)
    fake = manifest.Manifest(data)
    monkeypatch.setattr(manifest, "load_manifest", lambda: fake)
    return fake


@pytest.fixture(scope="module")
def one_thread():
    """Small float64 convs: one intra-op thread is as fast, and far faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def float64():
    """Build models directly in float64 (no float32 copy, no rounding in the comparison)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's cache (tests that need one set their own REPZOO_HOME)."""
    monkeypatch.setenv("REPZOO_HOME", str(tmp_path_factory.mktemp("repzoo_home")))
    for var in ("REPZOO_MIRROR", "REPZOO_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- the test tiers

#: A model with more train-time parameters than this is a large variant: its parametrized cases run in the
#: heavy tier (``python3 -m pytest -m heavy``), the default tier keeps every family's small ones.
LARGE_PARAMS = 40_000_000
#: Large but the smallest of their family (RepOpt-VGG starts at B1): kept in the default tier.
SMALLEST_OF_FAMILY = ("RepOpt-VGG-B1", "RepOpt-VGG-B1-csla", "RepOpt-VGG-B1-hs", "RepOpt-VGG-B1-repvgg")


@functools.lru_cache(maxsize=None)
def is_large(name: str) -> bool:
    """Whether ``name`` (any spelling) is a registered model with more than :data:`LARGE_PARAMS` parameters."""
    import repzoo
    from repzoo.errors import RepZooError

    try:
        entry = repzoo.get_model_entry(name)
    except (RepZooError, ValueError, TypeError):
        return False
    if entry.name in SMALLEST_OF_FAMILY:
        return False
    with torch.device("meta"):
        return n_params(entry.builder()) > LARGE_PARAMS


#: Files whose every test is in the heavy tier: multi-process runs, the OpenMMLab stack, int8, a training run.
HEAVY_FILES = ("test_distributed.py", "test_example_train_distributed.py", "test_quantize.py",
               "test_openmmlab.py", "test_mmdet.py", "test_mmseg.py")


def pytest_collection_modifyitems(config, items):
    """The heavy files' tests, and every case parametrized by a large variant, go to the heavy tier."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name in HEAVY_FILES or any(isinstance(v, str) and is_large(v) for v in params.values()):
            item.add_marker(pytest.mark.heavy)


def run_shell_commands(page: str, expected: int) -> None:
    """Run the ``repzoo ...`` lines of ``page``'s ```bash blocks (a path under the repository) as written, in the
    current folder, each through ``repzoo.cli.main``; ``expected``: how many there are."""
    import re
    import shlex

    from repzoo.cli import main

    text = (REPO_ROOT / page).read_text(encoding="utf-8")
    commands = [ln for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in block.splitlines()
                if ln.startswith("repzoo ")]
    assert len(commands) == expected, commands
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
