"""Build decodekit: the C++ CPU extension always, the CUDA extension when it can be built.

Environment:
  DECODEKIT_BUILD_CUDA=0|1   force the CUDA extension off / on (default: on when torch is a CUDA
                             build and nvcc is found)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")
  DECODEKIT_CPU_NATIVE=0     build the CPU kernels without -march=native (portable wheels)
"""

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()
INCLUDE = str(ROOT / "csrc" / "include")


def _find_cuda_home() -> str | None:
    """The toolkit root: torch guesses dirname(dirname(which nvcc)), which is wrong when nvcc on
    PATH is a wrapper script (as /usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc here)."""
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "include" / "cuda_runtime.h").is_file() and (root / "bin" / "nvcc").exists():
            return str(root)
    return None


if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and _find_cuda_home():
    os.environ["CUDA_HOME"] = _find_cuda_home()

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _want_cuda() -> bool:
    forced = os.environ.get("DECODEKIT_BUILD_CUDA")
    if forced is not None:
        return forced == "1"
    import torch

    return torch.version.cuda is not None and (
        shutil.which("nvcc") is not None or cpp_extension.CUDA_HOME is not None
    )


def _extra_cuda_includes():
    """CUDA headers that ATen/cuda pulls in (cusparse.h, ...) ship in the `nvidia` pip package."""
    found = []
    for entry in sys.path:
        for sub in ("cu13", "cu12"):
            candidate = Path(entry) / "nvidia" / sub / "include"
            if candidate.is_dir():
                found.append(str(candidate))
    return found


def _cpu_extension():
    # torch >= 2.10 headers require C++20 from host compilers
    flags = ["-O3", "-std=c++20", "-fno-math-errno"]
    if os.environ.get("DECODEKIT_CPU_NATIVE", "1") == "1":
        flags.append("-march=native")
    return cpp_extension.CppExtension(
        name="decodekit._C",
        sources=_rel(glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp"))),
        include_dirs=[INCLUDE],
        extra_compile_args={"cxx": flags + ["-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )


def _cuda_extension():
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources = glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")) + glob.glob(
        str(ROOT / "csrc" / "cuda" / "*.cpp")
    )
    return cpp_extension.CUDAExtension(
        name="decodekit._cuda",
        sources=_rel(sources),
        include_dirs=[INCLUDE] + _extra_cuda_includes(),
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"],
        },
    )


ext_modules = [_cpu_extension()]
if _want_cuda():
    ext_modules.append(_cuda_extension())

setup(
    packages=find_packages(include=["decodekit", "decodekit.*"])
    + ["decodekit.triton_kernels", "decodekit.bench"],
    # triton_kernels/ and bench/ stay at the top level (DESIGN.md) but install inside the package,
    # so `decodekit bench` works from any installed copy.
    package_dir={"decodekit.triton_kernels": "triton_kernels", "decodekit.bench": "bench"},
    # the model zoo's trained weights ship inside the package (fp16 safetensors + configs), with the
    # held-out text and the speed/quality profile measured on the zoo (decodekit profile)
    package_data={"decodekit.zoo": ["weights/*/*.json", "weights/*/*.safetensors", "data/*.txt", "profile_cpu.json"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
