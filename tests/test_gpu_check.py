"""`make gpu-check` on a machine without a GPU, and the numbers it rests on (analytic FLOPs, peak table)."""

import json
import os
import re
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


def _torch_timm_site(root: Path) -> Path:
    """A site folder holding torch, timm and what they depend on, nothing else (links into this environment):
    what a GPU node has before our other dependencies are installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, dists = ["torch", "timm"], {}
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in dists:
            continue
        try:
            dists[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    site = root / "site"
    site.mkdir()
    for dist in dists.values():
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    return site


@pytest.fixture(scope="module")
def torch_timm_site(tmp_path_factory):
    return _torch_timm_site(tmp_path_factory.mktemp("gpu_node"))


def _gpu_check(site: Path, *args):
    """benchmarks/gpu_check.py in an interpreter that sees only `site` and this repository (`-S`: no site-packages)."""
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return subprocess.run([sys.executable, "-S", "benchmarks/gpu_check.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs for real")
def test_gpu_check_without_gpu_says_so_and_exits_0(torch_timm_site):
    before = (ROOT / "benchmarks/results/gpu.json").stat().st_mtime if (ROOT / "benchmarks/results/gpu.json").exists() \
        else None
    out = _gpu_check(torch_timm_site)
    assert out.returncode == 0, out.stderr
    assert "no CUDA GPU here" in out.stdout
    assert "xformers no" in out.stdout and "omegaconf no" in out.stdout and "pytest no" in out.stdout
    after = (ROOT / "benchmarks/results/gpu.json").stat().st_mtime if before is not None else None
    assert before == after  # committed GPU results are never overwritten from a CPU machine


def test_gpu_check_imports_only_torch_timm_and_this_repository(torch_timm_site):
    out = _gpu_check(torch_timm_site, "--plan")
    assert out.returncode == 0, out.stderr
    assert "attention_agreement" in out.stdout and "compile+ckpt" in out.stdout


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_results(tmp_path, torch_timm_site):
    out = _gpu_check(torch_timm_site, "--cpu-dry-run", "--out", str(tmp_path),
                     "--skip", "activation_checkpointing,eager+ckpt")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert {c["check"]: c["status"] for c in data["checks"]} == {
        "attention_agreement": "pass", "no_host_sync": "pass", "bf16_student_step": "pass", "fsdp_step": "pass"}
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
