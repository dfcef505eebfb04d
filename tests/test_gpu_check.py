"""`make gpu-check` on a machine without a GPU, and the numbers it rests on (analytic FLOPs, peak table)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import flops as F  # noqa: E402
import salt_setup  # noqa: E402

# what a GPU node has before our other dependencies are installed: torch, timm (and what they pull in)
BLOCKER = """
import importlib.abc, runpy, sys
BLOCK = {"omegaconf", "submitit", "xformers", "scipy", "sklearn", "pandas", "pydicom", "av", "pyarrow",
         "matplotlib", "pytest"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmarks/gpu_check.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def _gpu_check(*args):
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real")
def test_gpu_check_without_gpu_says_so_and_exits_0():
    before = (ROOT / "benchmarks/results/gpu.json").stat().st_mtime if (ROOT / "benchmarks/results/gpu.json").exists() \
        else None
    out = _gpu_check()
    assert out.returncode == 0, out.stderr
    assert "no CUDA GPU here" in out.stdout and "xformers no" in out.stdout
    after = (ROOT / "benchmarks/results/gpu.json").stat().st_mtime if before is not None else None
    assert before == after  # committed GPU results are never overwritten from a CPU machine


def test_gpu_check_imports_only_torch_timm_and_this_repository():
    out = _gpu_check("--plan")
    assert out.returncode == 0, out.stderr
    assert "attention_agreement" in out.stdout and "compile+ckpt" in out.stdout


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_results(tmp_path):
    out = _gpu_check("--cpu-dry-run", "--out", str(tmp_path), "--skip", "activation_checkpointing,eager+ckpt")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert {c["check"]: c["status"] for c in data["checks"]} == {
        "attention_agreement": "pass", "no_host_sync": "pass", "bf16_student_step": "pass"}
    assert [r["variant"] for r in data["salt_step"]] == ["eager"] and data["salt_step"][0]["images_per_s"] > 0
    assert any("compile" in s for s in data["skipped"]) and "## Skipped" in (tmp_path / "gpu.md").read_text()


def test_analytic_flops_match_torch_flop_counter():
    """The formulas of benchmarks/flops.py against FlopCounterMode on a real SALT step (math attention, so every
    matmul is an aten op the counter sees): forward parts exactly, the whole step within the convention's slack."""
    obj = salt_setup.build_salt("vit_tiny", "vit_small", img=64, patch=8, backend="math", depth=2, teacher_depth=3,
                                pred_width=64, pred_depth=2, pred_heads=4, teacher_precision="fp32")
    batch = salt_setup.draw_batch(obj, 4, 0, "cpu")
    m = batch["masks"][0]
    with FlopCounterMode(display=False) as fc:
        obj.student(batch["image"], m.context)
    student = F.Encoder(192, 2, 8, 1).forward(64, m.context.shape[1]) * 4
    assert fc.get_total_flops() == pytest.approx(student, rel=1e-9)
    with FlopCounterMode(display=False) as fc:
        obj.teacher(batch["image"])
    assert fc.get_total_flops() == pytest.approx(F.Encoder(384, 3, 8, 1).forward(64) * 4, rel=1e-9)
    with FlopCounterMode(display=False) as fc:
        loss, _ = obj(batch)
        loss.backward()
    counted = fc.get_total_flops()
    analytic = salt_setup.batch_flops(obj, batch)
    # the counter skips the images' gradient at the first layer (patch embedding): analytic is slightly higher
    embed_input_grad = 2 * 64 * 64 * 192 * 4 * len(batch["masks"])
    assert counted == pytest.approx(analytic - embed_input_grad, rel=1e-6)


def test_salt_vitb16_flops_and_peak_table():
    student, teacher = F.Encoder.preset("vit_base"), F.Encoder.preset("vit_base")
    pred = F.PredictorSpec(768, 768)
    parts = F.salt_step_flops(student, teacher, pred, 196, [(196, [0])])
    # a student seeing every patch costs exactly a teacher forward
    assert parts["student_forward"] == pytest.approx(parts["teacher_forward"])
    assert parts["teacher_forward"] == pytest.approx(12 * (24 * 196 * 768**2 + 4 * 196**2 * 768) + 2 * 196 * 256 * 768)
    assert F.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert F.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert F.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert F.bf16_peak_tflops("NVIDIA L4") == 121.0 and F.bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert F.bf16_peak_tflops("Some Future GPU") is None
