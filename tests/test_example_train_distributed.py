"""examples/train_distributed.py under torchrun: trains on 2 processes, saves, resumes on 1, writes the deploy model."""
import os
import subprocess
import sys

import torch

import repzoo

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "examples" / "train_distributed.py"


def _torchrun(nproc, out, steps):
    from distributed_workers import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(SCRIPT), "--model", "RepOpt-GhostNet-0.5x", "--steps", str(steps),
           "--batch-size", "2", "--image-size", "32", "--save-every", "2", "--num-classes", "3", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", REPZOO_OFFLINE="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO_ROOT)


def test_train_save_resume_on_another_world_size_and_deploy(tmp_path):
    first = _torchrun(2, tmp_path, 4)
    assert first.returncode == 0, first.stderr[-4000:]
    assert sorted(os.listdir(tmp_path)) == ["deploy.safetensors", "step_2", "step_4"]
    second = _torchrun(1, tmp_path, 6)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from step 4 on 1 processes" in second.stdout and "step_6" in os.listdir(tmp_path)
    deploy = repzoo.create_model("RepOpt-GhostNet-0.5x", num_classes=3, deploy=True,
                                 checkpoint_path=tmp_path / "deploy.safetensors").eval()
    assert deploy.deploy and torch.isfinite(deploy(torch.randn(1, 3, 32, 32))).all()
