"""`usjepa teacher inspect / verify`: family detection from keys, key reports, forward-pass statistics."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from teachers import cli
from teachers.inspection import detect_family, inspect_checkpoint, verify_teacher
from usjepa.models import build_vit, export_encoder


def vit_sd(**kw) -> dict:
    kw = dict(dict(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=0, global_pool="",
                   fc_norm=False), **kw)
    return dict(VisionTransformer(**kw).state_dict())


def beit_sd() -> dict:
    m = Beit(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3, num_classes=0, global_pool="",
             use_abs_pos_emb=False, use_shared_rel_pos_bias=True, init_values=0.1)
    return {**m.state_dict(), "mask_token": torch.zeros(1, 1, 192)}


def dinov2_sd() -> dict:
    sd = vit_sd(img_size=28, patch_size=14, init_values=1e-5)
    return {**sd, "mask_token": torch.zeros(1, 192)}


CASES = {
    "urfm": lambda: {"model": "mae_vit_base",
                     "ema_state_dict": {**vit_sd(), "decoder_embed.weight": torch.zeros(2, 2)}},
    "ijepa": lambda: {"target_encoder": {f"module.{k}": v for k, v in vit_sd(class_token=False).items()}, "epoch": 1},
    "usfm": beit_sd,
    "dinov2": dinov2_sd,
    "mae": lambda: {"model": {**vit_sd(), "mask_token": torch.zeros(1, 1, 192)}},
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_detects_family_from_keys(tmp_path, family):
    path = tmp_path / "ckpt.pth"
    torch.save(CASES[family](), path)
    found, reason = detect_family(torch.load(path, weights_only=True), path)
    assert found == family, reason
    info = inspect_checkpoint(str(path))
    assert info["family"] == family and info["loads"], info.get("error")
    assert info["embed_dim"] == 192 and info["params"] > 0


def test_detects_usjepa_export(tmp_path):
    vit = build_vit("vit_tiny", depth=1, img_size=(32, 32), patch_size=8)
    mc = dict(arch="vit_tiny", depth=1, img_size=[32, 32], patch_size=8, in_chans=1, cls_token=True)
    path = export_encoder(vit, tmp_path / "encoder.safetensors", model_cfg=mc)
    assert detect_family(None, path)[0] == "native"


def test_inspect_reports_geometry_and_key_problems(tmp_path):
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    sd = dinov2_sd()
    torch.save({**sd, "pos_embed": torch.zeros(1, 1 + 37 * 37, 192), "register_tokens": torch.zeros(1, 4, 192)}, path)
    info = inspect_checkpoint(str(path))
    geometry = (info["family"], info["patch_size"], info["native_grid"], info["prefix_tokens"])
    assert geometry == ("dinov2", 14, [37, 37], 5)
    assert info["dropped"] == ["mask_token"] and info["preset"] == "imagenet"
    torch.save({**sd, "head.weight": torch.zeros(10, 192)}, path)
    bad = inspect_checkpoint(str(path), family="dinov2")
    assert not bad["loads"] and bad["unexpected"] == ["head.weight"] and "head.weight" in bad["error"]


def test_verify_reports_token_statistics():
    info = verify_teacher("random", None, (32, 48), batch=2, arch="vit_tiny", depth=1, patch_size=16)
    assert info["tokens_shape"] == [2, 6, 192] and info["grid"] == [2, 3] and info["finite"]
    assert info["std"] > 0 and 1 <= info["effective_rank"] <= 12


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run_from_args(parser.parse_args(argv))


def test_cli_inspect_json_and_verify(tmp_path, capsys):
    path = tmp_path / "m.pth"
    torch.save(CASES["mae"](), path)
    assert run(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "mae" and info["dropped"] == ["mask_token"]
    assert run(["verify", "--family", "random", "--img-size", "32", "32", "--option", "depth=1",
                "--option", "patch_size=16"]) == 0
    assert "effective_rank" in capsys.readouterr().out
    assert run(["inspect", str(path), "--family", "usfm"]) == 1  # loads=False: no relative-position table
    assert run(["verify", "--family", "random", "--option", "seeed=1"]) == 2
    assert "has no option 'seeed'" in capsys.readouterr().err


def test_detects_training_and_classifier_layouts(tmp_path, capsys):
    """A DINOv2 run's teacher_checkpoint.pth and a timm-named classifier (TinyUSFM-like) need no --family."""
    sd = dinov2_sd()
    heads = {"dino_head.mlp.0.weight": torch.zeros(8, 192), "ibot_head.mlp.0.weight": torch.zeros(8, 192)}
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **heads}}, tmp_path / "teacher_ckpt.pth")
    info = inspect_checkpoint(str(tmp_path / "teacher_ckpt.pth"))
    assert info["family"] == "dinov2" and info["loads"], info.get("error")
    assert sorted(info["dropped"]) == ["dino_head.mlp.0.weight", "ibot_head.mlp.0.weight", "mask_token"]
    assert info["architecture"]["pos_interpolation"]["evidence"].startswith("DINOv2 training defaults")
    torch.save({f"module.{k}": v for k, v in vit_sd(num_classes=5).items()}, tmp_path / "cls.pth")
    assert run(["verify", str(tmp_path / "cls.pth")]) == 0
    out = capsys.readouterr().out
    assert "family: vit" in out and "heads: 3  [inferred" in out and "WARNING" in out and "num_heads=12" in out
