"""Analytic FLOPs of a SALT step (multiply-add = 2 FLOPs; matmuls and attention only, as MFU figures count them).

A transformer block on n tokens of width D (MLP ratio r) costs 2nD(3D) for qkv, 2n^2 D for the scores, 2n^2 D for
the weighted values, 2nD^2 for the projection and 2nD(rD) x 2 for the MLP: (8 + 4r) n D^2 + 4 n^2 D, i.e.
24 n D^2 + 4 n^2 D at r = 4. A SALT step runs, per image:
- the frozen teacher forward on every patch (no backward),
- per mask pair, the student forward on its context tokens (the patch embedding runs on every patch, then the
  context is gathered) and the predictor forward on context + target tokens (one sequence per image, or one per
  target block with `per_block`), each with backward = 2 x forward.
Counting backward as 2 x forward for every trained layer (the convention behind MFU; the first layer's input
gradient is not needed, which makes the true count slightly lower) keeps figures comparable across codebases.
`tests/test_gpu_check.py` checks these formulas against torch's FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass

PRESETS = {  # width, depth, heads (usjepa.models.vit.VIT_PRESETS; repeated so this file imports nothing)
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}


def block_flops(tokens: float, width: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one transformer block on `tokens` tokens (one sequence)."""
    return (8 + 4 * mlp_ratio) * tokens * width**2 + 4 * tokens**2 * width


@dataclass
class Encoder:
    width: int
    depth: int
    patch: int = 16
    in_chans: int = 1
    prefix: int = 0  # CLS / register tokens
    mlp_ratio: float = 4.0

    @classmethod
    def preset(cls, arch: str, **kw) -> Encoder:
        width, depth, _ = PRESETS[arch]
        return cls(width, depth, **kw)

    def forward(self, patches: int, kept: float | None = None) -> float:
        """Forward FLOPs for one image of `patches` patches, keeping `kept` of them (all by default)."""
        kept = patches if kept is None else kept
        embed = 2 * patches * self.patch**2 * self.in_chans * self.width
        return embed + self.depth * block_flops(kept + self.prefix, self.width, self.mlp_ratio)


@dataclass
class PredictorSpec:
    in_dim: int
    out_dim: int
    width: int = 384
    depth: int = 12
    per_block: bool = False
    mlp_ratio: float = 4.0

    def forward(self, context: float, target_blocks: list[float]) -> float:
        """Forward FLOPs for one image: `context` tokens and one entry per target block (its token count)."""
        targets = sum(target_blocks)
        io = 2 * context * self.in_dim * self.width + 2 * targets * self.width * self.out_dim
        if self.per_block:  # every block gets its own copy of the context (embedded once)
            blocks = sum(self.depth * block_flops(context + t, self.width, self.mlp_ratio) for t in target_blocks)
        else:
            blocks = self.depth * block_flops(context + targets, self.width, self.mlp_ratio)
        return io + blocks


def salt_step_flops(student: Encoder, teacher: Encoder | None, predictor: PredictorSpec, patches: int,
                    pairs: list[tuple[float, list[float]]]) -> dict:
    """FLOPs per image of one SALT training step. pairs: (context tokens, [tokens per target block]) per mask pair.

    Returns the parts and the total (teacher forward + 3 x (student + predictor forward) over the pairs)."""
    teacher_f = teacher.forward(patches) if teacher is not None else 0.0
    student_f = sum(student.forward(patches, ctx) for ctx, _ in pairs)
    predictor_f = sum(predictor.forward(ctx, tgt) for ctx, tgt in pairs)
    total = teacher_f + 3 * (student_f + predictor_f)
    return {"teacher_forward": teacher_f, "student_forward": student_f, "predictor_forward": predictor_f,
            "total": total}


# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name fragment; the first match wins
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("A40", 150.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("V100", 125.0),  # fp16 (V100 has no bf16 tensor cores)
]


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (torch.cuda.get_device_name), or None when unknown."""
    name = device_name.upper()
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment.upper() in name:
            return peak
    return None
