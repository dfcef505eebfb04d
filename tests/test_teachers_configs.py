"""Every shipped teacher snippet is a valid config whose family and options exist."""

from __future__ import annotations

from pathlib import Path

import pytest

import teachers
from teachers.arch import ARCH_PRESETS
from teachers.registry import get_family, spec_options, split_options
from usjepa.config import load_config

SNIPPETS = sorted((Path(__file__).resolve().parents[1] / "configs" / "teacher").glob("*.yaml"))


def test_there_is_a_snippet_per_family():
    families = {load_config(p).teacher.family for p in SNIPPETS}
    assert set(teachers.FAMILIES) <= families


@pytest.mark.parametrize("path", SNIPPETS, ids=[p.stem for p in SNIPPETS])
def test_snippet_is_valid(path):
    cfg = load_config(path)
    family, checkpoint, opts = spec_options(cfg.teacher)
    fam = get_family(family)
    split_options(fam, opts)  # raises on an option the family does not take
    assert bool(checkpoint) == fam.needs_checkpoint
    if family in ("mae", "urfm", "dinov2", "ijepa", "usfm", "vit"):
        assert opts.get("arch") in ARCH_PRESETS


def test_random_snippet_loads():
    t = teachers.load_spec(load_config(Path(SNIPPETS[0]).parent / "random_vit_tiny.yaml").teacher)
    assert (t.embed_dim, t.patch_size, t.family) == (192, 16, "random")
