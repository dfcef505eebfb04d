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
