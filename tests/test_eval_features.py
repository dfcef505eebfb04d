import numpy as np
import pytest
import torch
from torch import nn

from usjepa.eval.encoders import ProbeEncoder, weights_hash
from usjepa.eval.features import cache_path, extract_features

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest


class PatchMeanEncoder(nn.Module):
    """Stand-in encoder (the contract: embed_dim, patch_size, forward -> [B, N, D], get_intermediate_layers)."""

    def __init__(self, dim=8, patch=4):
        super().__init__()
        self.embed_dim, self.patch_size, self.num_prefix_tokens = dim, patch, 1
        self.proj = nn.Linear(patch * patch, dim)
        self.calls = 0

    def forward(self, images, keep=None):
        self.calls += 1
        p = self.patch_size
        x = images[:, 0].unfold(1, p, p).unfold(2, p, p).flatten(1, 2).flatten(-2)  # [B, N, p*p]
        return self.proj(x)

    def get_intermediate_layers(self, images, n=1):
        x = self(images)
        return [(x * (i + 1), x.mean(1) * 10 + i) for i in range(n)]


class ToyImages(torch.utils.data.Dataset):
    """Items as the data contract gives them; item 3 is bad (None)."""

    def __init__(self, n=10, size=16):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, size, size, generator=g)
        self.labels = np.arange(n) % 2

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == 3:
            return None
        return {"image": self.images[i], "region": torch.ones(16, 16, dtype=torch.bool),
                "label": torch.tensor(int(self.labels[i])), "target": torch.tensor(float(i)), "index": i,
                "path": f"img{i}.png", "patient_id": f"p{i // 2}"}


def _enc(module=None, name="toy"):
    module = module or PatchMeanEncoder()
    return ProbeEncoder(name, "student", module.eval(), weights_hash(module), True)


def test_features_are_token_means_and_cls_of_the_last_k_blocks_and_skip_bad_items():
    enc = _enc()
    ds = ToyImages()
    fs = extract_features(enc, ds, last_k=2, want_tokens=True, batch_size=4)
    assert len(fs) == 9 and 3 not in fs.index.tolist()
    tokens = enc.module(ds.images[fs.index])
    torch.testing.assert_close(fs.mean[:, 0], tokens.mean(1))  # older block first
    torch.testing.assert_close(fs.mean[:, 1], 2 * tokens.mean(1))
    torch.testing.assert_close(fs.cls[:, 1], tokens.mean(1) * 10 + 1)
    assert fs.tokens.dtype == torch.float16 and fs.tokens.shape == (9, 16, 8)
    assert fs.pooled("cls+mean", 2).shape == (9, 32)
    assert fs.patient_id[0] == "p0" and fs.target[4] == 5.0  # row 4 is item 5 (item 3 was skipped)


def test_cache_is_reused_keyed_by_weights_and_extended_when_more_is_asked(tmp_path):
    ds = ToyImages()
    enc = _enc()
    a = extract_features(enc, ds, cache_dir=tmp_path, data_id="d1")
    calls = enc.module.calls
    b = extract_features(enc, ds, cache_dir=tmp_path, data_id="d1")
    assert enc.module.calls == calls  # served from disk
    torch.testing.assert_close(a.mean, b.mean)
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic write left no temp file
    extract_features(enc, ds, cache_dir=tmp_path, data_id="d1", last_k=2)  # needs more: recomputed
    assert enc.module.calls > calls
    other = PatchMeanEncoder()
    with torch.no_grad():
        other.proj.weight.add_(1.0)
    c = extract_features(_enc(other), ds, cache_dir=tmp_path, data_id="d1")
    assert not torch.allclose(a.mean, c.mean)  # different weights -> different cache entry
    assert cache_path(tmp_path, "e", "d1") != cache_path(tmp_path, "e", "d1", "blur", 1)


def test_the_data_id_of_cached_features_follows_the_preprocessing_rules(monkeypatch):
    """Features cached from pixels of older preprocessing rules (VIEW_VERSION) get another id: never reused."""
    from usjepa.data.spec import DataConfig
    from usjepa.eval import features

    ds, idx = ToyImages(), np.arange(9)
    now = features.dataset_identity(DataConfig(), "train", (16, 16), ds, idx)
    assert features.dataset_identity(DataConfig(), "train", (16, 16), ds, idx) == now
    monkeypatch.setattr(features, "VIEW_VERSION", features.VIEW_VERSION + 1)
    assert features.dataset_identity(DataConfig(), "train", (16, 16), ds, idx) != now


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    ds, enc = ToyImages(), _enc()
    extract_features(enc, ds, cache_dir=tmp_path, data_id="d")
    path = cache_path(tmp_path, enc.identity, "d")
    path.write_bytes(b"garbage")
    fs = extract_features(enc, ds, cache_dir=tmp_path, data_id="d")
    assert len(fs) == 9


def test_corruptions_change_the_features_but_not_the_items():
    ds, enc = ToyImages(), _enc()
    clean = extract_features(enc, ds)
    blurred = extract_features(enc, ds, corruption="blur", severity=2)
    np.testing.assert_array_equal(clean.index, blurred.index)
    assert not torch.allclose(clean.mean, blurred.mean)


def test_encoder_without_intermediate_layers_gives_mean_only():
    m = PatchMeanEncoder()
    enc = ProbeEncoder("t", "teacher", m, weights_hash(m), use_intermediate=False)
    fs = extract_features(enc, ToyImages())
    assert fs.cls is None and fs.last_k == 1
    with pytest.raises(ValueError, match="no CLS token"):
        fs.pooled("cls")
    with pytest.raises(ValueError, match="use last_k=\\[1\\]"):
        extract_features(enc, ToyImages(), last_k=2)
