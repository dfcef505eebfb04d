"""The env resolver: SLURM tasks, torchrun workers, single process, and refusal of half-set environments."""

from __future__ import annotations

import pytest

from usjepa.train.distributed import (
    DistEnv,
    DistributedEnvError,
    expand_nodelist,
    init_distributed,
    resolve_env,
    slurm_master_port,
)


def _slurm_task(procid: int, localid: int, nodelist: str = "gpu[07-08]", ntasks: int = 8,
                job_id: str = "4321") -> dict:
    """What srun puts into one task's environment for a 2-node x 4-task job (no fake beyond the values)."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_NODEID": str(procid // 4),
    }


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("vm", ["vm"]),
        ("gpu[07-09]", ["gpu07", "gpu08", "gpu09"]),
        ("a[1-2,5],b3", ["a1", "a2", "a5", "b3"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("r[1-2]-c[3,5]", ["r1-c3", "r1-c5", "r2-c3", "r2-c5"]),
        ("node-1.domain,node-2.domain", ["node-1.domain", "node-2.domain"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-2", "gpu1-2]", "gpu[a-b]", "gpu[5-3]", ""])
def test_expand_nodelist_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_faked_two_node_slurm_job_gives_every_task_its_rank() -> None:
    envs = [resolve_env(_slurm_task(p, p % 4)) for p in range(8)]
    assert [e.rank for e in envs] == list(range(8))
    assert [e.local_rank for e in envs] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert {e.world_size for e in envs} == {8}
    assert {e.master_addr for e in envs} == {"gpu07"}  # first host of the allocation
    assert len({e.master_port for e in envs}) == 1
    assert {e.source for e in envs} == {"slurm"}


def test_slurm_port_follows_job_id() -> None:
    a, b = resolve_env(_slurm_task(0, 0, job_id="100")), resolve_env(_slurm_task(0, 0, job_id="101"))
    assert a.master_port != b.master_port
    assert a.master_port == slurm_master_port("100")
    assert 1024 < a.master_port < 65536
    # array tasks have their own SLURM_JOB_ID; a literal "123_4" still yields a valid port
    assert 1024 < slurm_master_port("123_4") < 65536


def test_slurm_explicit_master_overrides_derived_values() -> None:
    env = resolve_env({**_slurm_task(1, 1), "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "31337"})
    assert (env.master_addr, env.master_port) == ("10.0.0.9", 31337)


def test_batch_script_without_srun_is_a_single_process() -> None:
    """The batch shell has SLURM_PROCID/NTASKS but no job step: running there must not wait for peers."""
    batch = {k: v for k, v in _slurm_task(0, 0).items() if not k.startswith("SLURM_STEP")}
    assert resolve_env(batch) == DistEnv()


def test_half_set_slurm_step_names_what_is_missing() -> None:
    env = _slurm_task(0, 0)
    del env["SLURM_PROCID"]
    with pytest.raises(DistributedEnvError, match="SLURM_PROCID"):
        resolve_env(env)
    env = _slurm_task(0, 0)
    for k in ("SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST"):
        del env[k]
    with pytest.raises(DistributedEnvError, match="NODELIST"):
        resolve_env(env)


def test_slurm_rank_outside_world_is_rejected() -> None:
    with pytest.raises(DistributedEnvError, match="rank 8"):
        resolve_env(_slurm_task(8, 0))


def test_torchrun_env() -> None:
    env = resolve_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
                       "MASTER_ADDR": "h1", "MASTER_PORT": "29400"})
    assert env == DistEnv(rank=3, local_rank=1, world_size=4, master_addr="h1", master_port=29400,
                          source="torchrun")


def test_torchrun_wins_inside_a_slurm_step() -> None:
    environ = {**_slurm_task(5, 1), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
               "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    assert resolve_env(environ).source == "torchrun"


def test_half_set_torchrun_names_what_is_missing() -> None:
    with pytest.raises(DistributedEnvError) as info:
        resolve_env({"RANK": "0", "WORLD_SIZE": "2"})
    message = str(info.value)
    assert "LOCAL_RANK" in message and "MASTER_ADDR" in message and "MASTER_PORT" in message


def test_non_integer_value_is_named() -> None:
    with pytest.raises(DistributedEnvError, match="WORLD_SIZE='two'"):
        resolve_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "two",
                     "MASTER_ADDR": "h", "MASTER_PORT": "1"})


def test_no_env_is_single_process_and_init_is_a_no_op() -> None:
    import torch.distributed as dist

    env = resolve_env({"HOME": "/root", "MASTER_ADDR": "somewhere"})
    assert env == DistEnv() and env.is_main
    init_distributed(env)
    assert not (dist.is_available() and dist.is_initialized())


# ----------------------------------------------------------------------------- collectives

STAND_IN = "usjepa_cuda_only"  # gloo registered for CUDA tensors only: NCCL's rule, on a machine without a GPU


def _register_stand_in() -> None:
    import torch.distributed as dist

    if STAND_IN.upper() in dist.Backend.backend_list or STAND_IN in dist.Backend.backend_list:
        return
    dist.Backend.register_backend(STAND_IN, lambda store, rank, size, timeout: dist.ProcessGroupGloo(
        store, rank, size, timeout), devices=["cuda"])


def test_a_gpu_node_process_group_also_serves_the_cpu_tensors_of_the_stop_check(monkeypatch) -> None:
    """On a GPU node an NCCL-only group rejects the CPU flag of the stop check ("No backend type associated with
    device type cpu"): every multi-GPU run would die on its first step. The group must also serve CPU tensors."""
    import torch
    import torch.distributed as dist

    from usjepa.train.collectives import Collectives

    captured: dict = {}
    with monkeypatch.context() as m:  # what init_distributed asks for on a node with a GPU
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "device_count", lambda: 1)
        m.setattr(torch.cuda, "set_device", lambda *_: None)
        m.setattr(dist, "init_process_group", lambda **kw: captured.update(kw))
        init_distributed(DistEnv(rank=0, world_size=2, master_port=29599))
    assert "nccl" in captured["backend"]
    _register_stand_in()  # the same group with NCCL's device rule, on this CPU machine (a world of one)
    dist.init_process_group(captured["backend"].replace("nccl", STAND_IN), store=dist.HashStore(), rank=0,
                            world_size=1)
    try:
        flag = torch.tensor([1.0])  # a host-side flag, as the stop check builds it
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        assert flag.item() == 1.0
        assert Collectives(world_size=2, device=torch.device("cpu")).any(True)
    finally:
        dist.destroy_process_group()


def test_every_collective_of_the_trainer_goes_through_the_helper_on_the_group_device(tmp_path, monkeypatch,
                                                                                    sim_root) -> None:
    """A world of two in one process (torch's fake process group, collectives return at once): a short run calls
    torch.distributed only from usjepa.train.collectives, with tensors on the group's device."""
    import sys

    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import usjepa.train.loop as loop
    from usjepa.config import load_config
    from usjepa.train.collectives import group_device

    seen: list[tuple[str, str, object]] = []

    def checked(name: str):
        real = getattr(dist, name)

        def call(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            tensor = args[0] if args else None
            seen.append((name, caller, getattr(tensor, "device", kwargs.get("device"))))
            return real(*args, **kwargs)

        return call

    for name in ("all_reduce", "broadcast", "broadcast_object_list", "all_gather", "all_gather_object", "reduce",
                 "reduce_scatter", "barrier", "gather", "scatter"):
        monkeypatch.setattr(dist, name, checked(name))
    monkeypatch.setattr(loop._Trainer, "_ddp", lambda self: self.objective)  # DDP's own reductions are C++
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29598")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        cfg = load_config("configs/pretrain/ema_jepa_vit_tiny_sim.yaml",
                          [f"train.out_dir={tmp_path / 'run'}", f"data.root={sim_root}", "data.num_images=96",
                           "data.batch_size=16", "train.steps=2", "train.progress=false"])
        assert loop.run_training(cfg).status == "completed"
        device = group_device()
    finally:
        dist.destroy_process_group()
    assert {name for name, _, _ in seen} >= {"all_reduce", "broadcast_object_list"}
    outside = [(name, caller) for name, caller, _ in seen if caller.startswith(("usjepa", "launch"))
               and caller != "usjepa.train.collectives"]
    assert outside == [], f"collectives called around the helper: {outside}"
    assert all(torch.device(d) == device for _, caller, d in seen if caller == "usjepa.train.collectives")
