"""torch.distributed + megatron parallel_state setup and the local multi-process helper."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.runtime import cpu
from nemotron_plugins.runtime.config import ParallelConfig
from nemotron_plugins.runtime.distributed import (
    DistributedError,
    destroy_distributed,
    distributed_context,
    init_distributed,
    run_local_processes,
    validate_parallel_config,
)


def test_validate_parallel_config_names_the_bad_field() -> None:
    assert validate_parallel_config(ParallelConfig(tensor_model_parallel_size=2), 4) == 2
    with pytest.raises(DistributedError, match="not divisible by TP x PP x CP"):
        validate_parallel_config(ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6)
    with pytest.raises(DistributedError, match="data_parallel_size=3"):
        validate_parallel_config(ParallelConfig(data_parallel_size=3), 2)
    with pytest.raises(DistributedError, match="sequence_parallel"):
        validate_parallel_config(ParallelConfig(sequence_parallel=True), 1)
    with pytest.raises(DistributedError, match="pipeline_layout has 1 entries"):
        validate_parallel_config(ParallelConfig(pipeline_model_parallel_size=2, pipeline_layout=[4]), 2)
    with pytest.raises(DistributedError, match="tensor_model_parallel_size must be a positive integer"):
        validate_parallel_config(ParallelConfig(tensor_model_parallel_size=0), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the gloo/CPU path")
def test_single_process_init_and_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core import parallel_state

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with distributed_context(seed=5) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, "gloo")
        assert (ctx.tp_size, ctx.pp_size, ctx.cp_size, ctx.dp_size) == (1, 1, 1, 1)
        assert ctx.is_first_stage and ctx.is_last_stage
        assert ctx.cpu_adapter_active and cpu.is_cpu_adapter_active()
        assert parallel_state.model_parallel_is_initialized()
        with pytest.raises(DistributedError, match="already initialised"):
            init_distributed()
    assert not parallel_state.model_parallel_is_initialized()
    assert not torch.distributed.is_initialized()
    assert not cpu.is_cpu_adapter_active()
    destroy_distributed()  # safe when nothing is initialised


def test_world_size_without_master_address_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR/MASTER_PORT"):
        init_distributed()
    assert not torch.distributed.is_initialized()


def _sum_ranks(rank: int, scale: int) -> tuple[int, int]:
    torch.distributed.init_process_group("gloo")
    value = torch.tensor([rank * scale])
    torch.distributed.all_reduce(value)
    return rank, int(value)


def _fail(rank: int) -> None:
    raise ValueError(f"boom on rank {rank}")


def test_run_local_processes_returns_results_by_rank_and_reports_failures() -> None:
    assert run_local_processes(_sum_ranks, 2, (10,), timeout_s=120) == [(0, 10), (1, 10)]
    with pytest.raises(DistributedError, match="boom on rank 0"):
        run_local_processes(_fail, 1, timeout_s=120)
