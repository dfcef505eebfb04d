"""The SALT recipe's step at any scale, built from usjepa.models / objectives / masks / teachers directly (no
config, data or launch layers, so it runs where only torch and timm are installed), and its analytic FLOPs.

Recipe (configs/pretrain/salt_vitb16.yaml): 224 px, patch 16, one channel, RoPE and no CLS token in every model,
a 12 x 384 predictor with 16 heads on one sequence per image, V-JEPA's two mask pairs (8 x 0.15, 2 x 0.7) drawn
by the reference sampler (truncated to the batch minimum), L1 on layer-normalised teacher tokens, a frozen
teacher of the student's family size (ViT-B for ViT-B, ViT-L otherwise) running in bf16.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops as F  # noqa: E402


def build_teacher(arch: str, img: int, patch: int, depth: int = 0, precision: str = "bf16", seed: int = 1,
                  backend: str = "auto"):
    """A frozen native-family teacher (random weights: speed and memory do not depend on them)."""
    from teachers.frozen import FrozenTeacher
    from teachers.native import UsjepaEncoderBackbone, encoder_stats
    from usjepa.models import build_vit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = build_vit(arch, depth=depth, img_size=(img, img), patch_size=patch, in_chans=1, cls_token=False,
                        pos_embed="rope", attn_backend=backend).eval()
    return FrozenTeacher(UsjepaEncoderBackbone(vit), family="native", norm="model", norm_stats=encoder_stats(vit),
                         precision=precision)


def build_salt(student_arch: str = "vit_base", teacher_arch: str = "vit_base", img: int = 224, patch: int = 16,
               backend: str = "auto", depth: int = 0, teacher_depth: int = 0, pred_width: int = 384,
               pred_depth: int = 12, pred_heads: int = 16, teacher_precision: str = "bf16", drop_path: float = 0.0,
               seed: int = 0):
    """The SALT objective (student, predictor, frozen teacher) of the recipe at the given scale, on the CPU."""
    from usjepa.models import Predictor, build_vit
    from usjepa.objectives import SALT

    torch.manual_seed(seed)
    student = build_vit(student_arch, depth=depth, img_size=(img, img), patch_size=patch, in_chans=1,
                        cls_token=False, pos_embed="rope", attn_backend=backend, drop_path=drop_path)
    teacher = build_teacher(teacher_arch, img, patch, teacher_depth, teacher_precision, backend=backend)
    predictor = Predictor(student.embed_dim, teacher.embed_dim, embed_dim=pred_width, depth=pred_depth,
                          num_heads=pred_heads, num_mask_tokens=2, per_block=False, attn_backend=backend,
                          pos_embed="rope", zero_init_mask_tokens=True)
    return SALT(student, predictor, teacher, loss="l1", target_norm="layernorm")


def draw_batch(objective, batch: int, seed: int, device, sampler: str = "reference") -> dict:
    """Random images and the recipe's masks for `batch` images (per_sample: padded per-image masks instead)."""
    from usjepa.masks import ComplementMasker, PerSampleSampler, VJepaMultiBlock

    student = objective.student
    grid = student.grid(student.img_size)
    masker = VJepaMultiBlock(grid) if sampler == "reference" else PerSampleSampler(ComplementMasker(grid))
    seeds = list(range(seed * batch, (seed + 1) * batch))
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, *student.img_size, generator=g)
    return {"image": images.to(device), "index": torch.arange(batch, device=device),
            "masks": [m.to(device) for m in masker(seeds)]}


def _encoder_spec(vit, prefix: int) -> F.Encoder:
    return F.Encoder(vit.embed_dim, vit.depth, vit.patch_size, vit.in_chans, prefix,
                     vit.blocks[0].mlp.fc1.out_features / vit.embed_dim)


def batch_flops(objective, batch: dict) -> float:
    """Analytic FLOPs of one SALT step on `batch` (its real mask shapes; padded slots count as computed)."""
    student = objective.student
    teacher_vit = objective.teacher.backbone.net
    pred = objective.predictor
    spec = F.PredictorSpec(student.embed_dim, pred.out_dim, pred.embed_dim, len(pred.blocks), pred.per_block,
                           pred.blocks[0].mlp.fc1.out_features / pred.embed_dim)
    grid = student.grid(batch["image"].shape[-2:])
    pairs = [(m.context.shape[1], [m.targets.shape[2]] * m.targets.shape[1]) for m in batch["masks"]]
    per_image = F.salt_step_flops(_encoder_spec(student, student.num_prefix_tokens),
                                  _encoder_spec(teacher_vit, teacher_vit.num_prefix_tokens), spec,
                                  grid[0] * grid[1], pairs)
    return per_image["total"] * batch["image"].shape[0]
