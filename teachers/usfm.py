"""Family `usfm`: USFM's BEiT ViT-B/16 (`USFM_latest.pth`, a flat state dict) and BEiT-style files like it.

Layout: no absolute `pos_embed`; one shared relative-position table `rel_pos_bias.relative_position_bias_table`
[(2*14-1)^2 + 3, 12] that every block uses (USFM's own loader copies it into each block; timm's shared
mode is the same computation, so nothing is left at its initial value), `attn.q_bias` / `attn.v_bias`
(no k bias), LayerScale `gamma_1` / `gamma_2`, and the pretrained final `norm`, which the teacher applies
(USFM's classifier replaces it with a fresh `fc_norm`; we do not). `mask_token`, `*relative_position_index`
and a MIM `lm_head` are dropped. Other grids resize the table with BEiT's geometric interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.arch import ArchFacts, grid_fact, patch_geometry, resolve_dims, square_grid
from teachers.backbones import BeitBackbone
from teachers.loading import PREFIXES, WRAPPER_KEYS, build_and_load, rel_table_grid
from teachers.registry import Built, register
from teachers.vit_state import bicubic_resample, read_state
from usjepa.models.checkpoint_io import CheckpointError

USFM_DROP = ("mask_token", "*relative_position_index", "lm_head.*")
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


@register("usfm", default_norm="imagenet", drop=USFM_DROP,
          summary="USFM BEiT ViT-B/16: shared relative-position bias, q/v bias, gamma_1/2, no pos_embed")
def build_usfm(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
               num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
               prefixes: Sequence[str] = (), native_grid: Sequence[int] = ()) -> Built:
    from timm.models.beit import Beit

    state, report = read_state(checkpoint, unwrap_keys=WRAPPER_KEYS, which=which, prefixes=tuple(prefixes) or PREFIXES)
    source = report.source
    per_block = sorted(k for k in state if k.startswith("blocks.") and k.endswith("attn.relative_position_bias_table"))
    if per_block:
        raise CheckpointError(f"{source} has per-block relative-position tables ({per_block[0]}, ...); the usfm family "
                              "expects USFM's single shared table 'rel_pos_bias.relative_position_bias_table'. Re-save "
                              "the shared table under that name if all blocks share it")
    table = state.get(SHARED_TABLE)
    facts = ArchFacts()
    p, in_chans = patch_geometry(state, source, facts, patch_size)
    table_heads = int(table.shape[1]) if table is not None and table.ndim == 2 else 0
    from_table = f"{SHARED_TABLE} {list(table.shape)} (one bias per head)" if table_heads and not num_heads else ""
    d, n_blocks, heads = resolve_dims(state, source, facts, arch, embed_dim, depth, num_heads or table_heads,
                                      heads_evidence=from_table)
    pos = state.get("pos_embed")
    facts.infer("cls_token", True, "BEiT always has one")
    facts.infer("registers", 0, "BEiT has none")
    if native_grid:
        grid = (int(native_grid[0]), int(native_grid[1]))
        grid_fact(facts, grid, p, "native_grid option", declared=True)
    elif table is not None:
        grid = rel_table_grid(table, source)
        grid_fact(facts, grid, p, f"{SHARED_TABLE} {list(table.shape)}")
    elif pos is not None:
        grid = square_grid(int(pos.shape[1]) - 1, source)
        grid_fact(facts, grid, p, f"pos_embed {list(pos.shape)} with 1 CLS slot")
    else:
        raise CheckpointError(f"{source} has neither '{SHARED_TABLE}' nor 'pos_embed': no position information. "
                              "Is this a BEiT/USFM file? (`usjepa teacher inspect FILE`)")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    hidden = int(fc1.shape[0]) if fc1 is not None and fc1.ndim == 2 else 4 * d
    facts.infer("mlp_hidden", hidden, f"blocks.0.mlp.fc1.weight {list(fc1.shape)}" if fc1 is not None
                else "no blocks.0.mlp.fc1.weight; 4 x width assumed")

    def make() -> Beit:
        return Beit(img_size=(grid[0] * p, grid[1] * p), patch_size=p, in_chans=in_chans, num_classes=0,
                    global_pool="", use_fc_norm=False, embed_dim=d, depth=n_blocks, num_heads=heads,
                    mlp_ratio=(hidden + 0.5) / d, qkv_bias="blocks.0.attn.q_bias" in state,
                    init_values=0.1 if "blocks.0.gamma_1" in state else None, use_abs_pos_emb=pos is not None,
                    use_rel_pos_bias=False, use_shared_rel_pos_bias=table is not None)

    model, report = build_and_load(make, state, drop=USFM_DROP + tuple(drop), source=source, family="usfm",
                                   strict=strict, report=report)
    desc = f"beit d{d} x{n_blocks} h{heads} p{p}" + (" shared-rel-pos" if table is not None else "")
    return Built(BeitBackbone(model, grid, bicubic_resample), report=report, arch=desc, facts=facts)
