"""The GPU path, on a GPU: the checks of benchmarks/cuda_checks.py under pytest (`pytest -m cuda`).

`make gpu-check` runs the same functions without pytest and then measures; here each is a test that skips
without CUDA. Their CPU variants run in tests/test_gpu_check.py.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cuda_checks  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("name", list(cuda_checks.CHECKS))
def test_gpu_path(name):
    try:
        cuda_checks.CHECKS[name]("cuda")
    except cuda_checks.Skip as e:
        pytest.skip(str(e))


def test_xformers_is_the_auto_backend_when_it_imports():
    from usjepa.models import attention as A

    if A._load_xformers() is None:
        pytest.skip("xformers is not importable on this CUDA machine")
    assert A.resolve_backend("auto") == "xformers"
