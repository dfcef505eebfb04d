"""Family `random`: a randomly initialised usjepa ViT, seeded. The floor every real teacher must beat, and a
teacher for smoke tests that needs no file."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from teachers.arch import ArchFacts
from teachers.backbones import UsjepaBackbone
from teachers.native import encoder_stats
from teachers.registry import Built, register
from usjepa.models.encoder_spec import EncoderSpec, preset_sizes


@register("random", default_norm="model", needs_checkpoint=False,
          summary="randomly initialised usjepa ViT (arch, patch_size, seed): smoke tests and the reference floor")
def build_random(checkpoint: str | None, *, strict: bool = True, arch: str = "vit_tiny", patch_size: int = 16,
                 seed: int = 0, in_chans: int = 3, embed_dim: int = 0, depth: int = 0, num_heads: int = 0,
                 cls_token: bool = True, img_size: Sequence[int] = (224, 224),
                 norm_mean: Sequence[float] = (0.5,), norm_std: Sequence[float] = (0.25,)) -> Built:
    if checkpoint:
        raise ValueError(f"the random family takes no checkpoint (got '{checkpoint}'); use family native to load one")
    preset = arch or "vit_tiny"
    spec = EncoderSpec(arch=preset, **preset_sizes(preset, embed_dim, depth, num_heads), img_size=tuple(img_size),
                       patch_size=patch_size or 16, in_chans=in_chans, cls_token=cls_token, norm_mean=tuple(norm_mean),
                       norm_std=tuple(norm_std))
    with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG stream untouched
        torch.manual_seed(int(seed))
        vit = spec.build()
    desc = f"random vit d{vit.embed_dim} x{vit.depth} h{vit.num_heads} p{vit.patch_size} seed{seed}"
    facts = ArchFacts()
    for name, value, option in (("width", vit.embed_dim, embed_dim), ("depth", vit.depth, depth),
                                ("heads", vit.num_heads, num_heads)):
        facts.declare(name, value, f"{name if name != 'width' else 'embed_dim'} option" if option else f"arch={arch}")
    facts.declare("patch", vit.patch_size, "patch_size option")
    facts.declare("in_chans", vit.in_chans, "in_chans option")
    facts.declare("cls_token", bool(cls_token), "cls_token option")
    facts.declare("pos_grid", list(vit.grid(vit.img_size)), f"img_size option {list(img_size)}; sin-cos at any grid")
    return Built(UsjepaBackbone(vit.eval()), arch=desc, norm_stats=encoder_stats(vit), identity={"seed": int(seed)},
                 norm_source="the random encoder's norm_mean / norm_std options", facts=facts)
