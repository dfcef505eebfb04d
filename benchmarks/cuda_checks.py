"""The GPU-path checks: run by `benchmarks/gpu_check.py` (no pytest needed) and by `tests/test_cuda.py` (marked
`cuda`). Each check takes a device, raises AssertionError when the GPU path is wrong, `Skip` when it cannot run
here, and returns a dict of what it measured. On a CPU they run too (small shapes, no CUDA-only parts), which is
how the checks themselves are tested where no GPU is available.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import salt_setup
import torch


class Skip(Exception):
    """The check cannot run here (the reason is its message)."""


def _xformers_usable() -> bool:
    from usjepa.models import attention as A

    return A._load_xformers() is not None


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> float:
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item() + 1e-6
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} x {scale:.3g}"
    return err / scale


# ----------------------------------------------------------------------------- attention kernels


def _two_segment_layout(B: int, ctx: int, tgt: int, device):
    """Predictor-like rows [context | targets], each segment padded at its own end (padding mid-row too)."""
    from usjepa.models.layout import Segment, TokenLayout

    rng = np.random.default_rng(0)
    c_len = rng.integers(ctx // 2, ctx + 1, B)
    t_len = rng.integers(1, tgt + 1, B)
    c_len[0], t_len[0] = ctx, tgt  # one full row
    cv = torch.arange(ctx)[None] < torch.from_numpy(c_len)[:, None]
    tv = torch.arange(tgt)[None] < torch.from_numpy(t_len)[:, None]
    layout = TokenLayout.from_segments([Segment(ctx, cv.to(device), c_len), Segment(tgt, tv.to(device), t_len)],
                                       B, device)
    return layout, torch.cat([cv, tv], dim=1).to(device)


def check_attention_agreement(device, small: bool = False) -> dict:
    """math vs SDPA vs xformers (when importable), forward and backward, dense / padded / packed, bf16 and fp32."""
    from usjepa.models import attention as A
    from usjepa.models.layout import TokenLayout

    device = torch.device(device)
    kernels = {"math": A.math_attention, "sdpa": A.sdpa_attention}
    if device.type == "cuda" and _xformers_usable():
        kernels["xformers"] = A.xformers_attention
    B, H, Dh, ctx, tgt = (3, 2, 16, 12, 9) if small else (8, 12, 64, 150, 100)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    padded, valid = _two_segment_layout(B, ctx, tgt, device)
    out = {"kernels": list(kernels), "errors": {}}
    for dtype in dtypes:
        tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
        for name, layout, mask in (("dense", TokenLayout(), None), ("padded", padded, valid)):
            g = torch.Generator(device="cpu").manual_seed(1)
            base = [torch.randn(B, H, ctx + tgt, Dh, generator=g).to(device) for _ in range(3)]
            w = torch.randn(B, H, ctx + tgt, Dh, generator=g).to(device)
            keep = torch.ones(B, 1, ctx + tgt, 1, device=device) if mask is None else mask[:, None, :, None].float()
            res = {}
            for kname, kernel in kernels.items():
                q, k, v = (t.to(dtype).requires_grad_() for t in base)
                o = kernel(q, k, v, layout)
                (o.float() * w * keep).sum().backward()  # real tokens only
                res[kname] = (o.detach().float() * keep, [t.grad for t in (q, k, v)])
            ref_o, ref_g = res["math"]
            for kname in kernels:
                if kname == "math":
                    continue
                o, grads = res[kname]
                key = f"{kname}_vs_math_{name}_{str(dtype).split('.')[-1]}"
                out["errors"][key] = _close(o, ref_o, tol, key + " forward")
                for gn, gg, rg in zip("qkv", grads, ref_g):
                    _close(gg, rg, tol * 2, f"{key} grad {gn}")
    if "xformers" not in kernels:
        out["note"] = "xformers not run: " + ("needs CUDA" if device.type != "cuda" else "not importable here")
    return out


# ----------------------------------------------------------------------------- no host sync


@contextlib.contextmanager
def _sync_debug_error(device):
    if device.type != "cuda":
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def check_no_host_sync(device, small: bool = False) -> dict:
    """A SALT forward + backward with padded (per-sample) and unpadded (reference) masks under CUDA's sync debug
    mode set to error: any `.item()`, `.tolist()`, nonzero or blocking copy in the step raises."""
    device = torch.device(device)
    kw = dict(student_arch="vit_tiny", teacher_arch="vit_tiny", img=64, patch=8, depth=2, teacher_depth=2,
              pred_depth=2, pred_width=64, pred_heads=4) if small else \
        dict(student_arch="vit_small", teacher_arch="vit_small", depth=4, teacher_depth=4, pred_depth=2)
    obj = salt_setup.build_salt(**kw).to(device).train()
    backend = obj.student.blocks[0].attn.backend
    for sampler in ("per_sample", "reference"):
        warm = salt_setup.draw_batch(obj, 8, 0, device, sampler)
        loss, _ = obj(warm)  # lazy tables, cuBLAS handles, RoPE caches
        loss.backward()
        batch = salt_setup.draw_batch(obj, 8, 1, device, sampler)  # new shapes, new layouts
        with _sync_debug_error(device):
            loss, _ = obj(batch)
            loss.backward()
    return {"backend": backend, "samplers": ["per_sample", "reference"],
            "mode": "torch.cuda.set_sync_debug_mode('error')" if device.type == "cuda" else "none on CPU"}


# ----------------------------------------------------------------------------- bf16 student step


def _small_salt(device, small: bool, **extra):
    kw = dict(student_arch="vit_tiny", teacher_arch="vit_tiny", img=64, patch=8, depth=2, teacher_depth=2,
              pred_depth=2, pred_width=64, pred_heads=4) if small else \
        dict(student_arch="vit_small", teacher_arch="vit_small", depth=6, teacher_depth=6, pred_depth=4)
    return salt_setup.build_salt(**kw, **extra).to(device).train()


def autocast(device, enabled: bool = True):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def check_bf16_step(device, small: bool = False) -> dict:
    """Student and predictor under bf16 autocast with fp32 master weights and (on CUDA) fused AdamW: weights and
    gradients stay fp32, loss and gradient direction follow the fp32 step's, the step changes every weight."""
    device = torch.device(device)
    obj = _small_salt(device, small)
    batch = salt_setup.draw_batch(obj, 8, 2, device)
    params = [p for p in obj.parameters() if p.requires_grad]
    loss32, _ = obj(batch)
    loss32.backward()
    grad32 = torch.cat([p.grad.flatten() for p in params])
    obj.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device.type == "cuda")
    with autocast(device):
        loss, _ = obj(batch)
    loss.backward()
    grad16 = torch.cat([p.grad.flatten() for p in params])
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    assert torch.isfinite(loss).item(), "bf16 loss is not finite"
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params), "master weights not fp32"
    rel = abs(loss.item() - loss32.item()) / abs(loss32.item())
    assert rel < 5e-2, f"bf16 loss {loss.item():.5f} vs fp32 {loss32.item():.5f}"
    cos = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0).item()
    assert cos > 0.98, f"bf16 gradient direction departs from fp32 (cosine {cos:.4f})"
    unchanged = sum(torch.equal(a, b) for a, b in zip(params, before))
    assert unchanged == 0, f"the optimizer step left {unchanged} parameter tensors unchanged"
    return {"loss_bf16": loss.item(), "loss_fp32": loss32.item(), "loss_rel_diff": rel, "grad_cosine": cos,
            "fused_adamw": device.type == "cuda"}


# ----------------------------------------------------------------------------- torch.compile


def compile_parts(objective) -> None:
    """torch.compile of student, predictor and teacher in place (parameter names unchanged), as `train.compile=true`
    does in the trainer (`usjepa.models.compiling.compile_objective`)."""
    from usjepa.models.compiling import compile_objective

    compile_objective(objective)


def check_compile(device, small: bool = False) -> dict:
    """Compiled student, predictor and teacher give the eager loss and gradients, over batches whose reference
    masks have different context lengths (the shapes change from batch to batch, as in training), and a padded
    per-sample batch (a TokenLayout through the compiled blocks)."""
    device = torch.device(device)
    # on a CPU everything runs in fp32, so the comparison is tight (a bf16 teacher's targets differ at bf16 rounding)
    eager = _small_salt(device, small, teacher_precision="bf16" if device.type == "cuda" else "fp32")
    comp = copy.deepcopy(eager)
    comp.__dict__["teacher"] = copy.deepcopy(eager.teacher)
    compile_parts(comp)
    tol = 2e-2 if device.type == "cuda" else 1e-4
    shapes, errors = [], []
    for i, sampler in enumerate(("reference", "reference", "per_sample")):  # the last one padded (a layout)
        batch = salt_setup.draw_batch(eager, 8, 10 + i, device, sampler)
        shapes.append([m.context.shape[1] for m in batch["masks"]])
        out = []
        for obj in (eager, comp):
            obj.zero_grad(set_to_none=True)
            with autocast(device, device.type == "cuda"):
                loss, _ = obj(batch)
            loss.backward()
            out.append((loss.detach(), [p.grad for p in obj.parameters() if p.requires_grad]))
        _close(out[1][0], out[0][0], tol, f"compiled loss (batch {i})")
        g1, g0 = (torch.cat([g.flatten().float() for g in grads]) for grads in (out[1][1], out[0][1]))
        rel = ((g1 - g0).norm() / g0.norm()).item()  # fused kernels reorder sums: compare the whole gradient
        assert rel < tol, f"compiled gradient (batch {i}): relative L2 error {rel:.3g} > {tol}"
        errors.append(rel)
    return {"context_tokens_per_batch": shapes, "grad_rel_l2": errors}


# ----------------------------------------------------------------------------- activation checkpointing


def check_activation_checkpointing(device, small: bool = False) -> dict:
    """Per-block checkpointing: the same gradients (drop-path on: same random draws), less peak memory on CUDA."""
    from usjepa.models import apply_activation_checkpointing

    device = torch.device(device)
    results = {}
    for ckpt in (False, True):
        obj = _small_salt(device, small, drop_path=0.1)
        if ckpt:
            apply_activation_checkpointing(obj)
        batch = salt_setup.draw_batch(obj, 8 if small else 32, 3, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        loss, _ = obj(batch)
        loss.backward()
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        results[ckpt] = (loss.detach(), [p.grad for p in obj.parameters() if p.requires_grad], peak)
    (l0, g0, m0), (l1, g1, m1) = results[False], results[True]
    _close(l1, l0, 1e-6, "checkpointed loss")
    for a, b in zip(g1, g0):
        _close(a, b, 1e-4, "checkpointed gradient")
    out = {"loss": l0.item()}
    if m0 is not None:
        assert m1 < m0, f"checkpointing did not lower peak memory ({m1:.0f} vs {m0:.0f} MB)"
        out.update(peak_mb_plain=m0, peak_mb_checkpointed=m1, reduction=1 - m1 / m0)
    return out


# ----------------------------------------------------------------------------- FSDP2 (train.sharding=fsdp)


@contextlib.contextmanager
def _group_of_one(device):
    """A process group of one rank when none exists: FSDP2 needs a device mesh, even on a single GPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_fsdp_step(device, small: bool = False) -> dict:
    """What `train.sharding=fsdp` runs, on a mesh of one: student and predictor `fully_shard`-ed per block (bf16
    gathers, fp32 reduction on CUDA), a step under autocast with (on CUDA) fused AdamW on the DTensor shards, against
    the same step unsharded; the gathered state (the checkpoint) has the unsharded keys and fp32 values, and loads
    back into the shards exactly."""
    from torch.distributed.device_mesh import init_device_mesh

    from usjepa.models.sharding import full_tensors, localise_checkpoint, mixed_precision, shard_objective

    device = torch.device(device)
    cuda = device.type == "cuda"
    ref = _small_salt(device, small, teacher_precision="bf16" if cuda else "fp32")
    obj = copy.deepcopy(ref)
    obj.__dict__["teacher"] = ref.teacher  # frozen: one copy serves both
    batch = salt_setup.draw_batch(ref, 8, 4, device)
    out = {}
    with _group_of_one(device):
        units = shard_objective(obj, init_device_mesh(device.type, (1,)), mp_policy=mixed_precision(device.type))
        for name, model in (("plain", ref), ("sharded", obj)):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3, fused=True if cuda else None)
            with autocast(device, cuda):
                loss, _ = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            out[name] = (loss.detach().float(), opt)
        mods = obj.trainable_modules()
        state = {k: full_tensors(m.state_dict()) for k, m in mods.items()}
        state["optimizer"] = full_tensors(out["sharded"][1].state_dict())
        plain = {k: m.state_dict() for k, m in ref.trainable_modules().items()}
        tol = 3e-3 if cuda else 1e-5  # bf16 gathers round differently from autocast's casts; one lr-sized step
        _close(out["sharded"][0], out["plain"][0], 5e-2 if cuda else 1e-5, "sharded loss")
        for k in mods:
            assert list(state[k]) == list(plain[k]), f"gathered {k} keys differ from the unsharded ones"
            for key, v in state[k].items():
                assert not hasattr(v, "full_tensor") and v.device.type == "cpu", f"{k}.{key} was not gathered"
                if v.is_floating_point():
                    assert v.dtype == torch.float32, f"{k}.{key} is {v.dtype}, not fp32 master weights"
                _close(v.to(device), plain[k][key], tol, f"sharded step: {k}.{key}")
        with torch.no_grad():  # spoil the shards, then load the gathered state back
            for p in obj.parameters():
                p.zero_()
        local = localise_checkpoint(state, mods, out["sharded"][1])
        for k, m in mods.items():
            m.load_state_dict(local[k])
        out["sharded"][1].load_state_dict(local["optimizer"])
        again = {k: full_tensors(m.state_dict()) for k, m in mods.items()}
        again_opt = full_tensors(out["sharded"][1].state_dict())["state"]
    for k in mods:
        for key, v in state[k].items():
            assert torch.equal(again[k][key], v), f"{k}.{key} did not load back exactly"
    for i, st in state["optimizer"]["state"].items():
        assert torch.equal(again_opt[i]["exp_avg"], st["exp_avg"]), f"optimizer state {i} did not load back"
    return {"fsdp_units": units, "loss_plain": out["plain"][0].item(), "loss_sharded": out["sharded"][0].item(),
            "fused_adamw": cuda, "param_dtype": "bf16" if cuda else "fp32"}


CHECKS = {
    "attention_agreement": check_attention_agreement,
    "no_host_sync": check_no_host_sync,
    "bf16_student_step": check_bf16_step,
    "compile": check_compile,
    "activation_checkpointing": check_activation_checkpointing,
    "fsdp_step": check_fsdp_step,
}
