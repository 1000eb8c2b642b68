"""examples/hyper_search.py runs end to end (tiny arguments) and its scale file is usable."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from repzoo.optim import load_scales

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hyper_search.py"


def _load():
    spec = importlib.util.spec_from_file_location("hyper_search_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hyper_search_example_main(tmp_path):
    example = _load()
    out = example.main(["--hs-steps", "3", "--target-steps", "2", "--batch-size", "4", "--img-size", "16",
                        "--out", str(tmp_path)])
    path = Path(out["scale_path"])
    assert path.parent == tmp_path and path.is_file()
    on_disk = torch.load(path, weights_only=True)
    hs_scales = {k: v for k, v in out["hs_model"].state_dict().items() if k in on_disk}
    # the file holds exactly the hs model's trained scales, and they moved away from their init
    assert set(on_disk) == set(hs_scales) == set(load_scales(out["hs_model"]))
    assert all(torch.equal(on_disk[k], hs_scales[k]) for k in on_disk)
    assert any(not torch.allclose(v, torch.ones_like(v)) for k, v in on_disk.items() if "scale_identity" in k)
    # every target kernel got its multiplier, and the target model trained
    target = out["target_model"]
    kernels = [p for n, p in target.named_parameters() if p.dim() == 4]
    assert all("grad_mult" in out["optimizer"].state[p] for p in kernels)
    assert len(out["target_losses"]) == 2 and all(torch.isfinite(torch.tensor(out["target_losses"])))
