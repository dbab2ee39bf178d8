"""``decodekit.info()`` / ``decodekit info``: versions, devices and usable backends."""

from __future__ import annotations

import platform

import torch

from decodekit.ops import _backend


def _version(module_name: str) -> str:
    module = _backend._try_import(module_name)[0]
    return getattr(module, "__version__", "?") if module is not None else "not installed"


def info() -> dict:
    """Everything a bug report needs: versions, devices, and which backends are built and usable."""
    from decodekit import __version__

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    built = {
        "reference": True,
        "cpu": _backend.cpu_extension() is not None,
        "cuda": _backend.cuda_extension() is not None,
        "triton": _backend._try_import("triton")[0] is not None,
    }
    usable = {
        str(device): {
            name: (_backend.unavailable_reason(name, device) or "yes") for name in _backend.BACKENDS
        }
        for device in devices
    }
    return {
        "decodekit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "built": built,
        "usable": usable,
        "default_backend": {str(d): _backend.default_backend(d) for d in devices},
    }


def format_info(report: dict) -> str:
    lines = [
        f"decodekit {report['decodekit']}  python {report['python']}  torch {report['torch']}"
        f" (CUDA {report['torch_cuda'] or 'none'})  triton {report['triton']}",
        f"GPUs: {', '.join(report['gpus']) or 'none visible'}   CPU threads: {report['cpu_threads']}",
        "built extensions: "
        + ", ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in report["built"].items()),
    ]
    for device, backends in report["usable"].items():
        lines.append(f"backends on {device} (default: {report['default_backend'][device]}):")
        for name, state in backends.items():
            lines.append(f"  {name:<10} {'usable' if state == 'yes' else 'not usable: ' + state}")
    return "\n".join(lines)
