"""Shared by the ViT families (mae, urfm, ijepa, dinov2, vit): read a checkpoint down to a timm-named state dict,
build the matching timm `VisionTransformer` from the weights' shapes, and load it strictly.

Every architecture fact is recorded with its origin (`teachers.arch`); the network is checked against the
file's tensors on the meta device before it is built (`teachers.loading.build_and_load`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn

from teachers.arch import ArchFacts, grid_fact, patch_geometry, resolve_dims, square_grid
from teachers.backbones import TimmViTBackbone
from teachers.files import describe, read_checkpoint
from teachers.loading import PREFIXES, KeyReport, build_and_load, resample_grid_embed, strip_prefixes, unwrap
from teachers.registry import Built

Resampler = Callable[[Tensor, tuple[int, int], tuple[int, int]], Tensor]

# MAE / I-JEPA fine-tuning convention: bicubic by output size, no antialiasing.
bicubic_resample: Resampler = partial(resample_grid_embed, mode="bicubic", antialias=False)
BICUBIC_RULE = "bicubic to the output size, antialias off (MAE / I-JEPA fine-tuning code)"
# timm's own rule for other input sizes (`dynamic_img_size`, resample_abs_pos_embed): antialiased bicubic.
timm_resample: Resampler = partial(resample_grid_embed, mode="bicubic", antialias=True)
TIMM_RULE = "bicubic to the output size, antialias on (timm's resample_abs_pos_embed)"


def read_state(checkpoint: str, *, unwrap_keys: Sequence[str], which: str = "",
               prefixes: Sequence[str] = PREFIXES) -> tuple[dict[str, Tensor], KeyReport]:
    """Safe-load a file and return its (unwrapped, prefix-stripped) state dict with a report of what was removed."""
    source = describe(checkpoint)
    state, trail = unwrap(read_checkpoint(checkpoint), unwrap_keys, source, which)
    state, stripped = strip_prefixes(state, prefixes, source)
    return state, KeyReport(source, prefixes=stripped, wrappers=trail)


def token_facts(state: dict[str, Tensor], facts: ArchFacts, no_embed_class: bool,
                native_grid: Sequence[int], p: int, source: str) -> tuple[bool, int, tuple[int, int]]:
    """(has CLS, register count, native position grid), each recorded as a fact."""
    cls_t = state.get("cls_token")
    cls = facts.infer("cls_token", cls_t is not None,
                      f"cls_token {list(cls_t.shape)}" if cls_t is not None else "no cls_token in the file")
    reg = state.get("reg_token")
    regs = int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0
    facts.infer("registers", regs, f"register tokens {list(reg.shape)}" if reg is not None else "none in the file")
    pos = state.get("pos_embed")
    if native_grid:
        grid = (int(native_grid[0]), int(native_grid[1]))
        grid_fact(facts, grid, p, "native_grid option", declared=True)
    elif pos is not None and pos.ndim == 3:
        slots = 0 if no_embed_class else int(cls) + regs
        grid = square_grid(int(pos.shape[1]) - slots, source)
        grid_fact(facts, grid, p, f"pos_embed {list(pos.shape)} with {slots} prefix slot(s)")
    else:
        grid = (224 // p, 224 // p)  # the strict check will report pos_embed missing
        grid_fact(facts, grid, p, "no pos_embed in the file; 224 px assumed")
    return cls, regs, grid


def build_timm_vit(state: dict[str, Tensor], report: KeyReport, *, family: str, drop: Sequence[str], strict: bool,
                   resample: Resampler, arch: str = "", embed_dim: int = 0, depth: int = 0, num_heads: int = 0,
                   patch_size: int = 0, no_embed_class: bool = False, swiglu: bool = False,
                   native_grid: Sequence[int] = (), family_heads: dict[int, tuple[int, str]] | None = None,
                   facts: ArchFacts | None = None, resample_rule: str = BICUBIC_RULE) -> Built:
    """A timm ViT shaped like `state` (width, depth, MLP, LayerScale, CLS/register tokens read from the weights).

    `arch` / `embed_dim` / `depth` / `num_heads` pin the architecture instead; then a file of another shape
    fails the strict check with the offending keys named. `family_heads` maps widths to the head counts
    this family's published models use (no guess needed there).
    """
    from timm.models.vision_transformer import VisionTransformer

    source = report.source
    facts = facts or ArchFacts()
    p, in_chans = patch_geometry(state, source, facts, patch_size)
    d, n_blocks, heads = resolve_dims(state, source, facts, arch, embed_dim, depth, num_heads,
                                      family_heads=family_heads)
    cls, regs, grid = token_facts(state, facts, no_embed_class, native_grid, p, source)
    if "pos_interpolation" not in facts.facts:
        facts.infer("pos_interpolation", resample_rule, f"the '{family}' family's rule for other input sizes")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    hidden = int(fc1.shape[0]) if fc1 is not None and fc1.ndim == 2 else 4 * d
    facts.infer("mlp_hidden", hidden, f"blocks.0.mlp.fc1.weight {list(fc1.shape)}" if fc1 is not None
                else "no blocks.0.mlp.fc1.weight; 4 x width assumed")
    # a classifier fine-tuned with global pooling keeps `fc_norm` for the pooled feature and no token norm
    pooled_norm = "fc_norm.weight" in state and "norm.weight" not in state
    facts.infer("final_norm", "none (fc_norm.* normalises pooled features only)" if pooled_norm else "norm",
                "fc_norm.* without norm.* in the file" if pooled_norm else "norm.* (applied to every token)")
    kwargs = {}
    if swiglu:
        from timm.layers import SwiGLUPacked

        kwargs = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
        facts.infer("mlp", "SwiGLU (fused w12/w3)", "blocks.0.mlp.w12 in the file")

    def make() -> nn.Module:
        return VisionTransformer(
            img_size=(grid[0] * p, grid[1] * p), patch_size=p, in_chans=in_chans, num_classes=0,
            global_pool="avg" if pooled_norm else "", fc_norm=pooled_norm, embed_dim=d, depth=n_blocks,
            num_heads=heads, mlp_ratio=(hidden + 0.5) / d, qkv_bias="blocks.0.attn.qkv.bias" in state,
            init_values=1e-5 if "blocks.0.ls1.gamma" in state else None, class_token=cls,
            no_embed_class=no_embed_class, reg_tokens=regs, weight_init="skip", **kwargs)

    model, report = build_and_load(make, state, drop=drop, source=source, family=family, strict=strict,
                                   report=report)
    desc = f"vit d{d} x{n_blocks} h{heads} p{p}" + ("" if cls else " no-cls") + (f" reg{regs}" if regs else "")
    return Built(TimmViTBackbone(model, grid, resample), report=report, arch=desc, facts=facts)
