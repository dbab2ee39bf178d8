"""Which backends exist on this machine, and which one runs a call.

Backends (DESIGN.md): ``reference`` (plain torch, anywhere), ``cpu`` (``decodekit._C``, CPU
tensors), ``triton`` (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``), ``cuda``
(``decodekit._cuda``, CUDA tensors). Each backend provides the same raw functions per op family,
with the contract documented in ``decodekit/ops/sampling.py``.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


@functools.cache
def _try_import(module: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as error:  # an extension that failed to build or load is "not built"
        return None, f"{type(error).__name__}: {error}"


def cpu_extension() -> ModuleType | None:
    return _try_import("decodekit._C")[0]


def cuda_extension() -> ModuleType | None:
    return _try_import("decodekit._cuda")[0]


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can run on tensors of ``device``, else why not."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got a {device.type} tensor"
        if cpu_extension() is None:
            return "the C++ extension decodekit._C is not built (" + _try_import("decodekit._C")[1] + ")"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got a {device.type} tensor"
        if cuda_extension() is None:
            return "the CUDA extension decodekit._cuda is not built (" + _try_import("decodekit._cuda")[1] + ")"
        return None
    # triton
    if _try_import("triton")[0] is None:
        return "triton is not installed"
    if device.type == "cpu" and not triton_interpreting():
        return "backend 'triton' runs on CPU tensors only with TRITON_INTERPRET=1 set before importing triton"
    if device.type not in ("cpu", "cuda"):
        return f"backend 'triton' does not run on {device.type} tensors"
    return None


def default_backend(device: torch.device) -> str:
    """CUDA tensor -> cuda if built, else triton; CPU tensor -> cpu if built, else reference."""
    if device.type == "cuda":
        return "cuda" if cuda_extension() is not None else "triton"
    if device.type == "cpu" and cpu_extension() is not None:
        return "cpu"
    return "reference"


@torch.compiler.assume_constant_result
def resolve(backend: str | None, device: torch.device) -> str:
    """The backend a call runs on: the explicit argument, else DECODEKIT_BACKEND, else the default."""
    chosen = backend or os.environ.get("DECODEKIT_BACKEND") or default_backend(device)
    reason = unavailable_reason(chosen, device)
    if reason is not None:
        raise ValueError(f"backend={chosen!r} is not usable: {reason}")
    return chosen


@functools.cache
def kernel(backend: str, family: str, name: str):
    """The raw function ``name`` of op family ``family`` (file stem) on ``backend``."""
    if backend == "reference":
        module = importlib.import_module("decodekit.ops._reference_kernels")
    elif backend == "cpu":
        module = cpu_extension()
    elif backend == "cuda":
        module = cuda_extension()
    else:
        module = importlib.import_module(f"decodekit.triton_kernels.{family}")
    return getattr(module, name)


def available(device: torch.device) -> list[str]:
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]
