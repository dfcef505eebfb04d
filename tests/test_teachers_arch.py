"""Architecture facts: every one is reported as declared or inferred, and a head count the weights cannot show is
said out loud. A 12-head, 192-wide ViT (TinyUSFM's layout) is the hard case: it loads as 3 heads unless told."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import teachers
from teachers import cli
from teachers.arch import KNOWN_HEADS, heads_from_width
from usjepa.config import ConfigError, load_config
from usjepa.models.checkpoint_io import CheckpointError

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
PRESET = Path(__file__).resolve().parents[1] / "configs" / "teacher" / "tinyusfm.yaml"


def tinyusfm_like(depth: int = 2, img: int = 32, patch: int = 8, seed: int = 0) -> VisionTransformer:
    """TinyUSFM's ViT (192 wide, 12 heads, qkv bias) with non-trivial weights everywhere."""
    m = VisionTransformer(img_size=img, patch_size=patch, embed_dim=192, depth=depth, num_heads=12, num_classes=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            base = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.0
            p.copy_(base + (0.05 if p.ndim > 1 else 0.1) * torch.randn(p.shape, generator=g))
    return m.eval()


def save_tinyusfm(m: VisionTransformer, path: Path) -> str:
    """TinyUSFM's file layout: a flat dict, keys under `module.model.`, with the classifier head."""
    torch.save({f"module.model.{k}": v for k, v in m.state_dict().items()}, path)
    return str(path)


def reference(m: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.forward_features((x.expand(-1, 3, -1, -1) - IMAGENET[0]) / IMAGENET[1])[:, 1:]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run_from_args(parser.parse_args(argv))


def test_inspect_says_which_head_count_it_assumed_and_how_to_change_it(tmp_path, capsys):
    path = save_tinyusfm(tinyusfm_like(), tmp_path / "TinyUSFM.pth")
    assert run_cli(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "family: vit" in out
    heads_line = next(line for line in out.splitlines() if line.strip().startswith("heads:"))
    assert "heads: 3" in heads_line and "[inferred: guessed from width 192" in heads_line
    warning = next(line for line in out.splitlines() if "WARNING" in line)
    assert "TinyUSFM" in warning and "num_heads=12" in warning and "--option num_heads=12" in warning
    for fact in ("width: 192  [inferred", "depth: 2  [inferred", "patch: 8  [inferred", "registers: 0  [inferred",
                 "cls_token: True  [inferred", "pos_grid: 4x4  [inferred"):
        assert fact in out, fact
    assert run_cli(["inspect", path, "--json", "--option", "num_heads=12"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"]["heads"] == {"value": 12, "origin": "declared", "evidence": "num_heads option"}
    assert info["warnings"] == [] and info["dropped"] == ["head.weight", "head.bias"]
    assert info["prefixes_stripped"] == ["model.", "module."]


def test_declared_heads_give_the_reference_tokens_and_a_guess_warns(tmp_path, caplog):
    m = tinyusfm_like(seed=1)
    path = save_tinyusfm(m, tmp_path / "TinyUSFM.pth")
    x1, x2 = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 48, 64)
    t = teachers.load("vit", path, num_heads=12, precision="fp32")
    torch.testing.assert_close(t(x1), reference(m, x1), atol=1e-5, rtol=1e-4)
    dyn = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=12, num_classes=4,
                            dynamic_img_size=True)  # timm's own rule at another grid
    dyn.load_state_dict(m.state_dict())
    torch.testing.assert_close(t(x2), reference(dyn.eval(), x2), atol=1e-5, rtol=1e-4)
    with caplog.at_level("INFO", logger="teachers"):
        guessed = teachers.load("vit", path, precision="fp32")
    assert guessed.arch_facts.get("heads") == 3 and (guessed(x1) - reference(m, x1)).abs().max() > 0.05
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "num_heads=12" in warnings[0] and "TinyUSFM" in warnings[0]
    assert "teacher architecture: width 192 (inferred)" in caplog.text and "heads 3 (inferred)" in caplog.text


def test_tinyusfm_preset_declares_twelve_heads(tmp_path):
    m = tinyusfm_like(depth=12, img=224, patch=16, seed=2)
    cfg = load_config(PRESET)
    cfg.teacher.checkpoint = save_tinyusfm(m, tmp_path / "TinyUSFM.pth")
    cfg.teacher.precision = "fp32"
    t = teachers.load_spec(cfg.teacher)
    assert t.arch_facts.facts["heads"].origin == "declared" and t.arch_facts.get("heads") == 12
    assert t.arch_facts.warnings == []
    x = torch.rand(1, 1, 224, 224)
    torch.testing.assert_close(t(x), reference(m, x), atol=1e-4, rtol=1e-4)


def test_head_counts_by_width():
    assert heads_from_width(768, "f", has_cls=True)[::2] == (12, "")  # ViT-B with a CLS token: unambiguous
    heads, _, warning = heads_from_width(768, "f", has_cls=False)  # timm's gap ViT-B has 16
    assert heads == 12 and "16" in warning
    assert heads_from_width(192, "f", has_cls=False)[2] == ""  # TinyUSFM has a CLS token
    assert heads_from_width(384, "f", has_cls=True)[2].count("MoCo v3") == 1
    assert heads_from_width(1536, "f", family_heads={1536: (24, "DINOv2 ViT-g/14")})[::2] == (24, "")
    with pytest.raises(CheckpointError, match="num_heads=N"):
        heads_from_width(200, "f")
    assert all(w % h == 0 for w, entries in KNOWN_HEADS.items() for h, _, _ in entries)


def test_usfm_heads_come_from_its_bias_table_and_usjepa_declares_everything(tmp_path):
    from timm.models.beit import Beit

    beit = Beit(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=6, num_classes=0, global_pool="",
                use_abs_pos_emb=False, use_shared_rel_pos_bias=True, init_values=0.1)
    torch.save(beit.state_dict(), tmp_path / "USFM_latest.pth")
    t = teachers.load("usfm", str(tmp_path / "USFM_latest.pth"))
    heads = t.arch_facts.facts["heads"]
    assert (heads.value, heads.origin) == (6, "inferred") and "relative_position_bias_table" in heads.evidence
    r = teachers.load("random", arch="vit_tiny", depth=1, patch_size=16)
    assert {f.origin for f in r.arch_facts.facts.values()} == {"declared"}


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="has no option 'num_head'.*did you mean 'num_heads'"):
        teachers.load("vit", "x.pth", num_head=12)
    with pytest.raises(ConfigError, match="layer=7"):
        teachers.load("random", arch="vit_tiny", depth=2, layer=7)
