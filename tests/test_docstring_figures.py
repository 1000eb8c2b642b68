"""The parameter counts and top-1 in the model builders' docstrings are the measured counts and the
manifest's (or, for a model without released weights, the authors' reported) top-1: no third copy drifts."""
from __future__ import annotations

import re

import pytest

from repzoo.catalog import count_params
from repzoo.registry import get_model_entry, model_names
from repzoo.weights import manifest

TWO = re.compile(r"([\d.]+)M train / ([\d.]+)M deploy params")
ONE = re.compile(r"([\d.]+)M params")
TOP1 = re.compile(r"([\d.]+)% top-1")


def _figures(doc: str):
    first = doc.strip().splitlines()[0]
    two, one, top1 = TWO.search(first), ONE.search(first), TOP1.search(first)
    params = (two.group(1), two.group(2)) if two else ((one.group(1),) if one else None)  # one figure: train form
    return params, (top1.group(1) if top1 else None)


NAMES = [n for n in model_names() if any(_figures(get_model_entry(n).builder.__doc__ or "x"))]


def test_the_docstrings_with_figures_are_found():
    assert len(NAMES) >= 40  # OREPA/DBB/ResNet, RepMLPNet, RepOpt-VGG, RepVGG, RepGhostNet builders


@pytest.mark.parametrize("name", NAMES)
def test_a_docstrings_figures_are_the_measured_and_released_ones(name):
    entry = get_model_entry(name)
    params, top1 = _figures(entry.builder.__doc__)
    if params is not None:
        measured = tuple(f"{count_params(name, deploy) / 1e6:.2f}" for deploy in (False, True)[:len(params)])
        assert params == measured, f"{name}: the docstring says {params} M params, the model has {measured}"
    if top1 is not None:
        known = manifest.load_manifest()
        expected = known.weights(name).top1 if known.tags(name) else entry.reported.get("top1")
        assert expected is not None and float(top1) == pytest.approx(expected, abs=0.005), (name, top1, expected)
