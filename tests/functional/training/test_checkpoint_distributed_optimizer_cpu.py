"""megatron's DistributedOptimizer on the CPU path (gloo and the CPU adapter's stand-ins in runtime/cpu.py): it
runs, really shards, and its sharded state (Adam moments, fp32 main params, step) saves and loads exactly through
megatron's dist_checkpointing in the ``fully_reshardable`` format.

Two gloo processes (DP2) train copies of the tiny Puzzle model on the same data: under megatron's plain optimizer,
under the DistributedOptimizer (saving model + optimizer after step 2 with megatron's own API), and a fresh
DistributedOptimizer run that loads that checkpoint and trains the last step. The distributed run must shard (each
rank holds about half of the main params and moments), match the plain one to reduction rounding, and the resumed
run must match it bit for bit (loss, weights, main params, moments).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes

pytest.importorskip("megatron.core")

STEPS = 3
SAVE_AT = 2
SEQ = 16


def _sharded(ddp: Any, optimizer: Any, is_loading: bool) -> dict[str, Any]:
    model_sd = ddp.module.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
    return {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata),
    }


def _train(rank: int, dist_opt: bool, ckpt: str | None = None, resume: bool = False) -> dict[str, Any]:
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
    from megatron.core import dist_checkpointing

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    position_ids = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ)
    losses = {}
    first = 0
    if resume:
        loaded = dist_checkpointing.load(_sharded(ddp, optimizer, True), ckpt)
        ddp.module.load_state_dict(loaded["model"])
        optimizer.load_state_dict(loaded["optimizer"])
        first = SAVE_AT
    for step in range(first, STEPS):
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
        losses[step] = loss.item() / (4 * SEQ)
        if ckpt is not None and not resume and step + 1 == SAVE_AT:
            dist_checkpointing.save(_sharded(ddp, optimizer, False), ckpt, sharded_strategy=("torch_dist", 1))
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
        "state": [(k, t.clone()) for o in inner for st in o.optimizer.state.values() for k, t in sorted(st.items())],
        "main": [p.detach().clone() for o in inner for g in o.optimizer.param_groups for p in g["params"]],
    }


def three_runs(rank: int, ckpt: str) -> dict[str, dict[str, Any]]:
    """Rank ``rank`` of a DP2 group: the plain run, the distributed run (saving), the resumed distributed run."""
    from nemotron_plugins.runtime.distributed import init_distributed

    init_distributed(seed=1)
    return {
        "plain": _train(rank, False),
        "distributed": _train(rank, True, ckpt),
        "resumed": _train(rank, True, ckpt, resume=True),
    }


@pytest.mark.slow  # ~30 s on an idle 2-core runner (two gloo processes, three tiny models)
def test_distributed_optimizer_runs_on_cpu_sharded_and_resumes_exactly(tmp_path) -> None:
    ckpt = tmp_path / "dist"
    ckpt.mkdir()
    ranks = run_local_processes(three_runs, 2, (str(ckpt),), timeout_s=400)
    for rank, out in enumerate(ranks):
        plain, dist = out["plain"], out["distributed"]
        assert dist["is_distributed"] and not plain["is_distributed"], (dist["kinds"], plain["kinds"])
        assert plain["main_numel"] == plain["model_numel"]  # the plain optimizer holds every parameter
        assert dist["main_numel"] < 0.75 * dist["model_numel"], rank  # the distributed one about half
        assert dist["moment_numel"] == dist["main_numel"], rank
        assert plain["losses"].keys() == dist["losses"].keys() == set(range(STEPS))
        for step, loss in plain["losses"].items():
            assert abs(loss - dist["losses"][step]) <= 1e-6 * max(1.0, abs(loss)), (rank, plain, dist["losses"])
        for name, p in plain["params"].items():
            assert (p - dist["params"][name]).abs().max().item() <= 1e-6, (rank, name)
        resumed = out["resumed"]
        assert resumed["losses"] == {s: dist["losses"][s] for s in range(SAVE_AT, STEPS)}, rank  # bit-exact
        for name, p in dist["params"].items():
            assert torch.equal(p, resumed["params"][name]), (rank, name)
        assert len(resumed["main"]) == len(dist["main"]) and len(resumed["state"]) == len(dist["state"]) > 0
        for a, b in zip(dist["main"], resumed["main"], strict=True):
            assert torch.equal(a, b), rank  # fp32 main params
        for (key_a, a), (key_b, b) in zip(dist["state"], resumed["state"], strict=True):
            assert key_a == key_b and torch.equal(a, b), (rank, key_a, key_b)  # moments and Adam's step
    shards = [out["distributed"]["main_numel"] for out in ranks]
    assert sum(shards) == ranks[0]["distributed"]["model_numel"]  # the two shards cover the model exactly once
    assert ranks[0]["distributed"]["params"].keys() == ranks[1]["distributed"]["params"].keys()
    for name, p in ranks[0]["distributed"]["params"].items():
        assert torch.equal(p, ranks[1]["distributed"]["params"][name]), name  # replicas stay identical
