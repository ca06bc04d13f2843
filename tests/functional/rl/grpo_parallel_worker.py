"""GRPO policy updates of the tiny Puzzle model on fixed rollouts, at any TP / PP / DP layout.

Shared by the functional test (TP=1 in-process, TP=2 / PP=2 / DP=2 in two spawned gloo processes): the same
initial weights (``init_weights_layout_invariant_``), the same packed rollout batch, megatron DDP + optimizer through
:func:`nemotron_plugins.rl.policy_worker.policy_update` with two updates per rollout (so the ratio / clipping path and the
"old" log-prob pass run), a KL term to a frozen reference, and megatron's vocabulary padding on the logits.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 106  # padded to 128 by megatron: the padding ids must be masked out of the log-softmax
SEQ = 64
SEED = 11
KEYS = ("loss", "kl", "clip_fraction", "ratio_mean", "pg_loss", "grad_norm", "generator_trainer_logprob_diff")


def fixed_batch() -> Any:
    """16 rollouts (4 prompts x 4 samples) of random tokens with random advantages and generator log-probs."""
    from nemotron_plugins.rl.policy_worker import pack_policy_batch

    gen = torch.Generator().manual_seed(SEED)
    prompts, completions, logprobs = [], [], []
    for _ in range(16):
        p = int(torch.randint(5, 12, (), generator=gen))
        c = int(torch.randint(3, 20, (), generator=gen))
        prompts.append(torch.randint(0, VOCAB, (p,), generator=gen).tolist())
        completions.append(torch.randint(0, VOCAB, (c,), generator=gen).tolist())
        logprobs.append((-5.0 + 0.1 * torch.randn(c, generator=gen)).tolist())
    advantages = torch.randn(16, generator=gen)
    return pack_policy_batch(prompts, completions, logprobs, advantages, pad_id=0)


def train_config(parallel: Any) -> Any:
    """The tiny GRPO recipe with this layout: 4 prompts x 4 samples, 2 updates per rollout (global batch 8),
    micro-batches of 2, a KL term and the importance-sampling correction."""
    from tests.run_configs import tiny_grpo

    config = tiny_grpo(
        "/tmp/unused",
        "algorithm.num_prompts_per_rollout=4",
        "algorithm.num_generations=4",
        "algorithm.beta=0.05",
        "algorithm.epsilon=0.2",
        "algorithm.importance_sampling_correction=true",
        "global_batch_size=8",
        "micro_batch_size=2",
        "generation.max_new_tokens=20",
        "optimizer.lr=3e-3",
        f"model.seq_length={SEQ}",
    )
    config.parallel = parallel
    return config


def run_updates(parallel_kwargs: dict[str, Any], rollouts: int = 2, full_state_path: str | None = None) -> dict:
    """Initialise megatron for the layout, run ``rollouts`` policy updates on the fixed batch, tear down.

    With ``full_state_path`` the initial weights are loaded from that single-rank state (resharded to the layout)
    instead of ``init_weights_layout_invariant_``.

    Returns:
        ``{"metrics": [per-update metrics...], "logprobs": target log-probs before training (last stage, else None)}``.
    """
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl import policy_worker as trainer
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import destroy_distributed, init_distributed
    from nemotron_plugins.training.setup import InitialState, build_optimizer, load_state_into

    parallel = ParallelConfig(**parallel_kwargs)
    ctx = init_distributed(parallel, seed=SEED)
    try:
        cfg = tiny_puzzle_config(VOCAB)
        config = train_config(parallel)

        def build(init: bool) -> Any:
            model = build_puzzle_model(cfg, parallel=parallel, seq_length=SEQ, perform_initialization=False)
            if full_state_path is not None:
                initial = InitialState(
                    state=torch.load(full_state_path, weights_only=True), world_size=1, path=full_state_path
                )
                load_state_into(model, initial, cfg)
            else:
                init_weights_layout_invariant_(model, seed=SEED)
            if parallel.pipeline_model_parallel_size > 1:
                model.config.pipeline_dtype = torch.float32
            return model

        model, ref = build(True), build(True)
        ref.eval()
        batch = fixed_batch()
        ddp, optimizer = build_optimizer(config, model)
        pp = parallel.pipeline_model_parallel_size > 1
        before = {}
        for pack in (True, False):
            plan = trainer.plan_micro_batches(batch, torch.arange(len(batch)), 2, pack=pack, uniform=pp)
            per_mb = trainer._forward_logprobs(ddp, plan, 1.0, VOCAB)
            if per_mb:  # last pipeline stage: back to the batch's [N, W] layout
                full = torch.zeros(batch.input_ids.shape)
                for mb, lp in zip(plan.micro_batches, per_mb, strict=True):
                    rows = mb["rows"]
                    full[rows] = torch.nn.functional.pad(lp[: rows.numel()], (0, full.shape[1] - lp.shape[1]))
                before[pack] = full * batch.mask
        metrics = [
            trainer.policy_update(ddp, optimizer, batch, config, vocab_size=VOCAB, ref_model=ref)
            for _ in range(rollouts)
        ]
        last = ctx.is_last_stage and ctx.tp_rank == 0
        return {
            "metrics": metrics,
            "logprobs": before[True] if last and before else None,
            "logprobs_unpacked": before[False] if last and before else None,
        }
    finally:
        destroy_distributed()


def parallel_worker(rank: int, layouts: dict[str, dict[str, Any]], full_state_path: str) -> dict[str, Any]:
    """Run :func:`run_updates` for each layout in turn (2 processes), plus TP=2 from a resharded single-rank state."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        out = {name: run_updates(kwargs) for name, kwargs in layouts.items()}
        out["TP=2 resharded"] = run_updates({"tensor_model_parallel_size": 2}, full_state_path=full_state_path)
        return out
    finally:
        torch.distributed.destroy_process_group()
