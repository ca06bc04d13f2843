"""megatron's DistributedOptimizer on the CPU path (gloo, the CPU adapter's constructor stand-in), the optimizer
whose sharded state (Adam moments, fp32 main params) the distributed-optimizer checkpoint tests save and reload.

Two gloo processes (DP2) train two copies of the tiny Puzzle model for three steps on the same data: one under
megatron's plain optimizer, one under the DistributedOptimizer. The distributed one must really shard (each rank
holds about half of the main params and moments) and give the same losses and weights to reduction rounding.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes

pytest.importorskip("megatron.core")

STEPS = 3
SEQ = 16


def _train(rank: int, dist_opt: bool) -> dict[str, Any]:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.training.step import optimizer_step

    model = build_puzzle_model(
        tiny_puzzle_config(128, max_position_embeddings=64), seq_length=SEQ, device="cpu", perform_initialization=False
    )
    init_weights_layout_invariant_(model, seed=3)
    model.config.calculate_per_token_loss = True
    model.config.finalize_model_grads_func = None
    ddp = DistributedDataParallel(
        config=model.config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=dist_opt),
        module=model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=1e-3, clip_grad=1.0, use_distributed_optimizer=dist_opt, params_dtype=torch.float32
        ),
        [ddp],
    )
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ)
    losses = []
    for step in range(STEPS):
        tokens = torch.randint(1, 128, (4, SEQ + 1), generator=torch.Generator().manual_seed(step))
        mine = tokens[2 * rank : 2 * rank + 2]

        def forward_step(data_iterator: Any, model_: Any) -> tuple[Any, Any]:
            batch = next(data_iterator)
            output = model_(batch[:, :-1], position_ids, None, labels=batch[:, 1:])

            def loss_func(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
                loss_sum = out.float().sum()
                return loss_sum / (4 * SEQ), torch.tensor(out.numel()), {"loss_sum": loss_sum.detach()}

            return output, loss_func

        result = optimizer_step([ddp], optimizer, None, [mine], forward_step, seq_length=SEQ, micro_batch_size=2)
        loss = torch.tensor(float(result.reports[0]["loss_sum"]))
        torch.distributed.all_reduce(loss)
        losses.append(loss.item() / (4 * SEQ))
    main_numel = sum(p.numel() for o in inner for g in o.optimizer.param_groups for p in g["params"])
    moments = sum(s["exp_avg"].numel() for o in inner for s in o.optimizer.state.values())
    return {
        "kinds": sorted({type(o).__name__ for o in inner}),
        "is_distributed": all(isinstance(o, DistributedOptimizer) for o in inner),
        "losses": losses,
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "model_numel": sum(p.numel() for p in model.parameters()),
        "main_numel": main_numel,
        "moment_numel": moments,
    }


def both_optimizers(rank: int) -> dict[str, dict[str, Any]]:
    """Rank ``rank`` of a DP2 group: the plain and the distributed optimizer run, one after the other."""
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(seed=1)
    return {"plain": _train(rank, False), "distributed": _train(rank, True)}


@pytest.mark.slow  # ~25 s on an idle 2-core runner (two gloo processes, two tiny models)
def test_distributed_optimizer_runs_on_cpu_sharded_and_matches_the_plain_one() -> None:
    ranks = run_local_processes(both_optimizers, 2, timeout_s=400)
    for rank, out in enumerate(ranks):
        plain, dist = out["plain"], out["distributed"]
        assert dist["is_distributed"] and not plain["is_distributed"], (dist["kinds"], plain["kinds"])
        assert plain["main_numel"] == plain["model_numel"]  # the plain optimizer holds every parameter
        assert dist["main_numel"] < 0.75 * dist["model_numel"], rank  # the distributed one about half
        assert dist["moment_numel"] == dist["main_numel"], rank
        for a, b in zip(plain["losses"], dist["losses"], strict=True):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (rank, plain["losses"], dist["losses"])
        for name, p in plain["params"].items():
            assert (p - dist["params"][name]).abs().max().item() <= 1e-6, (rank, name)
    shards = [out["distributed"]["main_numel"] for out in ranks]
    assert sum(shards) == ranks[0]["distributed"]["model_numel"]  # the two shards cover the model exactly once
    assert ranks[0]["distributed"]["params"].keys() == ranks[1]["distributed"]["params"].keys()
    for name, p in ranks[0]["distributed"]["params"].items():
        assert torch.equal(p, ranks[1]["distributed"]["params"][name]), name  # replicas stay identical
