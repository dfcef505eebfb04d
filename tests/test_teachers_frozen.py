"""A FrozenTeacher never trains, and handles channels and normalisation presets itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import teachers
from teachers.frozen import PRESETS, bf16_supported


def tiny(**kw) -> teachers.FrozenTeacher:
    return teachers.load("random", arch="vit_tiny", depth=2, patch_size=8, **kw)


class Student(nn.Module):
    """A parent that owns a teacher as a submodule (the worst case: optimiser over all parameters)."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher
        self.head = nn.Linear(teacher.embed_dim, teacher.embed_dim)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.head(self.teacher(x)))


def test_stays_in_eval_and_never_requires_grad():
    t = tiny()
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    parent = Student(t)
    parent.train()
    assert parent.training and parent.drop.training
    assert not any(m.training for m in t.modules())
    assert not any(p.requires_grad for p in t.parameters())
    with pytest.raises(RuntimeError, match="never trains"):
        t.requires_grad_(True)


def test_weights_bit_identical_after_student_backward_and_step():
    t = tiny()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    parent = Student(t).train()
    opt = torch.optim.AdamW(parent.parameters(), lr=1.0, weight_decay=0.5)
    x = torch.rand(2, 1, 32, 32)
    for _ in range(2):
        out = parent(x)
        loss = (out - t(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert t(x).grad_fn is None and not t(x).requires_grad
    assert all(p.grad is None for p in t.parameters())
    after = t.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert parent.head.weight.grad is not None  # the student did train


def test_gray_input_is_replicated_to_rgb():
    t = tiny(in_chans=3, norm="imagenet")
    gray = torch.rand(2, 1, 32, 40)
    torch.testing.assert_close(t(gray), t(gray.expand(-1, 3, -1, -1).clone()))
    one = tiny(in_chans=1)
    rgb = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(one(rgb), one(rgb.mean(1, keepdim=True)))


@pytest.mark.parametrize("preset", ["imagenet", "clip", "minus_one_one"])
def test_mean_std_presets(preset):
    t = tiny(norm=preset)
    x = torch.rand(2, 3, 16, 16)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in PRESETS[preset])
    torch.testing.assert_close(t.prepare(x), (x - mean) / std)


def test_zscore_none_and_model_presets():
    x = torch.rand(2, 1, 16, 16) * 0.3 + 0.2
    z = tiny(norm="zscore").prepare(x)  # [2, 3, 16, 16]
    for i in range(2):
        assert abs(float(z[i].mean())) < 1e-5 and abs(float(z[i].std()) - 1) < 1e-4
    torch.testing.assert_close(tiny(norm="none").prepare(x), x.expand(-1, 3, -1, -1))
    own = tiny(norm_mean=(0.2,), norm_std=(0.4,))  # default preset "model": the encoder's own statistics
    torch.testing.assert_close(own.prepare(x), (x.expand(-1, 3, -1, -1) - 0.2) / 0.4)
    with pytest.raises(ValueError, match="unknown normalisation preset 'imagenett'"):
        tiny(norm="imagenett")
    with pytest.raises(ValueError, match="needs the model's own mean/std"):
        teachers.FrozenTeacher(tiny().backbone, family="x", norm="model")


def test_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="not a multiple of the teacher's patch size 8"):
        tiny()(torch.rand(1, 1, 30, 32))


def test_keep_gathers_after_the_full_pass():
    t = tiny()
    x = torch.rand(2, 1, 32, 32)
    keep = torch.tensor([[0, 5, 7], [15, 1, 2]])
    full = t(x)
    torch.testing.assert_close(t(x, keep), torch.stack([full[0, keep[0]], full[1, keep[1]]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_bf16_autocast_and_returns_float32():
    t = tiny().cuda()
    x = torch.rand(2, 1, 32, 32, device="cuda")
    out = t(x)
    assert out.dtype == torch.float32
    ref = teachers.load("random", arch="vit_tiny", depth=2, patch_size=8, precision="fp32").cuda()(x)
    assert 0 < (out - ref).abs().max() < 0.1  # bf16 differs from fp32, but only by rounding


def test_precision_bf16_rounds_on_cpu_and_fp32_is_exact():
    """bf16 (forced, or auto on a CPU with bf16 units) returns float32 tokens that differ from fp32 by rounding only."""
    x = torch.rand(2, 1, 32, 32)
    fp32 = teachers.load("random", arch="vit_tiny", depth=2, patch_size=8, precision="fp32")
    bf16 = teachers.load("random", arch="vit_tiny", depth=2, patch_size=8, precision="bf16")
    auto = teachers.load("random", arch="vit_tiny", depth=2, patch_size=8)
    ref, low = fp32(x), bf16(x)
    assert low.dtype == torch.float32
    err = (low - ref).abs().max().item()
    assert 0 < err < 0.1 * ref.abs().max().item()
    assert not fp32.runs_bf16(torch.device("cpu")) and bf16.runs_bf16(torch.device("cpu"))
    assert auto.runs_bf16(torch.device("cpu")) == bf16_supported(torch.device("cpu"))
    torch.testing.assert_close(auto(x), low if auto.runs_bf16(torch.device("cpu")) else ref, atol=0, rtol=0)
    assert fp32.identity["precision"] == "fp32" and auto.identity["precision"] == "auto"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='half'.*auto, bf16, fp32"):
        teachers.load("random", arch="vit_tiny", depth=2, patch_size=8, precision="half")
