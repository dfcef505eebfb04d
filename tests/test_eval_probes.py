"""Attentive and kNN probes, and the periodic probe the trainer calls."""

import numpy as np
import pytest
import torch
from torch import nn

from usjepa.eval import attentive_probe, knn_probe, linear_probe, quick_linear_probe
from usjepa.eval.attentive import AttentivePooler, token_stats

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest


def test_token_space_cross_attention_equals_multihead_attention():
    torch.manual_seed(0)
    pool = AttentivePooler(64, num_queries=2, num_heads=4)
    with torch.no_grad():
        for p in pool.parameters():
            p.normal_(0, 0.2)
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([pool.q_proj.weight, pool.k_proj.weight, pool.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]))
        mha.out_proj.weight.copy_(pool.out_proj.weight)
        mha.out_proj.bias.copy_(pool.out_proj.bias)
    x = torch.randn(3, 20, 64)
    kv = pool.norm_kv(x)
    ref = mha(pool.query.expand(3, -1, -1), kv, kv, need_weights=False)[0]
    torch.testing.assert_close(pool.cross_attention(x), ref, atol=1e-5, rtol=1e-5)


def _token_task(n, seed, tokens=16, dim=32):
    """The class is written into one random token of each item: mean pooling dilutes it, attention can find it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, tokens, dim, generator=g)
    signal = torch.eye(3, dim) * 6
    where = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), where] += signal[y]
    return x, y


def test_attentive_probe_finds_a_token_that_mean_pooling_dilutes():
    tr, va, te = _token_task(300, 0), _token_task(100, 1), _token_task(300, 2)
    r = attentive_probe(tr, va, te, lrs=[1e-2, 1e-4], wds=[0.01], epochs=20, batch_size=100, seed=0)
    mean_pooled = linear_probe((tr[0].mean(1), tr[1]), (va[0].mean(1), va[1]), (te[0].mean(1), te[1]))
    assert r["macro_f1"] > 0.85 and r["macro_f1"] > mean_pooled["macro_f1"] + 0.15
    assert r["selected"] == {"lr": 1e-2, "wd": 0.01}  # the too-small lr loses on validation
    shuffled = (te[0], te[1][torch.randperm(300)])
    again = attentive_probe(tr, va, shuffled, lrs=[1e-2, 1e-4], wds=[0.01], epochs=20, batch_size=100, seed=0)
    assert again["val"] == r["val"] and again["macro_f1"] < 0.6  # test labels never steer the fit


def test_attentive_probe_standardises_token_channels_with_train_statistics():
    """One loud channel of noise (as trained encoders often carry) drowns the signal under a per-token LayerNorm;
    z-scoring each channel with train statistics brings it back, and the statistics are exact."""
    tr, va, te = _token_task(300, 0), _token_task(100, 1), _token_task(300, 2)
    g = torch.Generator().manual_seed(3)

    def loud(x):
        x = x.clone() * 0.05
        x[..., -1] = 100 * torch.randn(x.shape[:2], generator=g)
        return x

    tr, va, te = ((loud(x), y) for x, y in (tr, va, te))
    kw = dict(lrs=[1e-2], wds=[0.01], epochs=20, batch_size=100, seed=0)
    on = attentive_probe(tr, va, te, **kw)
    off = attentive_probe(tr, va, te, standardize=False, **kw)
    assert on["macro_f1"] > 0.85 and on["macro_f1"] > off["macro_f1"] + 0.2, (on["macro_f1"], off["macro_f1"])
    mean, std = token_stats(tr[0].half(), chunk=7)
    flat = tr[0].half().float().reshape(-1, tr[0].shape[-1])
    torch.testing.assert_close(mean, flat.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std, flat.std(0, unbiased=False), atol=1e-3, rtol=1e-3)


def test_knn_picks_k_on_validation_and_centres_features():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, (3, 16))

    def draw(n):
        y = rng.integers(0, 3, n)
        return (means[y] + rng.normal(0, 0.7, (n, 16)) + 1e4).astype(np.float32), y  # a huge shared offset

    r = knn_probe(draw(300), draw(100), draw(300), ks=[1, 15])
    assert r["macro_f1"] > 0.85 and r["selected"]["k"] in (1, 15)
    raw = knn_probe(draw(300), draw(100), draw(300), ks=[15], center=False)
    assert raw["macro_f1"] < r["macro_f1"] - 0.2


class SignalEncoder(nn.Module):
    """Patch tokens that carry each image's mean brightness (informative) plus noise dims."""

    embed_dim, patch_size = 4, 4

    def forward(self, images, keep=None):
        x = nn.functional.avg_pool2d(images[:, :1], 4).flatten(2).transpose(1, 2)  # [B, N, 1]
        return torch.cat([x, torch.zeros_like(x).expand(-1, -1, 3)], -1)


def _loader(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    img = torch.rand(n, 1, 16, 16, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.4
    return [{"image": img[i:i + 32], "label": y[i:i + 32]} for i in range(0, n, 32)]


def test_quick_linear_probe_scores_the_encoder_and_restores_its_mode():
    enc = SignalEncoder().train()
    r = quick_linear_probe(enc, _loader(128, 0), _loader(64, 1))
    assert r["macro_f1"] > 0.95 and r["n_train"] == 128 and r["n_val"] == 64
    assert enc.training  # put back in train mode for the training loop
    blind = SignalEncoder()
    blind.forward = lambda images, keep=None: torch.randn(images.shape[0], 16, 4)
    assert quick_linear_probe(blind, _loader(128, 0), _loader(64, 1))["macro_f1"] < 0.75


def test_quick_linear_probe_needs_labels():
    unlabelled = [{"image": torch.rand(8, 1, 16, 16), "label": torch.full((8,), -1)}]
    with pytest.raises(ValueError, match="needs labelled items"):
        quick_linear_probe(SignalEncoder(), unlabelled, unlabelled)


def _brightness_manifest(root, labelled=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for p in range(40):
        y = p % 2
        img = (rng.uniform(0.1, 0.5, (16, 16)) + 0.4 * y) * 255
        Image.fromarray(img.astype(np.uint8)).save(root / "img" / f"{p}.png")
        rows.append(f"img/{p}.png,{y if labelled else ''},p{p},{['train', 'train', 'val'][p % 3]}")
    (root / "m.csv").write_text("path,label,patient_id,split\n" + "\n".join(rows) + "\n")
    return root / "m.csv"


def test_periodic_probe_reads_the_run_data_once_and_scores_the_student(tmp_path, caplog):
    from omegaconf import OmegaConf

    from usjepa.config import PretrainConfig
    from usjepa.eval import periodic
    from usjepa.eval.periodic import periodic_probe

    cfg = OmegaConf.structured(PretrainConfig)
    cfg.data.source, cfg.data.manifest, cfg.data.task = "manifest", str(_brightness_manifest(tmp_path / "a")), "label"
    cfg.model.img_size = [16, 16]
    assert periodic_probe(SignalEncoder(), cfg) > 0.9
    assert len(periodic._IMAGES) == 1  # images kept for the next call; only the encoder runs again
    cfg.data.manifest = str(_brightness_manifest(tmp_path / "b", labelled=False))
    assert periodic_probe(SignalEncoder(), cfg) is None
    assert "periodic probe disabled" in caplog.text
