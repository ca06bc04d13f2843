"""One GRPO policy update of the tiny Puzzle model on fixed rollouts, at CP1 or with context parallelism (gloo).

Shared by ``test_grpo_context_parallel.py``: the same initial weights (``init_weights_layout_invariant_``), the same
rollout batch and config as ``grpo_parallel_worker`` (KL to a frozen reference, the importance-sampling correction,
megatron's vocabulary padding), each case returning what must not depend on the layout: the log-probs before the
update (gathered back over CP into the batch's token order), the update's metrics, the log-probs after it and, when
every rank holds whole tensors (no TP / PP), the updated weights.
"""

from __future__ import annotations

from typing import Any

import grpo_parallel_worker as base
import torch

CASES = {
    "token": [],
    # GSPO's sequence ratio (summed over CP with its gradient) and the per-sequence mean (counts over CP).
    "sequence": ["algorithm.ratio_level=sequence", "algorithm.loss_aggregation=sequence"],
    # Dr. GRPO's constant normaliser (sequences x generation budget).
    "constant": ["algorithm.loss_aggregation=constant"],
}
"""Loss settings compared across layouts, by name."""


def run_case(parallel_kwargs: dict[str, Any], overrides: list[str], pack: bool) -> dict[str, Any]:
    """Initialise megatron for the layout, run one rollout's update (two optimizer steps) and tear down."""
    from nemotron_plugins.launch.overrides import set_by_path, split_override
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.policy_worker import policy_logprobs, policy_update
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import destroy_distributed, init_distributed
    from nemotron_plugins.training.setup import build_optimizer

    parallel = ParallelConfig(**parallel_kwargs)
    ctx = init_distributed(parallel, seed=base.SEED)
    try:
        config = base.train_config(parallel)
        # Adam's step is ~lr * sign(g) where |g| << eps: a larger eps keeps the updated weights a well-conditioned
        # function of the gradients, so they compare to fp32 precision across layouts.
        for text in ["optimizer.adam_eps=1e-4", *overrides]:
            set_by_path(config, *split_override(text))
        cfg = tiny_puzzle_config(base.VOCAB)

        def build() -> Any:
            model = build_puzzle_model(cfg, parallel=parallel, seq_length=base.SEQ, perform_initialization=False)
            init_weights_layout_invariant_(model, seed=base.SEED)
            if parallel.pipeline_model_parallel_size > 1:
                model.config.pipeline_dtype = torch.float32
            return model

        model, ref = build(), build()
        ref.eval()
        batch = base.fixed_batch()
        ddp, optimizer = build_optimizer(config, model)
        before = policy_logprobs(ddp, batch, config, vocab_size=base.VOCAB, pack=pack)
        metrics = policy_update(ddp, optimizer, batch, config, vocab_size=base.VOCAB, ref_model=ref, pack=pack)
        after = policy_logprobs(ddp, batch, config, vocab_size=base.VOCAB, pack=pack)
        weights = None
        if ctx.tp_size == 1 and ctx.pp_size == 1:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        return {"before": before, "after": after, "metrics": metrics, "weights": weights}
    finally:
        destroy_distributed()


def layouts_worker(rank: int, runs: list[tuple[str, dict[str, Any], list[str], bool]]) -> dict[str, Any]:
    """Every ``(name, parallel kwargs, overrides, pack)`` run in turn in this process group."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        return {name: run_case(kwargs, overrides, pack) for name, kwargs, overrides, pack in runs}
    finally:
        torch.distributed.destroy_process_group()


def tiny_runs(rank: int, runs: list[tuple[str, list[str]]]) -> list[list[dict[str, float]]]:
    """The tiny GRPO recipe once per ``(output_dir, overrides)`` in this process group (``run_grpo`` sets up
    megatron at each run's layout); the per-step metrics of each run."""
    from nemotron_plugins.rl.trainer import run_grpo
    from tests.run_configs import tiny_grpo

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        return [run_grpo(tiny_grpo(out, *overrides)).history for out, overrides in runs]
    finally:
        torch.distributed.destroy_process_group()
