"""End-to-end CPU demo: SFT warm start on half-corrupted synthetic addition traces, then GRPO (math + think_format).

Run::

    python -m nemotron_plugins.rl.demo --out runs/grpo_demo

The SFT stage here is a minimal plain-PyTorch loop on the same :class:`~nemotron_plugins.rl.puzzle_policy.PuzzlePolicy`
the GRPO trainer uses (loss on the assistant tokens of ``sft_train.jsonl``); SYSTEM.md section 5 explains why the
traces are corrupted (it leaves headroom for RL). Prints held-out accuracy before / after GRPO (sampled at T=1 and
greedy, with the sample count) and the command that reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path


def run_sft(
    out: Path, *, steps: int, batch: int, lr: float, corrupt: float, n_train: int, n_heldout: int, seed: int
) -> Path:
    """Write the data, train the policy with SFT, save ``sft.pt``; returns its path."""
    import torch

    from nemotron_plugins.chat.render import render_chat
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.data.synthetic import ArithmeticConfig, write_synthetic_dataset
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.puzzle_policy import PuzzlePolicy

    data = out / "data"
    write_synthetic_dataset(
        data, n_train, n_heldout, seed, config=ArithmeticConfig(corrupt_fraction=corrupt, include_off=False)
    )
    tok = build_tiny_tokenizer()
    examples = []
    with (data / "sft_train.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            messages = [{"role": "system", "content": row["system_prompt"]}, *row["input"]]
            prompt = tok(render_chat(messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            answer = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            examples.append((prompt, answer))
    torch.manual_seed(seed)
    policy = PuzzlePolicy(tiny_puzzle_config(len(tok)))
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        chosen = [examples[rng.randrange(len(examples))] for _ in range(batch)]
        width = max(len(p) + len(a) for p, a in chosen)
        ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for r, (p, a) in enumerate(chosen):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
        logits = policy(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"[sft] step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)", flush=True
            )
    path = out / "sft.pt"
    torch.save(policy.state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run SFT then GRPO, print the before/after table and the reproduce command."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_plugins.rl.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/grpo_demo")
    parser.add_argument("--sft-steps", type=int, default=800)
    parser.add_argument("--sft-batch", type=int, default=64)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--corrupt", type=float, default=0.5)
    parser.add_argument("--grpo-steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-heldout", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from nemotron_plugins.rl.config import GRPOConfig
    from nemotron_plugins.rl.trainer import GRPOTrainConfig, run_grpo

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sft_path = out / "sft.pt"
    if not sft_path.exists():
        sft_path = run_sft(
            out,
            steps=args.sft_steps,
            batch=args.sft_batch,
            lr=args.sft_lr,
            corrupt=args.corrupt,
            n_train=args.n_train,
            n_heldout=args.n_heldout,
            seed=args.seed,
        )
    size = args.prompts * args.group
    config = GRPOTrainConfig(
        grpo=GRPOConfig(
            num_prompts_per_rollout=args.prompts,
            num_generations=args.group,
            global_batch_size=size,
            micro_batch_size=size,
            max_new_tokens=48,
            epsilon=0.2,
            beta=0.0,
            temperature=1.0,
            seed=args.seed,
        ),
        train_steps=args.grpo_steps,
        lr=args.lr,
        init_checkpoint=str(sft_path),
        data_dir=str(out / "data"),
        num_train_prompts=args.n_train,
        num_heldout_prompts=args.n_heldout,
        output_dir=str(out / "grpo"),
        torch_threads=args.threads,
        seed=args.seed,
    )
    result = run_grpo(config)
    wall = time.perf_counter() - start
    b, a = result.before, result.after
    if b and a:
        print(f"held-out n={int(a['n'])}  (T=1 sampled, 1 sample per prompt; greedy beside it)")
        for key in ("accuracy_sampled", "accuracy_greedy", "format_sampled", "format_greedy"):
            print(f"  {key:18s} before {b.get(key, float('nan')):.3f}  after {a.get(key, float('nan')):.3f}")
    print(
        f"wall time {wall:.0f}s; reproduce: python -m nemotron_plugins.rl.demo {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
