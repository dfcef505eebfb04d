"""Family `native` (the old name `usjepa` is still accepted): checkpoints this framework wrote, as teachers: the
stage-1 MAE teacher, a SALT student, an EMA target.

Reads a usjepa training checkpoint (`latest.pt`, `best.pt`, `step_N.pt`; `which` picks `model` or
`target_encoder`) or an exported `encoder.safetensors`, strictly, through
`usjepa.io.checkpoints.load_encoder_checkpoint`. The encoder is built from the `EncoderSpec` the file declares
(its `model_config` metadata or `config.model`), so that declaration is checked against the tensors the
file really holds (width, depth, patch, channels, CLS token, position grid) and the size of what it would
build is bounded by them, all before anything is built: a crafted header cannot make us allocate a network
its file does not contain. The default preset `model` uses the encoder's own `norm_mean` / `norm_std` and
channel count, exactly as it saw images in training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from teachers.arch import ArchFacts, block_count
from teachers.backbones import UsjepaBackbone
from teachers.files import describe, is_safetensors, read_checkpoint, safetensors_header
from teachers.loading import KeyReport
from teachers.registry import Built, register
from usjepa.io.checkpoints import load_encoder_checkpoint
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.models.encoder_spec import EncoderSpec

SLACK = 1.5  # a declared network may hold at most this many times the values in the file (plus MIN_SLACK)
MIN_SLACK = 1_000_000


class UsjepaEncoderBackbone(UsjepaBackbone):
    """The encoder embeds its own tokens (sin-cos added, or RoPE handed to every block)."""

    def embed(self, x):
        return self.net.block_inputs(x)


def encoder_stats(vit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(vit.input_mean.flatten().tolist()), tuple(vit.input_std.flatten().tolist())


def declared_config(path: Path, which: str, source: str) -> tuple[dict, dict[str, tuple[int, ...]], str]:
    """(declared model config, {key: shape} of the encoder's tensors, where the declaration lives), read lazily."""
    if is_safetensors(path):
        meta, shapes = safetensors_header(path)
        if meta.get("format") != "usjepa-encoder" or "model_config" not in meta:
            raise CheckpointError(f"{source} is a safetensors file without usjepa-encoder metadata; load it with its "
                                  "own family (`usjepa teacher inspect FILE` detects it)")
        try:
            mc = json.loads(meta["model_config"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: its model_config metadata is not JSON ({e}); export it again") from None
        return mc, shapes, "the file's model_config metadata"
    ckpt = read_checkpoint(path, mmap=True)  # shapes only; the loader reads the tensors afterwards
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("config"), Mapping) or which not in ckpt:
        keys = list(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{source} is not a usjepa checkpoint with a '{which}' entry and a config (top-level "
                              f"keys: {keys}); for other formats use its own family (`usjepa teacher inspect FILE`)")
    state = ckpt[which]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: entry '{which}' is not a state dict of tensors")
    return ckpt["config"].get("model"), {k: tuple(v.shape) for k, v in state.items()}, "the checkpoint's config.model"


def check_declared(mc: Any, shapes: dict[str, tuple[int, ...]], source: str, where: str) -> ArchFacts:
    """Every declared size must agree with the tensors, and the network must not outgrow them; returns the facts."""
    if not isinstance(mc, Mapping):
        raise CheckpointError(f"{source}: {where} is missing or not a mapping; it cannot be rebuilt")
    try:
        spec = EncoderSpec.from_dict(mc)  # types, ranges and presets checked; nothing is allocated
    except ValueError as e:
        raise CheckpointError(f"{source}: {where} declares an impossible encoder ({e}); export or save it "
                              "again") from None
    d, depth, heads, p, c = spec.embed_dim, spec.depth, spec.num_heads, spec.patch_size, spec.in_chans
    size, cls = list(spec.img_size), spec.cls_token
    grid = (size[0] // p, size[1] // p)
    problems = []
    w = shapes.get("patch_embed.proj.weight")
    if w != (d, c, p, p):
        problems.append(f"patch_embed.proj.weight is {list(w) if w else 'absent'}, declared [{d}, {c}, {p}, {p}]")
    if block_count(dict.fromkeys(shapes)) != depth:
        problems.append(f"{block_count(dict.fromkeys(shapes))} blocks in the file, declared depth {depth}")
    if ("cls_token" in shapes) != cls:
        problems.append(f"cls_token {'absent' if cls else 'present'} in the file, declared cls_token={cls}")
    pos = shapes.get("pos_embed")
    if pos is not None and pos != (1, grid[0] * grid[1] + int(cls), d):
        problems.append(f"pos_embed is {list(pos)}, declared img_size {list(size)} gives [1, "
                        f"{grid[0] * grid[1] + int(cls)}, {d}]")
    held = sum(math.prod(s) for s in shapes.values())
    needed = depth * 12 * d * d + (grid[0] * grid[1] + 1) * d  # attention 4 D^2 + MLP 8 D^2 per block, positions
    if needed > SLACK * held + MIN_SLACK:
        problems.append(f"the declared encoder needs about {needed:,} values, the file holds {held:,}")
    if problems:
        raise CheckpointError(f"{source}: {where} does not match the tensors in the file ({'; '.join(problems)}); it "
                              "is damaged or crafted, so nothing was built. Export or save it again")
    facts = ArchFacts()
    facts.declare("width", d, where)
    facts.declare("depth", depth, where)
    facts.declare("heads", heads, where + (" (arch preset)" if not mc.get("num_heads") else ""))
    facts.declare("patch", p, where)
    facts.declare("in_chans", c, where)
    facts.declare("cls_token", cls, where)
    facts.declare("registers", 0, "usjepa encoders have none")
    facts.declare("pos_grid", list(grid), f"{where}: img_size {list(size)}; {spec.pos_embed} positions exact at any "
                  "grid")
    return facts


@register("native", default_norm="model", summary="a usjepa encoder checkpoint (stage-1 MAE teacher, student, export)")
def build_usjepa(checkpoint: str, *, strict: bool = True, which: str = "model", patch_size: int = 0) -> Built:
    path, source = Path(checkpoint), describe(checkpoint)
    mc, shapes, where = declared_config(path, which, source)
    facts = check_declared(mc, shapes, source, where)
    if patch_size and patch_size != facts.get("patch"):
        raise CheckpointError(f"{source} holds a patch-{facts.get('patch')} encoder, not patch {patch_size}")
    vit = load_encoder_checkpoint(checkpoint, which=which)
    desc = f"usjepa vit d{vit.embed_dim} x{vit.depth} h{vit.num_heads} p{vit.patch_size} c{vit.in_chans}"
    return Built(UsjepaEncoderBackbone(vit), report=KeyReport(source), arch=desc, norm_stats=encoder_stats(vit),
                 norm_source=f"the encoder's own norm_mean / norm_std ({where})", facts=facts)
