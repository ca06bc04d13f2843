"""Rollout speed of the embedded Megatron engine: KV cache vs recomputing the prefix every token.

Prints a table for the tiny Puzzle policy (16 prompts x 8 samples x 64 new tokens) and the largest gap between the
log-probs returned by cached decoding and a full forward pass over the same tokens (the reference).

    python benchmarks/rollout_kv_cache.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine
    from nemotron_plugins.rl.logprobs import token_logprobs
    from nemotron_plugins.runtime.distributed import distributed_context

    tok = build_tiny_tokenizer()
    rows = []
    with distributed_context():
        torch.manual_seed(0)
        model = build_puzzle_model(tiny_puzzle_config(len(tok), max_position_embeddings=256), device="cpu")
        prompts = [f"{a}+{b}=" for a, b in zip(range(10, 26), range(500, 516), strict=True)]
        groups = None
        for cache in (True, False):
            engine = MegatronRolloutEngine(
                model,
                tok,
                config=MegatronEngineConfig(max_batch_size=128, use_kv_cache=cache, eos_token_ids=(10**9,)),
            )
            start = time.perf_counter()
            out = engine.rollout(prompts, n=8, max_new_tokens=args.new_tokens, seed=0)
            seconds = time.perf_counter() - start
            tokens = sum(len(r.completion_ids) for g in out for r in g.rollouts)
            rows.append(("megatron engine, KV cache" if cache else "full recompute (reference)", seconds, tokens))
            groups = groups or out
        worst = 0.0
        for group in groups[:4]:
            for r in group.rollouts:
                ids = torch.tensor([r.prompt_ids + r.completion_ids])
                p = len(r.prompt_ids)
                with torch.no_grad():
                    logits = model.eval()(ids, torch.arange(ids.shape[1]).unsqueeze(0), None)
                ref = token_logprobs(logits[0, p - 1 : -1], ids[0, p:], vocab_size=len(tok))
                worst = max(worst, (ref - torch.tensor(r.logprobs)).abs().max().item())
    base = rows[1][1]
    print(f"{'engine':<30} {'seconds':>8} {'tokens/s':>9} {'speedup':>8}")
    for name, seconds, tokens in rows:
        print(f"{name:<30} {seconds:>8.2f} {tokens / seconds:>9.0f} {base / seconds:>7.2f}x")
    print(f"max |cached log-prob - full forward log-prob| = {worst:.2e}")


if __name__ == "__main__":
    main()
