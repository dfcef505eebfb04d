"""Portable CPU numerics: the same floating-point results on any x86-64 CPU with AVX2, for runs that must reproduce.

PyTorch, MKL, oneDNN, NumPy and OpenBLAS each pick their fastest kernels for the CPU they find (AVX2, AVX-512,
AVX-512 with bf16 units...). Kernels for different instruction sets round differently, and a training run amplifies
the last bit into a different model: on one commit the demo's student scored 66.4 on an AVX512-BF16 CPU and 54.3 on
another (with the teacher's `precision=auto` choosing bf16 on one and fp32 on the other, the larger effect).
Pinning every library to its AVX2 kernels and a fixed thread count makes the arithmetic the same wherever AVX2
exists. The variables are read when each library loads, so a process applies them by re-executing itself
(`reexec_pinned`) before anything is imported.
"""

from __future__ import annotations

import os
import sys

PINNED_THREADS = 2
MARKER = "USJEPA_PINNED_NUMERICS"

# Each library's documented switch for "use the AVX2 kernels even where wider ones exist".
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels
    "MKL_CBWR": "AVX2",  # MKL conditional numerical reproducibility (GEMM, the bulk of a step)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, e.g. the patch embedding)
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's OpenBLAS
    # NumPy's runtime-dispatched SIMD loops (exp, log, sin... in the simulator): names of NumPy 2.x and 1.x
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX "
                                "AVX512_CLX AVX512_CNL",
    "OMP_NUM_THREADS": str(PINNED_THREADS),
    "MKL_NUM_THREADS": str(PINNED_THREADS),
}


def cpu_has_avx2() -> bool:
    """True on x86-64 CPUs with AVX2 and FMA (the pinned kernels need both); False elsewhere or when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def pinned() -> bool:
    """Whether this process was started with the pinned environment."""
    return os.environ.get(MARKER) == "1"


def reexec_pinned(argv: list[str]) -> None:
    """Replace this process with `python -m usjepa.cli ARGV` under the pinned environment (returns only when it
    cannot pin: already pinned, or no AVX2 here, in which case results may differ from other machines)."""
    if pinned() or not cpu_has_avx2():
        return
    env = {**os.environ, **PINNED_ENV, MARKER: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "usjepa.cli", *argv], env)


def describe() -> dict:
    """What the arithmetic of this process is pinned to (for a run's README and env.json)."""
    import torch

    return {
        "pinned": pinned(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in PINNED_ENV} if pinned() else {},
    }
