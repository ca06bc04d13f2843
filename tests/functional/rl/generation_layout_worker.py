"""Spawned by ``test_generation_layout.py``: rollouts, a GRPO update and a refit at one training layout with the
megatron engine at the training layout (colocated) or at a generation layout of its own (a TP1 copy per rank).

Every layout starts from the same layout-invariant weights and takes the same steps: greedy and sampled rollouts of
four prompts through :class:`~nemotron_plugins.rl.generation.GenerationWorker` (built from the recipe config as the
controller builds it), one :func:`~nemotron_plugins.rl.policy_worker.policy_update` on the sampled rollouts, the
generation worker's refit, then the same rollouts again. It reports the samples, the update's metrics and, for the
copy engine, whether the copy's weights equal the training model's before and after the update.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

SEQ = 64
SEED = 5
PROMPT_SEED = 17
NEW_TOKENS = 10
KEYS = ("loss", "clip_fraction", "ratio_mean", "pg_loss", "grad_norm", "generator_trainer_logprob_diff")


def prompts(vocab: int) -> list[list[int]]:
    """Four prompts of random ids (lengths 4-9), the same in every process."""
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return [
        torch.randint(4, vocab, (int(torch.randint(4, 10, (), generator=gen)),), generator=gen).tolist()
        for _ in range(4)
    ]


def recipe(parallel: Any, megatron_layout: str, gen_tp: int) -> Any:
    """The tiny GRPO recipe at ``parallel`` with the megatron engine at ``megatron_layout`` and generation TP."""
    from tests.run_configs import tiny_grpo

    config = tiny_grpo(
        "/tmp/unused",
        "algorithm.num_prompts_per_rollout=4",
        "algorithm.num_generations=4",
        "global_batch_size=8",
        "micro_batch_size=2",
        f"generation.max_new_tokens={NEW_TOKENS}",
        f"generation.tensor_model_parallel_size={gen_tp}",
        f"generation.megatron_layout={megatron_layout}",
        "optimizer.lr=3e-3",
        f"model.seq_length={SEQ}",
    )
    config.parallel = parallel
    return config


def _hf_weights(model: Any, cfg: Any, groups: Any = None) -> dict[str, torch.Tensor]:
    from nemotron_plugins.rl.refit import stream_hf_weights

    return {
        name: t.clone()
        for bucket in stream_hf_weights(model, config=cfg, bucket_bytes=1 << 16, export_widths=False, groups=groups)
        for name, t in bucket
    }


def _copy_matches(engine: Any, policy: Any, cfg: Any) -> bool | None:
    """Whether the copy engine's weights equal the training model's, bitwise (``None`` for the colocated engine)."""
    from nemotron_plugins.rl.refit import RefitGroups

    if getattr(engine, "layout", None) is None:
        return None
    training = _hf_weights(policy, cfg)  # a collective over the training model-parallel group
    ranks = engine.ranks  # the copy's own TP group: its shards gathered over it
    copy = _hf_weights(
        engine.model, cfg, groups=RefitGroups(tp_rank=ranks.tp_rank, tp_size=ranks.tp_size, tp_group=ranks.tp_group)
    )
    return training.keys() == copy.keys() and all(torch.equal(training[k], copy[k]) for k in training)


def run_layout(parallel_kwargs: dict[str, Any], megatron_layout: str, gen_tp: int) -> dict[str, Any]:
    """One layout's rollouts, update and refit (see the module docstring)."""
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.generation import GenerationWorker
    from nemotron_plugins.rl.policy_worker import pack_policy_batch, policy_update
    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import destroy_distributed, init_distributed
    from nemotron_plugins.training.setup import build_optimizer

    parallel = ParallelConfig(**parallel_kwargs)
    init_distributed(parallel, seed=SEED)
    try:
        tokenizer = build_tiny_tokenizer()
        vocab = len(tokenizer)
        cfg = tiny_puzzle_config(vocab)
        config = recipe(parallel, megatron_layout, gen_tp)
        model = build_puzzle_model(cfg, parallel=parallel, seq_length=SEQ, perform_initialization=False)
        init_weights_layout_invariant_(model, seed=SEED)
        if parallel.pipeline_model_parallel_size > 1:
            model.config.pipeline_dtype = torch.float32
        policy = SimpleNamespace(module=model, model_config=cfg, tokenizer=tokenizer)
        worker = GenerationWorker.build(config, policy)
        ps = prompts(vocab)

        def rollouts() -> dict[str, Any]:
            greedy = worker.generate(ps, n=1, temperature=0.0, top_p=1.0, max_new_tokens=NEW_TOKENS, seed=3)
            sampled = worker.generate(ps, n=4, temperature=1.0, top_p=0.9, max_new_tokens=NEW_TOKENS, seed=3)
            return {"greedy": greedy, "sampled": sampled}

        out: dict[str, Any] = {
            "layout": (worker.layout.dp_size, worker.layout.dp_rank),
            "embedded": worker.embedded,
            "copy_matches_before": _copy_matches(worker.engine, model, cfg),
        }
        before = rollouts()
        sampled = before["sampled"]
        completions = sampled.completion_ids
        # Advantages from the completions themselves (the same on every layout that sampled the same tokens).
        scores = torch.tensor([float(sum(c) % 11) for c in completions])
        advantages = (scores - scores.mean()) / (scores.std() + 1e-6)
        batch = pack_policy_batch(
            [ps[i] for i in sampled.prompt_index], completions, sampled.logprobs, advantages, pad_id=0
        )
        ddp, optimizer = build_optimizer(config, model)
        out["metrics"] = policy_update(ddp, optimizer, batch, config, vocab_size=vocab)
        worker.refit(policy)
        out["copy_matches_after"] = _copy_matches(worker.engine, model, cfg)
        out["before"], out["after"] = before, rollouts()
        worker.close()
        return out
    finally:
        destroy_distributed()


def layouts_worker(rank: int, runs: dict[str, tuple[dict[str, Any], str, int, str]]) -> dict[str, Any]:
    """Each named ``(parallel, megatron_layout, generation TP, reference)`` run in turn, in two gloo processes."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        return {name: run_layout(kwargs, layout, gen_tp) for name, (kwargs, layout, gen_tp, _) in runs.items()}
    finally:
        torch.distributed.destroy_process_group()
