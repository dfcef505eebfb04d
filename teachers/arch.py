"""Architecture facts of a teacher checkpoint: what each one is, and whether the user declared it or we inferred it.

Weights fix most of a ViT's shape (width, depth, patch, MLP width, CLS and register tokens, position grid)
but not its number of attention heads: a [3D, D] qkv matrix reshapes into any head count that divides D.
So a head count that is not declared is looked up by width among known public models, and where those
disagree (192 wide: 3 heads in DeiT-Ti, 12 in TinyUSFM) the load goes on with the common value and a
warning that says how to set `num_heads`. Every fact carries its origin, for `teacher inspect` and the log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from usjepa.models.checkpoint_io import CheckpointError

DECLARED, INFERRED = "declared", "inferred"
# the order facts are shown in (others follow in the order they were found)
ORDER = ("width", "depth", "heads", "patch", "in_chans", "cls_token", "registers", "pos_grid", "pos_interpolation",
         "mlp_hidden", "mlp", "final_norm", "block_chunks")


@dataclass(frozen=True)
class Fact:
    value: Any
    origin: str  # DECLARED | INFERRED
    evidence: str  # where it came from: an option, a preset, a tensor shape, a lookup table


class ArchFacts:
    """Ordered architecture facts plus the warnings raised while resolving them."""

    def __init__(self) -> None:
        self.facts: dict[str, Fact] = {}
        self.warnings: list[str] = []

    def declare(self, name: str, value: Any, evidence: str) -> Any:
        self.facts[name] = Fact(value, DECLARED, evidence)
        return value

    def infer(self, name: str, value: Any, evidence: str) -> Any:
        self.facts[name] = Fact(value, INFERRED, evidence)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        fact = self.facts.get(name)
        return fact.value if fact is not None else default

    def ordered(self) -> list[tuple[str, Fact]]:
        rank = {k: i for i, k in enumerate(ORDER)}
        return sorted(self.facts.items(), key=lambda kv: rank.get(kv[0], len(ORDER)))

    def as_dict(self) -> dict[str, dict]:
        return {k: {"value": f.value, "origin": f.origin, "evidence": f.evidence} for k, f in self.ordered()}

    def summary(self) -> str:
        """One line for the log: `width 192 (inferred), depth 12 (inferred), heads 3 (inferred), ...`."""
        return ", ".join(f"{k} {_show(f.value)} ({f.origin})" for k, f in self.ordered())


def _show(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(str(x) for x in v)
    return str(v)


# ----------------------------------------------------------------------------- head counts

# Head counts of public ViTs by width: (heads, the models, whether they have a CLS token; None: either). The
# first entry of a width is the default; a further entry makes the width ambiguous for files whose CLS token
# agrees with it (TinyUSFM has one, so a CLS-less 192-wide file is not taken for it).
KNOWN_HEADS: dict[int, list[tuple[int, str, bool | None]]] = {
    192: [(3, "ViT-Ti / DeiT-Ti (timm)", None), (12, "TinyUSFM (distilled from USFM)", True)],
    384: [(6, "ViT-S / DeiT-S / DINO and DINOv2 ViT-S", None), (12, "MoCo v3 ViT-S", True)],
    512: [(8, "ViT-M / DeiT III-M (timm)", None)],
    768: [(12, "ViT-B (MAE, USF-MAE, UltraFedFM, URFM, DINOv2, DeiT, ...)", None),
          (16, "timm vit_base_patch16_gap_224", False)],
    1024: [(16, "ViT-L (MAE, URFM, DINOv2, ...)", None), (8, "AIMv2-L", False)],
    1152: [(16, "SigLIP So400m", None)],
    1280: [(16, "ViT-H (MAE, I-JEPA)", None)],
    1408: [(16, "ViT-g (I-JEPA, EVA, timm vit_giant)", None), (22, "V-JEPA 2 ViT-g", False)],
    1536: [(24, "DINOv2 ViT-g", None), (16, "SigLIP 2 giant-opt", False), (12, "AIMv2-H", False)],
    1664: [(16, "ViT-bigG (OpenCLIP)", None)],
}

# Architecture presets a user may name (`arch`): width, depth, heads.
ARCH_PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12),
                "vit_large": (1024, 24, 16), "vit_huge": (1280, 32, 16), "vit_giant": (1408, 40, 16),
                "vit_giant2": (1536, 40, 24)}

HOW_TO_SET_HEADS = ("teacher.options.num_heads={n} in a config, or --option num_heads={n} for "
                    "`usjepa teacher inspect/verify`")


def heads_from_width(width: int, source: str, has_cls: bool | None = None,
                     family_heads: dict[int, tuple[int, str]] | None = None) -> tuple[int, str, str]:
    """(heads, evidence, warning or "") for a width whose head count nobody declared."""
    if family_heads and width in family_heads:
        heads, models = family_heads[width]
        return heads, f"{models} has {heads} heads at width {width}", ""
    known_here = KNOWN_HEADS.get(width, [])
    entries = known_here[:1] + [e for e in known_here[1:] if has_cls is None or e[2] is None or e[2] == has_cls]
    if not entries:
        known = ", ".join(f"{w}: {KNOWN_HEADS[w][0][0]}" for w in sorted(KNOWN_HEADS))
        raise CheckpointError(f"{source}: width {width} is not the width of a known public ViT ({known}), so its "
                              f"number of attention heads cannot be inferred (the weights do not show it); set it: "
                              + HOW_TO_SET_HEADS.format(n="N"))
    heads, models, _ = entries[0]
    evidence = f"guessed from width {width}: {models} has {heads} heads (weights cannot show the head count)"
    if len(entries) == 1:
        return heads, evidence, ""
    others = "; ".join(f"{m} uses {h}" for h, m, _ in entries[1:])
    alt = entries[1][0]
    warning = (f"{source}: width {width} is ambiguous ({models} has {heads} heads; {others}). Loaded with {heads} "
               f"heads, a guess the weights cannot confirm: a wrong head count gives wrong tokens without any error. "
               f"If this is another model, set its head count, e.g. " + HOW_TO_SET_HEADS.format(n=alt))
    return heads, evidence, warning


# ----------------------------------------------------------------------------- shape reading


def block_count(state: dict[str, Tensor], prefix: str = "blocks.") -> int:
    """1 + the highest block index among keys `blocks.<i>.*` (a gap shows up later as missing keys)."""
    idx = [int(k[len(prefix):].split(".", 1)[0]) for k in state
           if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()]
    return max(idx) + 1 if idx else 0


def resolve_dims(state: dict[str, Tensor], source: str, facts: ArchFacts, arch: str = "", embed_dim: int = 0,
                 depth: int = 0, num_heads: int = 0, heads_evidence: str = "",
                 family_heads: dict[int, tuple[int, str]] | None = None) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads): explicit options, then a named arch preset, then the weights.

    `num_heads` with a non-empty `heads_evidence` is a head count read from the weights (a bias table).
    """
    preset = None
    if arch:
        if arch not in ARCH_PRESETS:
            raise CheckpointError(f"unknown arch '{arch}' for {source}; use one of {', '.join(ARCH_PRESETS)} "
                                  "or leave it empty to read the architecture from the weights")
        preset = ARCH_PRESETS[arch]
    w = state.get("patch_embed.proj.weight")
    if embed_dim:
        facts.declare("width", int(embed_dim), "embed_dim option")
    elif preset:
        facts.declare("width", preset[0], f"arch={arch}")
    elif w is None or w.ndim < 1:
        raise CheckpointError(f"{source} has no 'patch_embed.proj.weight'; cannot read the width. Is this the "
                              "right family? (`usjepa teacher inspect FILE`)")
    else:
        facts.infer("width", int(w.shape[0]), f"patch_embed.proj.weight {list(w.shape)}")
    n = block_count(state)
    if depth:
        facts.declare("depth", int(depth), "depth option")
    elif preset:
        facts.declare("depth", preset[1], f"arch={arch}")
    elif n:
        facts.infer("depth", n, f"blocks.0 .. blocks.{n - 1} in the file")
    else:
        raise CheckpointError(f"{source} has no 'blocks.<i>.*' keys; is this the right family?")
    d = facts.get("width")
    if num_heads and heads_evidence:
        facts.infer("heads", int(num_heads), heads_evidence)
    elif num_heads:
        facts.declare("heads", int(num_heads), "num_heads option")
    elif preset:
        facts.declare("heads", preset[2], f"arch={arch}")
    else:
        has_cls = "cls_token" in state
        heads, evidence, warning = heads_from_width(d, source, has_cls, family_heads)
        facts.infer("heads", heads, evidence)
        if warning:
            facts.warnings.append(warning)
    heads = facts.get("heads")
    if heads <= 0 or d % heads:
        raise CheckpointError(f"{source}: width {d} is not divisible by num_heads={heads}; set `num_heads` to a "
                              "divisor of the width")
    return d, facts.get("depth"), heads


def patch_geometry(state: dict[str, Tensor], source: str, facts: ArchFacts | None = None,
                   patch_size: int = 0) -> tuple[int, int]:
    """(patch size, input channels) from the patch-embedding kernel; a requested patch size must agree."""
    w = state.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        raise CheckpointError(f"{source} has no 4-D 'patch_embed.proj.weight'; is this the right family?")
    if w.shape[-1] != w.shape[-2]:
        raise CheckpointError(f"{source}: non-square patches {tuple(w.shape[-2:])} are not supported")
    p = int(w.shape[-1])
    if patch_size and patch_size != p:
        raise CheckpointError(f"{source} has patch size {p} (patch_embed.proj.weight {tuple(w.shape)}) but "
                              f"patch_size={patch_size} was asked for; drop the setting or fix it")
    if facts is not None:
        facts.infer("patch", p, f"patch_embed.proj.weight {list(w.shape)}")
        facts.infer("in_chans", int(w.shape[1]), f"patch_embed.proj.weight {list(w.shape)}")
    return p, int(w.shape[1])


def square_grid(n_tokens: int, source: str, what: str = "pos_embed") -> tuple[int, int]:
    s = math.isqrt(max(n_tokens, 0))
    if n_tokens <= 0 or s * s != n_tokens:
        raise CheckpointError(f"{source}: {what} holds {n_tokens} patch positions, not a square grid; set the "
                              "`native_grid` option to its [H, W]")
    return s, s


def grid_fact(facts: ArchFacts, grid: tuple[int, int], patch: int, evidence: str, declared: bool = False) -> None:
    """Record the position grid and the input size it stands for."""
    text = f"{evidence} -> {grid[0] * patch}x{grid[1] * patch} px at patch {patch}"
    (facts.declare if declared else facts.infer)("pos_grid", list(grid), text)
