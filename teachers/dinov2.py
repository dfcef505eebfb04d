"""Family `dinov2`: DINOv2 release files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) and training checkpoints.

Release files are flat state dicts with `pos_embed` for 518 px (a 37x37 grid plus a CLS slot), `mask_token`,
LayerScale `ls1.gamma` / `ls2.gamma`, optional `register_tokens` and, for ViT-g, a fused SwiGLU MLP
(`mlp.w12`, `mlp.w3`). Training checkpoints hold whole networks: `teacher_checkpoint.pth` is
`{"teacher": {backbone.*, dino_head.*, ibot_head.*}}`, a `model_*.pth` holds `student.*` and `teacher.*`
under `model`. The backbone of the EMA teacher is taken (`which=student` for the student); heads are dropped,
and blocks saved in chunks (`block_chunks: 4` in DINOv2's training configs: `blocks.<chunk>.<i>.*`) are un-chunked.

Keys are mapped onto timm's ViT: registers become `reg_token`, the CLS position is folded into `cls_token`
(registers carry no position in DINOv2), `w12`/`w3` become `fc1`/`fc2`. Other grids follow the original's
`interpolate_pos_encoding` with the settings its hub builds each release model with: without registers
bicubic by scale factor (n + 0.1) / 37 without antialiasing; with registers (`*_reg4`) bicubic to the
output size with antialiasing. A training checkpoint gets DINOv2's training defaults (offset 0.1, no
antialiasing); set `interpolate_offset` / `interpolate_antialias` where a training config changed them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from torch import Tensor

from teachers.arch import ArchFacts
from teachers.files import describe, read_checkpoint
from teachers.loading import KeyReport, drop_keys, resample_grid_embed, strip_prefixes, unwrap
from teachers.registry import Built, register
from teachers.vit_state import build_timm_vit
from usjepa.models.checkpoint_io import CheckpointError

DINOV2_DROP = ("mask_token",)
DINOV2_UNWRAP = ("teacher", "model", "state_dict")
DINOV2_PREFIXES = ("module.", "_orig_mod.")
NETWORKS = ("teacher", "student")  # the two networks of a DINOv2 training run
HEADS = ("dino_head.", "ibot_head.")  # projection heads of the training objective, not part of the encoder
CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")  # blocks.<chunk>.<block>.<rest>
DINOV2_HEADS = {384: (6, "DINOv2 ViT-S/14"), 768: (12, "DINOv2 ViT-B/14"), 1024: (16, "DINOv2 ViT-L/14"),
                1536: (24, "DINOv2 ViT-g/14")}


def to_timm_layout(state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], bool]:
    """DINOv2 release keys -> timm ViT keys (no_embed_class layout). Returns (state, uses SwiGLU)."""
    out = dict(state)
    if "pos_embed" not in out or "cls_token" not in out:
        missing = [k for k in ("pos_embed", "cls_token") if k not in out]
        raise CheckpointError(f"{source} lacks {missing}; a DINOv2 release file has both. Is this the right family?")
    pos = out.pop("pos_embed")  # [1, 1 + N, D]
    if pos.ndim != 3 or pos.shape[1] < 2 or out["cls_token"].shape[-1] != pos.shape[-1]:
        raise CheckpointError(f"{source}: pos_embed {list(pos.shape)} and cls_token {list(out['cls_token'].shape)} "
                              "are not DINOv2's [1, 1 + N, D] and [1, 1, D]")
    out["cls_token"] = out["cls_token"] + pos[:, :1]  # the CLS position, folded in once
    out["pos_embed"] = pos[:, 1:].contiguous()  # [1, N, D], patches only
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
    swiglu = any(k.endswith(".mlp.w12.weight") for k in out)
    if swiglu:
        renamed = {}
        for k, v in out.items():
            head, sep, tail = k.rpartition(".mlp.")
            if sep and tail.split(".")[0] in ("w12", "w3"):
                k = f"{head}.mlp.{'fc1' if tail.startswith('w12') else 'fc2'}{tail[tail.index('.'):]}"
            renamed[k] = v
        out = renamed
    return out, swiglu


def unchunk_blocks(state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], int]:
    """`blocks.<chunk>.<i>.*` (DINOv2's BlockChunk, for FSDP) -> `blocks.<i>.*`. Returns (state, chunk count)."""
    blocks = [k for k in state if k.startswith("blocks.")]
    chunked = [k for k in blocks if CHUNKED.match(k)]
    if not chunked:
        return state, 0
    if len(chunked) != len(blocks):
        plain = sorted(set(blocks) - set(chunked))[:3]
        raise CheckpointError(f"{source} mixes chunked block keys (blocks.<chunk>.<i>.*) with plain ones ({plain})")
    out, chunks = {}, set()
    for k, v in state.items():
        m = CHUNKED.match(k)
        if m:
            chunks.add(int(m.group(1)))
            k = f"blocks.{m.group(2)}.{m.group(3)}"
            if k in out:
                raise CheckpointError(f"{source}: block key '{k}' appears in two chunks")
        out[k] = v
    return out, len(chunks)


def select_backbone(state: dict[str, Tensor], source: str, network: str) -> tuple[dict[str, Tensor], list[str]]:
    """The encoder of a training checkpoint: one network's `backbone.*` keys; heads and the other network dropped.

    A release file (no `backbone.` keys) passes through unchanged. Returns (state, dropped keys).
    """
    nets = {k.split(".", 1)[0] for k in state if k.split(".", 1)[0] in NETWORKS}
    dropped: list[str] = []
    if nets:
        if network not in nets:
            raise CheckpointError(f"{source} holds the DINOv2 network(s) {sorted(nets)}, not '{network}'; set "
                                  f"`which` to one of them")
        dropped = [k for k in state if not k.startswith(network + ".")]
        state = {k[len(network) + 1:]: v for k, v in state.items() if k.startswith(network + ".")}
    if any(k.startswith("backbone.") for k in state):
        dropped += [k for k in state if not k.startswith("backbone.")]
        unknown = [k for k in state if not k.startswith(("backbone.",) + HEADS)]
        if unknown:
            raise CheckpointError(f"{source}: a DINOv2 training checkpoint holds backbone.*, dino_head.* and "
                                  f"ibot_head.*, but also {unknown[:6]}; add them to the `drop` option if unused")
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state, dropped


@register("dinov2", default_norm="imagenet", drop=DINOV2_DROP, revision=2,
          summary="DINOv2 release file or training checkpoint (patch 14, 518 px pos_embed, optional registers)")
def build_dinov2(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
                 num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
                 prefixes: Sequence[str] = (), interpolate_offset: float | None = None,
                 interpolate_antialias: bool | None = None) -> Built:
    source = describe(checkpoint)
    raw = read_checkpoint(checkpoint)
    top = which if which and isinstance(raw, dict) and which in raw else ""
    network = which if which in NETWORKS else "teacher"
    if which and not top and which not in NETWORKS:
        unwrap(raw, DINOV2_UNWRAP, source, which)  # raises, naming the entries the file has
    state, trail = unwrap(raw, DINOV2_UNWRAP, source, top)
    del raw
    state, stripped = strip_prefixes(state, tuple(prefixes) or DINOV2_PREFIXES, source)
    if which in NETWORKS and not top and not any(k.startswith(which + ".") for k in state):
        raise CheckpointError(f"{source} holds a single network ({'/'.join(trail) or 'a flat state dict'}), not the "
                              f"'{which}' of a DINOv2 training run; leave `which` empty")
    training = any(k.startswith(("backbone.", "teacher.", "student.")) for k in state)
    state, dropped_nets = select_backbone(state, source, network)
    state, stripped_more = strip_prefixes(state, tuple(prefixes) or DINOV2_PREFIXES, source)
    report = KeyReport(source, prefixes=sorted(set(stripped + stripped_more)), wrappers=trail)
    facts = ArchFacts()
    state, chunks = unchunk_blocks(state, source)
    if chunks:
        facts.infer("block_chunks", chunks, "keys blocks.<chunk>.<i>.* (DINOv2 training with block_chunks)")
        training = True
    # dropped before conversion so that the report names them in the file's own terms
    all_drop = DINOV2_DROP + tuple(drop)
    state, dropped = drop_keys(state, all_drop)
    state, swiglu = to_timm_layout(state, source)
    regs = "reg_token" in state
    # DINOv2's hub builds register models with antialiasing and offset 0, the others (and training runs, by
    # its default config) with offset 0.1 and no antialiasing
    hub_regs = regs and not training
    offset = float(interpolate_offset) if interpolate_offset is not None else (0.0 if hub_regs else 0.1)
    antialias = bool(interpolate_antialias) if interpolate_antialias is not None else hub_regs
    declared = interpolate_offset is not None or interpolate_antialias is not None
    rule = (f"bicubic, {'scale factor (n + ' + str(offset) + ') / N' if offset else 'output size'}, "
            f"antialias {'on' if antialias else 'off'}")
    evidence = ("interpolate_offset / interpolate_antialias options" if declared else
                "DINOv2 training defaults (ssl_default_config), for a training checkpoint" if training else
                "DINOv2 hub rule for release models " + ("with registers" if regs else "without registers"))
    (facts.declare if declared else facts.infer)("pos_interpolation", rule, evidence)
    resample = partial(resample_grid_embed, mode="bicubic", antialias=antialias, offset=offset)
    built = build_timm_vit(state, report, family="dinov2", drop=all_drop, strict=strict, resample=resample, arch=arch,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                           no_embed_class=True, swiglu=swiglu, family_heads=DINOV2_HEADS, facts=facts)
    built.report.dropped = dropped_nets + dropped
    return built
