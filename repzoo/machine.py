"""What a measurement ran on: the CPU (model, vector units), threads, versions and device."""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Dict

import torch

__all__ = ["machine"]

#: /proc/cpuinfo flags that decide which fast paths a CPU has
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine(device: str = "cpu") -> Dict[str, Any]:
    """The machine figures were measured on: ``cpu``, ``flags``, ``cores``, ``threads``, ``torch``, ``python``,
    ``device`` (and ``gpu``)."""
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = info.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        have = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
        flags = [f for f in _FLAGS if f in have]
    info = dict(cpu=cpu, flags=flags, cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(), device=device)
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
