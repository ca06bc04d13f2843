"""A synthetic preference task with a verifiable rule, for the CPU demonstrations of the reward model and RPO.

The prompt asks for six lowercase letters with as many vowels as possible (and carries six random "seed" letters,
so prompts differ and held-out prompts are new); a reply is better the more vowels among its first six characters
(:func:`rule_score`, 0-6). The rule is the ground truth behind the reward model: a policy can be scored on it
without any model. (A first version asked for letters taken from the prompt's own six; a ~1M-parameter reward model
stayed at chance on it within the CPU budget, so the rule was made local to the reply.)

:func:`write_preference_task` writes, into one directory:

* ``sft.jsonl``: Post-Training-format SFT rows whose replies follow the rule only partly (each row draws a rule
  probability uniformly from [0, 1] and each letter is a vowel with that probability), so the SFT policy's samples
  have a spread of quality for RPO to improve on;
* ``pairs_train.jsonl`` / ``pairs_heldout.jsonl``: HelpSteer-style preference pairs (two such replies with
  different scores; ``chosen_reward`` / ``rejected_reward`` = their rule scores);
* ``prompts_train.jsonl`` / ``prompts_heldout.jsonl``: RL prompt rows (``messages``, ``ground_truth`` = the seed
  letters) for online RPO.

Held-out files use seed letters that never occur in any training file. Command line::

    python -m nemotron_plugins.preference.synthetic write DIR [--seed N]
    python -m nemotron_plugins.preference.synthetic score SAMPLES.jsonl   # mean rule score of {"completion"} rows
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

from nemotron_plugins.data.synthetic import write_jsonl

LETTERS = 6
"""Letters per prompt and per reply."""
SYSTEM = "detailed thinking off"
"""The reasoning-off system prompt (the task is answered without a think block)."""


VOWELS = "aeiou"
"""The letters the rule rewards."""


def prompt_text(letters: str) -> str:
    """The user turn of a prompt (``letters``: the prompt's seed letters)."""
    return f"Write {LETTERS} letters, as many vowels as you can. Seed: {letters}"


def prompt_messages(letters: str) -> list[dict[str, str]]:
    """The prompt as chat messages (system toggle + user)."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_text(letters)}]


def rule_score(reply: str) -> int:
    """How many of the reply's first six characters are vowels (0-6); a shorter reply counts only what it has."""
    return sum(ch in VOWELS for ch in reply.strip()[:LETTERS])


def sample_reply(p_follow: float, rng: random.Random) -> str:
    """Six letters, each a vowel with probability ``p_follow``, else a consonant."""
    consonants = [c for c in string.ascii_lowercase if c not in VOWELS]
    return "".join(rng.choice(VOWELS) if rng.random() < p_follow else rng.choice(consonants) for _ in range(LETTERS))


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
        a, b = (sample_reply(rng.random(), rng) for _ in range(2))
        sa, sb = rule_score(a), rule_score(b)
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
        "output": sample_reply(rng.random(), rng),
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
        write_jsonl(path, rows, sort_keys=True, ensure_ascii=True)
        paths[name] = str(path)
    return paths


def mean_rule_score(samples: Sequence[dict[str, Any]]) -> float:
    """Mean :func:`rule_score` / 6 over ``{"completion": reply}`` samples."""
    if not samples:
        raise ValueError("no samples to score")
    return sum(rule_score(str(s["completion"])) for s in samples) / (LETTERS * len(samples))


def main(argv: Sequence[str] | None = None) -> int:
    """``write DIR`` or ``score FILE`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_plugins.preference.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the task's files into DIR")
    w.add_argument("out_dir")
    w.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="mean rule score of evaluation samples (JSONL with completion, optional mode)")
    s.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "write":
        for name, path in write_preference_task(args.out_dir, seed=args.seed).items():
            print(f"{name}: {path}")
        return 0
    rows = [json.loads(line) for line in Path(args.path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for mode in sorted({str(r.get("mode", "all")) for r in rows}):
        part = [r for r in rows if str(r.get("mode", "all")) == mode]
        print(f"{mode}: {len(part)} samples, mean rule score (vowel share) {mean_rule_score(part):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
