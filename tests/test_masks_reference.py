"""Reference mask samplers against samplers written here from the published rules of I-JEPA's MaskCollator
(src/masks/multiblock.py) and V-JEPA's multiblock3d collator, on the 14x14 grid of a ViT-B/16 at 224 px."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from usjepa.config import MaskConfig, RegionMaskConfig
from usjepa.masks import IJepaMultiBlock, MaskCollator, VJepaMultiBlock, build_masker
from usjepa.train.sampler import ResumableBatchSampler

GRID = (14, 14)
N = GRID[0] * GRID[1]


# ----------------------------------------------------------------------------- the published rules, restated


def rule_ijepa_shape(r: float, scale, aspect, grid=GRID) -> tuple[int, int]:
    """One uniform r sets scale and aspect; h, w shrink until they are smaller than the grid."""
    keep = int(grid[0] * grid[1] * (scale[0] + r * (scale[1] - scale[0])))
    ar = aspect[0] + r * (aspect[1] - aspect[0])
    h, w = round(math.sqrt(keep * ar)), round(math.sqrt(keep / ar))
    h, w = min(h, grid[0] - 1), min(w, grid[1] - 1)
    return h, w


def rule_vjepa_shape(r_aspect: float, scale: float, aspect, grid=GRID) -> tuple[int, int]:
    keep = int(grid[0] * grid[1] * scale)
    ar = aspect[0] + r_aspect * (aspect[1] - aspect[0])
    return min(round(math.sqrt(keep * ar)), grid[0]), min(round(math.sqrt(keep / ar)), grid[1])


def rule_ijepa_batch(rng, batch, t_shape, c_shape, n_targets=4, min_keep=10):
    """-> (truncated context length, truncated target length, untruncated context lengths)."""
    H, W = GRID
    ctx_lens, tgt_lens = [], []
    for _ in range(batch):
        keep_out = []
        for _ in range(n_targets):
            y, x = rng.integers(H - t_shape[0]), rng.integers(W - t_shape[1])  # never the last row / column
            keep_out.append((y, x))
            tgt_lens.append(t_shape[0] * t_shape[1])
        dropped, failures = 0, 0
        while True:
            y, x = rng.integers(H - c_shape[0]), rng.integers(W - c_shape[1])
            box = np.zeros(GRID, bool)
            box[y:y + c_shape[0], x:x + c_shape[1]] = True
            for ty, tx in keep_out[: max(n_targets - dropped, 0)]:
                box[ty:ty + t_shape[0], tx:tx + t_shape[1]] = False
            if box.sum() > min_keep:
                ctx_lens.append(int(box.sum()))
                break
            failures += 1
            if failures % 20 == 0:
                dropped += 1
    return min(ctx_lens), min(tgt_lens), ctx_lens


def rule_vjepa_batch(rng, batch, shape, n_blocks):
    """-> (truncated context length, truncated target length, untruncated context lengths)."""
    H, W = GRID
    ctx, tgt = [], []
    for _ in range(batch):
        while True:
            covered = np.zeros(GRID, bool)
            for _ in range(n_blocks):
                y, x = rng.integers(H - shape[0] + 1), rng.integers(W - shape[1] + 1)
                covered[y:y + shape[0], x:x + shape[1]] = True
            if (~covered).any():
                break
        ctx.append(int((~covered).sum()))
        tgt.append(int(covered.sum()))
    return min(ctx), min(tgt), ctx


# ----------------------------------------------------------------------------- helpers


class _Draws:
    """A generator stand-in whose `random()` returns the given values in turn."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


class _FixedIJepa(IJepaMultiBlock):
    def __init__(self, shapes, **kw):
        super().__init__(grid=GRID, **kw)
        self._shapes = shapes

    def block_shape(self, rng, scale, aspect):
        rng.random()
        return self._shapes[0] if scale == self.target_scale else self._shapes[1]


class _FixedVJepa(VJepaMultiBlock):
    def __init__(self, shape, **kw):
        super().__init__(grid=GRID, **kw)
        self._shape = shape

    def block_shape(self, rng, scale):
        return self._shape


def _same_mean(a, b, z=4.0) -> bool:
    """Two samples of per-image counts agree in mean within z standard errors (and are not both degenerate)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    return abs(a.mean() - b.mean()) <= z * se + 0.25


def _seeds(b, batch=128):
    return list(range(b * batch, (b + 1) * batch))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("target_scale", [(0.15, 0.2), (0.075, 0.125)])
def test_ijepa_block_shapes_follow_the_correlated_draw_and_the_shrink_rule(target_scale):
    m = IJepaMultiBlock(grid=GRID, target_scale=target_scale)
    for r in np.linspace(0.0, 0.999, 200):
        assert m.block_shape(_Draws([r]), target_scale, (0.75, 1.5)) == rule_ijepa_shape(r, target_scale, (0.75, 1.5))
        assert m.block_shape(_Draws([r]), (0.85, 1.0), (1.0, 1.0)) == rule_ijepa_shape(r, (0.85, 1.0), (1.0, 1.0))
    # the context block of the published scales is always 13 x 13 (a 14 x 14 block shrinks to 13)
    assert {m.block_shape(_Draws([r]), (0.85, 1.0), (1.0, 1.0)) for r in np.linspace(0, 0.999, 50)} == {(13, 13)}


def test_vjepa_block_shapes_draw_aspect_on_its_own_and_clip_to_the_grid():
    m = VJepaMultiBlock(grid=GRID)
    for r in np.linspace(0.0, 0.999, 100):
        for _, scale in m.generators:
            assert m.block_shape(_Draws([0.3, 0.6, r]), scale) == rule_vjepa_shape(r, scale, (0.75, 1.5))


# ----------------------------------------------------------------------------- statistics against the rules


@pytest.mark.parametrize("scale", [(0.15, 0.2), (0.075, 0.125)])
def test_ijepa_counts_match_the_rules_for_every_target_shape(scale):
    shapes = sorted({rule_ijepa_shape(r, scale, (0.75, 1.5)) for r in np.linspace(0, 0.999, 400)})
    rng = np.random.default_rng(0)
    for t_shape in shapes:
        ours = _FixedIJepa((t_shape, (13, 13)), target_scale=scale)
        mine = [ours(_seeds(b))[0] for b in range(6)]
        raw = [ours(_seeds(b), truncate=False)[0][0] for b in range(6)]
        ref = [rule_ijepa_batch(rng, 128, t_shape, (13, 13)) for _ in range(6)]
        assert all(mb.targets.shape[1:] == (4, t_shape[0] * t_shape[1]) for mb in mine)
        ours_raw = [len(c) for r in raw for c in r]
        assert _same_mean(ours_raw, [x for _, _, lens in ref for x in lens]), t_shape
        ours_trunc = np.mean([mb.context.shape[1] for mb in mine])
        ref_trunc = np.mean([c for c, _, _ in ref])
        assert ours_trunc == pytest.approx(ref_trunc, rel=0.08, abs=3), t_shape


@pytest.mark.parametrize("n_blocks,scale", [(8, 0.15), (2, 0.7)])
def test_vjepa_counts_match_the_rules(n_blocks, scale):
    rng = np.random.default_rng(1)
    for r in (0.0, 0.5, 0.999):
        shape = rule_vjepa_shape(r, scale, (0.75, 1.5))
        ours = _FixedVJepa(shape, generators=((n_blocks, scale),))
        mine = [ours(_seeds(b))[0] for b in range(10)]
        raw = [ours(_seeds(b), truncate=False)[0][0] for b in range(4)]
        ref = [rule_vjepa_batch(rng, 128, shape, n_blocks) for _ in range(10)]
        # per image (before truncation): tight; the batch minimum is a noisy statistic: looser
        assert _same_mean([len(c) for r in raw for c in r], [x for _, _, lens in ref[:4] for x in lens]), shape
        ours_ctx, ours_tgt = np.mean([m.context.shape[1] for m in mine]), np.mean([m.targets.shape[2] for m in mine])
        ref_ctx, ref_tgt = np.mean([c for c, _, _ in ref]), np.mean([t for _, t, _ in ref])
        assert ours_ctx == pytest.approx(ref_ctx, abs=4), shape
        assert ours_tgt == pytest.approx(ref_tgt, abs=6), shape


def test_ijepa_edges_truncation_and_disjoint_sets():
    m = build_masker(OmegaConf.structured(MaskConfig(preset="ijepa")), GRID)
    for b in range(10):
        (mb,) = m(_seeds(b, 32))
        (raw_ctx, raw_tgt), = m(_seeds(b, 32), truncate=False)
        for i in range(32):
            idx = np.concatenate([mb.context[i].numpy(), mb.targets[i].flatten().numpy()])
            assert (idx // 14 < 13).all() and (idx % 14 < 13).all()  # never the last row or column
            # truncation keeps the first patches in raster order of the untruncated lists
            assert np.array_equal(mb.context[i].numpy(), raw_ctx[i][: mb.context.shape[1]])
            assert not set(mb.context[i].tolist()) & set(mb.targets[i].flatten().tolist())
        assert mb.context.shape[1] == min(len(c) for c in raw_ctx)


def test_vjepa_targets_reach_the_edges_and_the_context_is_the_complement():
    m = build_masker(OmegaConf.structured(MaskConfig(preset="salt")), GRID)
    rows = set()
    for b in range(5):
        for mb, (ctx, tgts) in zip(m(_seeds(b, 16)), m(_seeds(b, 16), truncate=False)):
            for c, (t,) in zip(ctx, tgts):
                assert len(c) + len(t) == N and not set(c.tolist()) & set(t.tolist())
                rows |= set((t // 14).tolist())
            assert mb.context.shape[1] == min(len(c) for c in ctx)
    assert 13 in rows


def test_masks_are_a_function_of_the_items_not_of_their_order():
    m = build_masker(OmegaConf.structured(MaskConfig(preset="usjepa")), GRID)
    seeds = _seeds(3, 16)
    a, b = m(seeds)[0], m(seeds[::-1])[0]
    assert a.context.shape == b.context.shape
    assert np.array_equal(a.context[0].numpy(), b.context[-1].numpy())
    assert not np.array_equal(m(_seeds(4, 16))[0].context.numpy()[:, :20], a.context.numpy()[:, :20])


def test_truncation_acts_on_each_rank_batch():
    """2 ranks: each rank's collator truncates to the shortest list of its own shard, as upstream."""
    m = build_masker(OmegaConf.structured(MaskConfig(preset="usjepa")), GRID)
    differs = False
    shards = [iter(ResumableBatchSampler(256, 32, seed=0, rank=r, world=2, total_steps=6)) for r in (0, 1)]
    for _ in range(6):
        keys = [next(s) for s in shards]
        glob = min(len(c) for c in m([s for k in keys for _, s in k], truncate=False)[0][0])
        for k in keys:
            seeds = [s for _, s in k]
            assert len(seeds) == 16
            (mb,) = m(seeds)
            assert mb.context.shape[1] == min(len(c) for c in m(seeds, truncate=False)[0][0])
            differs |= mb.context.shape[1] != glob
    assert differs


def test_region_conditioned_reference_masks_stay_inside_the_region():
    valid = np.zeros((8,) + GRID, dtype=bool)
    for i in range(8):
        valid[i, 2 + i % 3: 12, 1: 13 - i % 2] = True
    for preset in ("usjepa", "salt"):
        cfg = MaskConfig(preset=preset, region=RegionMaskConfig(enabled=True, tau=4))
        m = build_masker(OmegaConf.structured(cfg), GRID)
        for b in range(5):
            for mb in m(_seeds(b, 8), valid):
                for i in range(8):
                    ok = set(np.flatnonzero(valid[i]).tolist())
                    assert set(mb.context[i].tolist()) <= ok and set(mb.targets[i].flatten().tolist()) <= ok
                assert mb.targets.shape[2] >= 4


def test_collator_uses_the_reference_sampler_and_stacks_without_padding():
    import torch

    m = build_masker(OmegaConf.structured(MaskConfig(preset="salt")), (8, 8))
    col = MaskCollator(m, 8, lambda items: {"item_seed": torch.tensor([i["s"] for i in items])})
    batch = col([{"s": s} for s in range(6)])
    assert len(batch["masks"]) == 2
    assert all(mb.context_valid is None and mb.targets_valid is None for mb in batch["masks"])


def test_masks_verb_on_the_recipes_matches_the_reference_collators(capsys):
    """`usjepa masks RECIPE --batch 128` against the upstream collators at batch 128 on 14 x 14: I-JEPA's at US-JEPA's
    scales gives 93-94 context and 19.0 target patches per block; V-JEPA's, in 2-D, leaves 37.7 / 11.1 of 196
    patches visible for the short / long pair (measured with the upstream code, method_fidelity D3)."""
    import json
    from pathlib import Path

    from usjepa.cli import main

    pre = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    assert main(["masks", str(pre / "usjepa_vitb16.yaml"), "--batch", "128", "--batches", "16", "--json"]) == 0
    (us,) = json.loads(capsys.readouterr().out)["pairs"]
    assert us["context_tokens"]["mean"] == pytest.approx(93.5, rel=0.08)
    assert us["target_tokens_per_block"]["mean"] == pytest.approx(19.0, rel=0.08)
    assert main(["masks", str(pre / "salt_vitb16.yaml"), "--batch", "128", "--batches", "16", "--json"]) == 0
    short, long = json.loads(capsys.readouterr().out)["pairs"]
    assert short["masked_share"]["mean"] == pytest.approx(1 - 37.7 / 196, abs=0.03)
    assert long["masked_share"]["mean"] == pytest.approx(1 - 11.1 / 196, abs=0.03)
    assert main(["masks", str(pre / "salt_vitb16.yaml"), "--batch", "16", "--batches", "2"]) == 0
    assert "masked share" in capsys.readouterr().out
