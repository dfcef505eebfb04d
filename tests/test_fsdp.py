"""FSDP2 building blocks on CPU: a 2-process gloo run of the SALT step with the student and predictor sharded per
block (and the teacher replicated, or sharded) equals the 1-process run within 1e-5 after a few optimizer steps."""

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import salt_setup  # noqa: E402

STEPS, GLOBAL_BATCH = 3, 4


def _objective():
    return salt_setup.build_salt("vit_tiny", "vit_tiny", img=32, patch=8, depth=2, teacher_depth=2, pred_width=32,
                                 pred_depth=2, pred_heads=2, teacher_precision="fp32", backend="sdpa").train()


def _batch(step: int, items: slice, grid=(4, 4)) -> dict:
    """The global batch of `step`, sliced to `items`; per-sample masks depend on each item's seed only."""
    from usjepa.masks import ComplementMasker, PerSampleSampler

    seeds = list(range(100 * step, 100 * step + GLOBAL_BATCH))[items]
    images = torch.rand(GLOBAL_BATCH, 1, 32, 32, generator=torch.Generator().manual_seed(step))[items]
    return {"image": images, "index": torch.arange(len(seeds)),
            "masks": PerSampleSampler(ComplementMasker(grid))(seeds)}


def _train(objective, items: slice, reduce=None) -> list[float]:
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    losses = []
    for step in range(STEPS):
        loss, _ = objective(_batch(step, items))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(reduce(loss.detach()) if reduce else loss.item())
    return losses


def _worker(rank: int, world: int, store: str, out: str, teacher_mode: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from usjepa.models.sharding import place_teacher, shard_objective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    obj = _objective()
    units = shard_objective(obj, mesh)
    place_teacher(obj.teacher, "cpu", mesh, mode=teacher_mode, dtype=None)

    def mean(t):
        dist.all_reduce(t)
        return (t / world).item()

    per = GLOBAL_BATCH // world
    losses = _train(obj, slice(rank * per, (rank + 1) * per), mean)
    state = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
             for n, p in obj.named_parameters()}
    if rank == 0:
        torch.save({"losses": losses, "state": state, "units": units}, out)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("teacher_mode", ["replicate", "shard"])
def test_two_process_fsdp_equals_one_process(tmp_path, teacher_mode):
    torch.set_num_threads(1)
    ref = _objective()
    ref_losses = _train(ref, slice(0, GLOBAL_BATCH))
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out), teacher_mode), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert got["units"] == {"model": 2, "predictor": 2}  # one FSDP unit per block, plus each root
    assert got["losses"] == pytest.approx(ref_losses, abs=1e-5)
    ref_state = dict(ref.named_parameters())
    assert set(got["state"]) == set(ref_state)  # same parameter names as an unsharded model
    for name, value in got["state"].items():
        torch.testing.assert_close(value, ref_state[name].detach(), atol=1e-5, rtol=0, msg=name)
    init = dict(_objective().named_parameters())
    moved = [n for n, v in got["state"].items() if (v - init[n]).abs().max() > 1e-4]
    assert len(moved) > len(init) // 2  # the steps changed the weights: the agreement is not the initial state's


def test_teacher_placement_is_checked():
    from usjepa.models.sharding import place_teacher

    teacher = salt_setup.build_teacher("vit_tiny", 32, 8, depth=1, precision="fp32")
    with pytest.raises(ValueError, match="bf16 autocast"):
        place_teacher(teacher, "cpu", dtype=torch.bfloat16)  # fp32 teacher with bf16 weights would not run
    with pytest.raises(ValueError, match="not one of"):
        place_teacher(teacher, "cpu", mode="split")
    with pytest.raises(ValueError, match="needs the device mesh"):
        place_teacher(teacher, "cpu", mode="shard", dtype=None)
    bf16 = salt_setup.build_teacher("vit_tiny", 32, 8, depth=1, precision="bf16")
    place_teacher(bf16, "cpu")
    assert bf16.backbone.net.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert bf16.input_mean.dtype == torch.float32  # input statistics stay exact
    assert bf16(torch.rand(1, 1, 32, 32)).dtype == torch.float32
