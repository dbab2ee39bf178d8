"""Test configuration: Triton runs on CPU tensors through its interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported (DESIGN.md), so it is set here, first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from decodekit.ops import _backend  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# (backend, device) pairs every op test runs on. GPU pairs carry the `gpu` mark and skip without CUDA.
BACKEND_CASES = [
    pytest.param(("reference", "cpu"), id="reference"),
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("triton", "cpu"), id="triton-interpret"),
    pytest.param(("triton", "cuda"), id="triton-gpu", marks=pytest.mark.gpu),
    pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu),
]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


def _usable_case(param):
    backend, device_type = param
    device = torch.device(device_type)
    reason = _backend.unavailable_reason(backend, device)
    if reason is not None:
        if backend == "triton" and device_type == "cpu" and HAS_CUDA:
            pytest.skip("the Triton interpreter is not used on GPU machines")
        if backend != "cpu":
            pytest.skip(reason)
        pytest.fail(f"backend cpu must always be usable: {reason}")
    return backend, device


@pytest.fixture(params=BACKEND_CASES)
def backend_case(request):
    """(backend name, torch.device) for every backend, the reference included: for tests that
    check a backend against analytic answers or properties. The cpu backend is built by every
    install, so it is never skipped."""
    return _usable_case(request.param)


@pytest.fixture(params=BACKEND_CASES[1:])
def kernel_case(request):
    """(backend name, torch.device) for the kernel backends only: for tests that compare a backend
    with the reference (comparing the reference with itself could not fail)."""
    return _usable_case(request.param)
