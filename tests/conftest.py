"""Shared test setup: CPU threads kept low (the suite shares 2 cores), small deterministic defaults."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` skip with a visible reason when no SLURM client is on PATH."""
    if shutil.which("sinfo"):
        return
    skip = pytest.mark.skip(reason="no SLURM here (sinfo not on PATH); `make test` with CI=true starts a local cluster")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Small probe workloads run fastest on one thread (above all on a busy CPU); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory) -> str:
    """One small simulated dataset shared by the trainer tests (generated on first use)."""
    return str(tmp_path_factory.mktemp("sim") / "lesion96")
