"""A synthetic preference task with a verifiable rule, for the CPU demonstrations of the reward model and RPO.

The prompt gives six distinct lowercase letters; a reply is six lowercase letters, and it is better the more of its
letters come from the prompt (:func:`rule_score`: the count, 0-6). A reward model has to compare the reply against
the prompt to learn the preference (the letter sets change from prompt to prompt), and a policy can be scored on it
without any model (the rule is the ground truth behind the reward model).

:func:`write_preference_task` writes, into one directory:

* ``sft.jsonl``: Post-Training-format SFT rows whose replies follow the rule only partly (each row draws a rule
  probability uniformly from [0, 1] and each letter is taken from the prompt with that probability), so the SFT
  policy's samples have a spread of quality for RPO to improve on;
* ``pairs_train.jsonl`` / ``pairs_heldout.jsonl``: HelpSteer-style preference pairs (two such replies with
  different scores; ``chosen_reward`` / ``rejected_reward`` = their rule scores);
* ``prompts_train.jsonl`` / ``prompts_heldout.jsonl``: RL prompt rows (``messages``, ``ground_truth`` = the
  letters) for online RPO.

Held-out files use letter sets that never occur in any training file. Command line::

    python -m nemotron_plugins.preference.synthetic write DIR [--seed N]
    python -m nemotron_plugins.preference.synthetic score SAMPLES.jsonl   # mean rule score of {"prompt_letters", "reply"}
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LETTERS = 6
"""Letters per prompt and per reply."""
SYSTEM = "detailed thinking off"
"""The reasoning-off system prompt (the task is answered without a think block)."""


def prompt_text(letters: str) -> str:
    """The user turn of a prompt."""
    return f"Write {LETTERS} letters using only: {letters}"


def prompt_messages(letters: str) -> list[dict[str, str]]:
    """The prompt as chat messages (system toggle + user)."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_text(letters)}]


def rule_score(letters: str, reply: str) -> int:
    """How many of the reply's first six characters are letters of the prompt (0-6); a shorter reply counts only
    what it has."""
    allowed = set(letters)
    return sum(ch in allowed for ch in reply.strip()[:LETTERS])


def sample_reply(letters: str, p_follow: float, rng: random.Random) -> str:
    """Six letters, each from ``letters`` with probability ``p_follow``, else from the other letters."""
    others = [c for c in string.ascii_lowercase if c not in letters]
    return "".join(rng.choice(letters) if rng.random() < p_follow else rng.choice(others) for _ in range(LETTERS))


def _letter_sets(n: int, rng: random.Random, exclude: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        key = "".join(sorted(rng.sample(string.ascii_lowercase, LETTERS)))
        if key not in seen:
            seen.add(key)
            out.append("".join(rng.sample(key, LETTERS)))  # shown in a random order
    return out


def _pair(letters: str, rng: random.Random) -> dict[str, Any]:
    while True:
        a, b = (sample_reply(letters, rng.random(), rng) for _ in range(2))
        sa, sb = rule_score(letters, a), rule_score(letters, b)
        if sa != sb:
            break
    (chosen, sc), (rejected, sr) = sorted(((a, sa), (b, sb)), key=lambda t: -t[1])
    return {
        "prompt": prompt_messages(letters),
        "chosen": chosen,
        "rejected": rejected,
        "chosen_reward": float(sc),
        "rejected_reward": float(sr),
    }


def _sft_row(letters: str, rng: random.Random) -> dict[str, Any]:
    return {
        "input": [{"role": "user", "content": prompt_text(letters)}],
        "output": sample_reply(letters, rng.random(), rng),
        "reasoning": "off",
        "system_prompt": SYSTEM,
        "category": "chat",
        "license": "cc-by-4.0",
        "generator": "nemotron_plugins.preference.synthetic",
        "used_in_training": "yes",
        "version": "1",
    }


def _prompt_row(letters: str, index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"letters-{split}-{index:06d}",
        "messages": prompt_messages(letters),
        "ground_truth": letters,
        "reasoning": "off",
        "category": "chat",
    }


def _write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def write_preference_task(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sft_rows: int = 4000,
    train_pairs: int = 4000,
    heldout_pairs: int = 500,
    train_prompts: int = 2000,
    heldout_prompts: int = 500,
) -> dict[str, str]:
    """Write the task's files (byte-identical for the same arguments); returns ``name -> path``."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heldout_sets = _letter_sets(heldout_pairs + heldout_prompts, rng, set())
    excluded = {"".join(sorted(s)) for s in heldout_sets}
    train_sets = _letter_sets(max(sft_rows, train_pairs, train_prompts), rng, excluded)
    files = {
        "sft": [_sft_row(train_sets[i % len(train_sets)], rng) for i in range(sft_rows)],
        "pairs_train": [_pair(train_sets[i], rng) for i in range(train_pairs)],
        "pairs_heldout": [_pair(heldout_sets[i], rng) for i in range(heldout_pairs)],
        "prompts_train": [_prompt_row(train_sets[i], i, "train") for i in range(train_prompts)],
        "prompts_heldout": [
            _prompt_row(heldout_sets[heldout_pairs + i], i, "heldout") for i in range(heldout_prompts)
        ],
    }
    paths = {}
    for name, rows in files.items():
        path = out / f"{name}.jsonl"
        _write(path, rows)
        paths[name] = str(path)
    return paths


def mean_rule_score(samples: Sequence[dict[str, Any]]) -> float:
    """Mean :func:`rule_score` / 6 over ``{"ground_truth": letters, "completion": reply}`` samples."""
    if not samples:
        raise ValueError("no samples to score")
    return sum(rule_score(str(s["ground_truth"]), str(s["completion"])) for s in samples) / (LETTERS * len(samples))


def main(argv: Sequence[str] | None = None) -> int:
    """``write DIR`` or ``score FILE`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_plugins.preference.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the task's files into DIR")
    w.add_argument("out_dir")
    w.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="mean rule score of evaluation samples (JSONL with ground_truth, completion)")
    s.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "write":
        for name, path in write_preference_task(args.out_dir, seed=args.seed).items():
            print(f"{name}: {path}")
        return 0
    rows = [json.loads(line) for line in Path(args.path).read_text(encoding="utf-8").splitlines() if line.strip()]
    print(f"{len(rows)} samples, mean rule score {mean_rule_score(rows):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
