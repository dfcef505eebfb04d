"""Untrusted teacher files: pickles are refused by class name with a way out, damaged or crafted safetensors are
refused by name before anything is allocated, and every loading failure is a one-line user-facing error."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import teachers
from usjepa.config import ConfigError
from usjepa.models import build_vit, export_encoder
from usjepa.models.checkpoint_io import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def vit_state() -> dict:
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3, num_classes=0,
                          global_pool="", fc_norm=False)
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def test_pickle_refusal_names_the_class_and_the_way_out(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "ckpt.pth"
    torch.save({"model": vit_state(), "cfg": OmegaConf.create({"lr": 0.1})}, path)
    with pytest.raises(CheckpointError) as e:
        teachers.load("mae", str(path))
    msg = str(e.value)
    assert "\x1b" not in msg and str(path) in msg
    head, *recipe = msg.splitlines()
    assert "omegaconf.dictconfig.DictConfig" in head and "refusing to load" in head
    assert len(recipe) == 2 and "weights_only=False" in recipe[0] and "torch.save(ckpt['model']" in recipe[1]
    assert "safetensors" in recipe[1]


def write_header(path: Path, header: dict, data: bytes) -> str:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def broken_files(tmp_path: Path) -> dict[str, str]:
    good = tmp_path / "good.safetensors"
    save_file(vit_state(), str(good))
    blob = good.read_bytes()
    f32 = {"dtype": "F32", "shape": [4]}
    out = {
        "not_json": tmp_path / "a.safetensors",
        "header_longer_than_file": tmp_path / "b.safetensors",
        "truncated": tmp_path / "e.safetensors",
    }
    out["not_json"].write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 32)
    out["header_longer_than_file"].write_bytes(struct.pack("<Q", 2**40) + blob[8:])
    out["truncated"].write_bytes(blob[: len(blob) - 1000])
    files = {k: str(v) for k, v in out.items()}
    files["overlap"] = write_header(tmp_path / "c.safetensors", {"a": dict(f32, data_offsets=[0, 16]),
                                                                 "b": dict(f32, data_offsets=[8, 24])}, b"\0" * 24)
    files["size_lie"] = write_header(tmp_path / "d.safetensors", {
        "patch_embed.proj.weight": {"dtype": "F32", "shape": [16384, 3, 16, 16], "data_offsets": [0, 16]}}, b"\0" * 16)
    return files


def test_broken_safetensors_are_one_clear_line(tmp_path):
    for what, path in broken_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            teachers.load("mae", path)
        msg = str(e.value)
        assert path in msg and "\n" not in msg and "safetensors" in msg, (what, msg)


def test_every_loading_failure_is_a_user_facing_error(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"PK\x03\x04 this is no checkpoint" * 10)
    good = tmp_path / "good.pth"
    torch.save({"model": vit_state()}, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
    cases = [(CheckpointError, ("mae", str(tmp_path / "garbage.pth")), {}),
             (CheckpointError, ("mae", str(tmp_path / "cut.pth")), {}),
             (CheckpointError, ("mae", str(tmp_path / "missing.pth")), {}),
             (CheckpointError, ("mae", str(good)), {"num_heads": 5}),  # 192 is not divisible by 5
             (ConfigError, ("timm", str(good)), {"arch": "no_such_model"}),
             (ConfigError, ("mae", str(good)), {"layer": 3}),
             (ConfigError, ("dinov3", str(good)), {})]
    for kind, args, options in cases:
        with pytest.raises(kind) as e:
            teachers.load(*args, **options)
        assert "\n" not in str(e.value), str(e.value)


CRAFTED_RUN = """
import sys
from usjepa.cli import main
for verb, path, extra in (("inspect", sys.argv[1], []), ("verify", sys.argv[1], []),
                          ("inspect", sys.argv[2], ["--option", "num_heads=16"]),
                          ("verify", sys.argv[2], ["--option", "num_heads=16", "--family", "mae"])):
    print("RC", verb, main(["teacher", verb, path, *extra]), flush=True)
"""


def test_crafted_headers_fail_cleanly_under_a_memory_limit(tmp_path):
    """A small file claiming width 16384 and depth 64 (about 200G parameters) must not be built: one clear error."""
    vit = build_vit("vit_tiny", depth=1, img_size=(32, 32), patch_size=8)
    claim = dict(arch="vit_tiny", embed_dim=16384, depth=64, num_heads=16, img_size=[224, 224], patch_size=16,
                 in_chans=3, cls_token=True)
    export = export_encoder(vit, tmp_path / "encoder.safetensors", model_cfg=claim)
    empty = {"cls_token": torch.zeros(1, 1, 0), "pos_embed": torch.zeros(1, 197, 0),
             "patch_embed.proj.weight": torch.zeros(16384, 0, 16, 16), "norm.weight": torch.zeros(0)}
    empty.update({f"blocks.{i}.attn.qkv.weight": torch.zeros(0) for i in range(64)})
    zero_sized = tmp_path / "zero_sized.safetensors"
    save_file(empty, str(zero_sized))
    limit = 6 * 2**30  # importing torch takes about 3 GiB of address space; the claimed networks need ~800 GB

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CRAFTED_RUN, str(export), str(zero_sized)], capture_output=True,
                          text=True, timeout=300, env=env, preexec_fn=cap)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out and "MemoryError" not in out, out[-3000:]
    codes = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RC")]
    assert codes == [["inspect", "1"], ["verify", "2"], ["inspect", "1"], ["verify", "2"]], out[-3000:]
    assert out.count("does not match the tensors in the file") == 2 and "16384" in out
    assert out.count("shape mismatches") == 2 and "can't allocate" not in out
