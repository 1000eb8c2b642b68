"""Shared test helpers: float64 comparisons, randomized BN statistics, paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SIGNATURES = SHARED / "reference" / "signatures"
SCALES_DIR = SHARED / "repopt_scales"


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return ((a - b).norm() / b.norm()).item()


def meta_model(name: str, **kwargs):
    """A model built on the ``meta`` device: shapes and counts without memory or initialization."""
    import repzoo

    with torch.device("meta"):
        return repzoo.create_model(name, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    monkeypatch.delenv("REPZOO_MIRROR", raising=False)
