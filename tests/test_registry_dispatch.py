"""Registries are the list of names and the dispatch: a name registered here (and only here) is accepted when the
config loads and reached by the builder; once removed, the config refuses it in one line naming the key.

Covers mask presets / samplers (usjepa.masks.spec), data sources (usjepa.data.spec) and attention backends
(usjepa.models.spec). Each toy entry points at an object of this module and is unregistered afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from usjepa.config import ConfigError, load_config
from usjepa.data.spec import DATA_SOURCES
from usjepa.masks import IJepaMultiBlock, build_masker
from usjepa.masks.spec import MASK_PRESETS, MASK_SAMPLERS
from usjepa.models import attention as A
from usjepa.models.spec import ATTENTION_BACKENDS

TINY = "configs/pretrain/salt_vit_tiny_sim.yaml"


@pytest.fixture
def registered():
    """register(registry, name, target, **facts) for this test only."""
    added = []

    def register(registry, name: str, target: str = "", **facts) -> None:
        registry.register(name, target, **facts)
        added.append((registry, name))

    yield register
    for registry, name in added:
        if name in registry:
            registry.unregister(name)


def _refused(override: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(override.split("=")[0] + "=")


# ----------------------------------------------------------------------------- masks


class ToySampler:
    """A batch sampler that keeps what build_masker handed it and draws every image's context as all patches."""

    def __init__(self, kind: str, grid: tuple[int, int], settings: dict):
        self.kind, self.grid, self.settings = kind, grid, settings

    def __call__(self, seeds, valid=None):
        return [np.arange(self.grid[0] * self.grid[1]) for _ in seeds]


def test_a_registered_mask_preset_and_sampler_are_checked_and_built(registered):
    registered(MASK_PRESETS, "toy_preset", kind="multiblock", context_scale=(0.5, 0.6), context_aspect=(1.0, 1.0),
               target_scale=(0.1, 0.2), target_aspect=(1.0, 1.0), num_targets=2, min_keep=3)
    registered(MASK_SAMPLERS, "toy_sampler", f"{__name__}:ToySampler")
    cfg = load_config(TINY, ["mask.preset=toy_preset", "mask.sampler=toy_sampler", "mask.random_ratio=0.5"])
    toy = build_masker(cfg.mask, (6, 6))
    assert isinstance(toy, ToySampler) and toy.kind == "multiblock" and toy.grid == (6, 6)
    assert toy.settings["target_scale"] == (0.1, 0.2) and toy.settings["num_targets"] == 2
    assert len(toy([1, 2, 3])) == 3
    # the toy preset with the registered reference sampler: the I-JEPA collator with the preset's recipe
    ref = build_masker(load_config(TINY, ["mask.preset=toy_preset", "mask.sampler=reference"]).mask, (6, 6))
    assert isinstance(ref, IJepaMultiBlock) and ref.context_scale == (0.5, 0.6) and ref.num_targets == 2
    assert len(ref([1, 2], None)[0].targets[0]) == 2


def test_unregistered_mask_names_are_refused_with_the_key(registered):
    registered(MASK_SAMPLERS, "toy_sampler", f"{__name__}:ToySampler")
    load_config(TINY, ["mask.sampler=toy_sampler"])
    MASK_SAMPLERS.unregister("toy_sampler")
    _refused("mask.sampler=toy_sampler")
    _refused("mask.preset=toy_preset")


# ----------------------------------------------------------------------------- data sources


def toy_table(cfg):
    """A toy source: the PNGs under data.root, every other one, as organ 'toy'."""
    from usjepa.data.sources import scan_folder

    df = scan_folder(cfg.root, {"image"}).iloc[::2].reset_index(drop=True)
    return df.assign(organ="toy")


def test_a_registered_data_source_is_checked_and_built(registered, tmp_path):
    from usjepa.data import build_dataset, load_table

    ramp = np.tile(np.arange(24, dtype=np.uint8) * 8, (24, 1))
    for i in range(6):
        Image.fromarray(ramp + 10 * i).save(tmp_path / f"p{i}.png")
    registered(DATA_SOURCES, "toy", f"{__name__}:toy_table")
    cfg = load_config(TINY, ["data.source=toy", f"data.root={tmp_path}", "data.panes=whole",
                             "data.colour_frames=keep", "data.region=none"])
    assert list(load_table(cfg.data)["organ"]) == ["toy"] * 3
    ds = build_dataset(cfg.data, None, (16, 16), augment=False)
    assert len(ds) == 3 and ds.source == "toy" and ds[0]["image"].shape[-2:] == (16, 16)
    DATA_SOURCES.unregister("toy")
    _refused("data.source=toy")


# ----------------------------------------------------------------------------- attention backends

calls: list[int] = []


def toy_attention(q, k, v, layout=None):
    """The math kernel, counting its calls."""
    calls.append(q.shape[2])
    return A.math_attention(q, k, v, layout)


def test_a_registered_attention_backend_is_checked_and_used(registered):
    registered(ATTENTION_BACKENDS, "toy", f"{__name__}:toy_attention")
    cfg = load_config(TINY, ["model.attn_backend=toy"])
    torch.manual_seed(0)
    layer = A.Attention(16, 2, backend=cfg.model.attn_backend)
    ref = A.Attention(16, 2, backend="math")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 16)
    calls.clear()
    torch.testing.assert_close(layer(x), ref(x), atol=0, rtol=0)
    assert layer.backend == "toy" and calls == [5]
    ATTENTION_BACKENDS.unregister("toy")
    _refused("model.attn_backend=toy")
    with pytest.raises(ValueError, match="unknown attention backend 'toy'"):
        A.resolve_backend("toy")
