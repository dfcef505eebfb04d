"""Strict, safe checkpoint loading: bad files fail with the offending key names; pickles never run code."""

from __future__ import annotations

import pathlib

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import teachers
from teachers.loading import drop_keys, strip_prefixes, unwrap
from usjepa.models.checkpoint_io import CheckpointError


def mae_state(depth: int = 3) -> dict:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=depth, num_heads=3, num_classes=0,
                          global_pool="", fc_norm=False)
    return dict(m.state_dict())


def save(obj, path: pathlib.Path) -> str:
    torch.save(obj, path)
    return str(path)


class Payload:
    """Unpickling this creates a marker file: stands in for any code a malicious checkpoint would run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = save({"model": mae_state(), "args": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        teachers.load("mae", path)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_training_script_args_namespace_is_accepted(tmp_path):
    """MAE-codebase checkpoints (UltraFedFM) store `args` as an argparse.Namespace beside the weights."""
    import argparse

    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True)
    path = save({"model": mae_state(), "optimizer": {}, "epoch": 399, "args": args}, tmp_path / "checkpoint.pth")
    assert teachers.load("mae", path).backbone.depth == 3


def test_missing_block_names_its_keys(tmp_path):
    sd = {k: v for k, v in mae_state().items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError) as e:
        teachers.load("mae", save(sd, tmp_path / "m.pth"))
    msg = str(e.value)
    assert "missing encoder keys (12): blocks.1.* (12 keys)" in msg
    assert "blocks.0." not in msg and "blocks.2." not in msg
    sd = {k: v for k, v in mae_state().items() if k != "blocks.2.norm2.bias"}
    with pytest.raises(CheckpointError, match=r"missing encoder keys \(1\): blocks\.2\.norm2\.bias\."):
        teachers.load("mae", save(sd, tmp_path / "one.pth"))
    # the depth implied by a named arch must be there too
    with pytest.raises(CheckpointError, match=r"blocks\.11\.\* \(12 keys\)"):
        teachers.load("mae", save(mae_state(), tmp_path / "full.pth"), arch="vit_tiny")


def test_wrong_width_names_the_tensors(tmp_path):
    path = save(mae_state(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as e:
        teachers.load("mae", path, embed_dim=96, num_heads=3)
    assert "shape mismatches" in str(e.value)
    assert "patch_embed.proj.weight: file (192, 3, 8, 8) vs model (96, 3, 8, 8)" in str(e.value)
    sd = mae_state()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 192)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight: file \(100, 192\)"):
        teachers.load("mae", save(sd, tmp_path / "w.pth"))


def test_unknown_extra_key_fails_unless_dropped(tmp_path):
    extra = {"projector.weight": torch.zeros(4, 192), "decoder_pred.bias": torch.zeros(3)}
    path = save({"model": {**mae_state(), **extra}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as e:
        teachers.load("mae", path)
    msg = str(e.value)
    assert "projector.weight" in msg and "decoder_pred.bias" not in msg and "drop-list" in msg
    t = teachers.load("mae", path, drop=["projector.*"])
    assert t.embed_dim == 192


def test_unknown_family_and_option_are_named():
    with pytest.raises(ValueError, match="did you mean 'dinov2'"):
        teachers.load("dinov3")
    with pytest.raises(ValueError, match="has no option 'seeed'.*did you mean 'seed'"):
        teachers.load("random", seeed=1)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        teachers.load("mae")
    with pytest.raises(CheckpointError, match="does not exist"):
        teachers.load("mae", "/nonexistent/teacher.pth")


def test_prefixes_are_stripped_only_as_prefixes():
    t = torch.zeros(1)
    out, seen = strip_prefixes({"module.backbone.blocks.0.x": t, "blocks.1.module.y": t}, ("module.", "backbone."), "f")
    assert set(out) == {"blocks.0.x", "blocks.1.module.y"} and seen == ["backbone.", "module."]
    with pytest.raises(CheckpointError, match="collide at 'a'"):
        strip_prefixes({"module.a": t, "a": t}, ("module.",), "f")
    kept, dropped = drop_keys({"decoder_embed.weight": t, "blocks.0.decoder_x": t, "rel.relative_position_index": t},
                              ("decoder_*", "*relative_position_index"))
    assert list(kept) == ["blocks.0.decoder_x"] and len(dropped) == 2


def test_unwrap_follows_wrappers_and_reports_bad_ones():
    sd = {"w": torch.zeros(1)}
    assert unwrap({"model": {"state_dict": sd}, "epoch": 3}, ("model", "state_dict"), "f")[0] == sd
    assert unwrap({"ema": sd, "model": "a string"}, ("model",), "f", which="ema")[1] == ["ema"]
    with pytest.raises(CheckpointError, match="no entry 'target_encoder'.*top-level keys"):
        unwrap({"encoder": sd}, (), "f", which="target_encoder")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        unwrap({"epoch": 3, "model": "vit"}, ("model",), "f")


def test_safetensors_checkpoint(tmp_path):
    path = tmp_path / "mae.safetensors"
    save_file({k: v.contiguous() for k, v in mae_state().items()}, str(path))
    assert teachers.load("mae", str(path)).backbone.depth == 3


def test_family_patch_size_must_agree(tmp_path):
    path = save(mae_state(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="has patch size 8"):
        teachers.load("mae", path, patch_size=16)
