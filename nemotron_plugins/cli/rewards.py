"""``nemotron-plugins rewards``: score JSONL completions with a registered reward, list rewards.

Input lines: ``{"completion": str, "ground_truth": any, "prompt"?: str | [messages], "metadata"?: {...}}``.
Output: one JSON line per input line, in input order: ``{"score", "status", "components", "message"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from nemotron_plugins.cli.common import fail

_ALLOWED_KEYS = {"completion", "ground_truth", "prompt", "metadata"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``rewards`` group."""
    parser = subparsers.add_parser("rewards", help="score completions with reward functions")
    sub = parser.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    score = sub.add_parser("score", help="score a JSONL file (or stdin) with a reward; writes JSONL")
    score.add_argument(
        "--reward",
        required=True,
        help='a registered reward name (see "rewards list") or a JSON spec, e.g. '
        '\'{"gate": ["think_format", "math"]}\'',
    )
    score.add_argument("--options", default=None, help="JSON object of keyword options for a named reward")
    score.add_argument("--input", default="-", help="input JSONL file ('-' or omitted: stdin)")
    score.add_argument("--output", default="-", help="output JSONL file ('-' or omitted: stdout)")
    score.add_argument("--workers", type=int, default=0, help="worker processes (0: score in this process)")
    score.add_argument("--timeout", type=float, default=10.0, help="per-sample time bound with --workers (seconds)")
    score.add_argument("--batch-size", type=int, default=256, help="samples scored per call (output is streamed)")
    score.set_defaults(func=run_score)
    listing = sub.add_parser("list", help="list the registered rewards")
    listing.set_defaults(func=run_list)


def parse_input_line(line: str, lineno: int, source: str) -> Any:
    """One input line as a :class:`~nemotron_plugins.rewards.base.RewardSample`; exits with an error naming the
    line when it is malformed."""
    from nemotron_plugins.rewards.base import RewardSample

    where = f"{source} line {lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        fail(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        fail(f"{where}: expected a JSON object with 'completion', got {type(obj).__name__}")
    unknown = set(obj) - _ALLOWED_KEYS
    if unknown:
        fail(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_KEYS)}")
    completion = obj.get("completion")
    if not isinstance(completion, str):
        fail(f"{where}: 'completion' must be a string, got {type(completion).__name__}")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str | list):
        fail(f"{where}: 'prompt' must be a string or a list of chat messages, got {type(prompt).__name__}")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        fail(f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    return RewardSample(completion=completion, ground_truth=obj.get("ground_truth"), prompt=prompt, metadata=metadata)


def _read_samples(stream: TextIO, source: str) -> list[Any]:
    samples = []
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        samples.append(parse_input_line(line, lineno, source))
    return samples


def _build(args: argparse.Namespace) -> Any:
    from nemotron_plugins.registry import PluginError
    from nemotron_plugins.rewards.base import RewardSpecError, build_reward

    spec: Any = args.reward
    if spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            fail(f"--reward: not a valid JSON spec: {exc}")
    options: dict[str, Any] = {}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            fail(f"--options: not valid JSON: {exc}")
        if not isinstance(options, dict):
            fail("--options must be a JSON object")
        if not isinstance(spec, str):
            fail("--options applies to a named --reward; put options for a spec inside the spec")
    try:
        reward = build_reward(spec, **options)
    except (RewardSpecError, PluginError, ValueError) as exc:
        fail(f"--reward: {exc}")
    if args.workers < 0:
        fail(f"--workers must be >= 0, got {args.workers}")
    if args.workers > 0:
        from nemotron_plugins.rewards.pool import PooledReward

        if args.timeout <= 0:
            fail(f"--timeout must be > 0, got {args.timeout}")
        reward = PooledReward(reward, workers=args.workers, timeout_s=args.timeout)
    return reward


def run_score(args: argparse.Namespace) -> int:
    """Score the input lines and write one JSON line per input, in order."""
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input == "-":
        samples = _read_samples(sys.stdin, "stdin")
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                samples = _read_samples(f, args.input)
        except OSError as exc:
            fail(f"--input: cannot read {args.input}: {exc.strerror}")
    reward = _build(args)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        with reward:
            for start in range(0, len(samples), args.batch_size):
                for result in reward.score(samples[start : start + args.batch_size]):
                    out.write(json.dumps(result.to_dict()) + "\n")
                out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the registered rewards."""
    from nemotron_plugins.registry import REWARDS

    for entry in REWARDS.entries():
        print(f"{entry.name:<14} {entry.target_path}")
    return 0
