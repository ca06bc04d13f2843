"""A synthetic verifiable-instruction task (IFEval-style), for the CPU demonstration of instruction-following RL.

Each prompt names three topic words (``Words: cat dog sun.``) and carries 1 to ``max_instructions`` instructions
that the real ``ifeval`` reward (:mod:`nemotron_plugins.rewards.ifeval`) checks, in its own ground-truth format
(``{"instruction_id_list": [...], "kwargs": [...]}``). The instruction types are chosen so a ~1M-parameter
character-level model can learn them (copying a word, dropping one, joining without commas, wrapping in quotes,
padding or trimming the word count, upper-casing words); the English-case checks are left out because they need
langdetect to call a few topic words English, which it often does not. The reply that obeys everything is the topic
words joined by ``", "`` and transformed instruction by instruction (:func:`render_reply`), for example::

    Words: cat dog sun. No commas. Include blue. End with 'bye now'.
    -> cat dog sun blue bye now

Every generated instruction set is checked with the ``ifeval`` reward: the obeying reply must score 1 on every
instruction and, for each instruction, the reply that disobeys only it must score 0 on it (otherwise the set is
drawn again), so each instruction is checkable and none is satisfied by accident.

:func:`write_instruction_task` writes, into one directory:

* ``sft.jsonl``: Post-Training-format SFT rows (reasoning off) whose replies obey each instruction only with
  probability ``obey_probability``, so the SFT policy leaves room for RL;
* ``prompts_train.jsonl`` / ``prompts_heldout.jsonl``: RL prompt rows (``messages``, ``ground_truth`` in the
  ``ifeval`` format, ``reward: "ifeval"`` so they route to that reward, ``category: "instruction_following"``).

Held-out prompts use topic-word sets that never occur in any training file. Command line::

    python -m nemotron_plugins.data.synthetic_instructions write DIR [--seed N] [--obey P] [--max-instructions K]
    python -m nemotron_plugins.data.synthetic_instructions score SAMPLES.jsonl   # {"completion", "ground_truth"}
    python -m nemotron_plugins.data.synthetic_instructions evaluate RECIPE --checkpoint DIR [--out FILE]

``score`` and ``evaluate`` report IFEval's prompt-level strict accuracy (all instructions of a prompt followed) and
instruction-level accuracy (followed instructions over all instructions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_plugins.data.synthetic import write_jsonl

SYSTEM = "detailed thinking off"
"""The reasoning-off system prompt (the task is answered without a think block)."""
TOPIC_WORDS = 3
"""Topic words per prompt."""
TOPICS: tuple[str, ...] = (
    "cat", "dog", "sun", "sky", "tree", "fish", "bird", "rain", "snow", "star",
    "lake", "hill", "road", "ship", "frog", "bear", "wolf", "leaf", "rock", "sand",
    "milk", "cake", "door", "lamp", "book", "bell", "kite", "drum", "nest", "wave",
)  # fmt: skip
"""Topic words (no word is a substring of another word of any list here, so keyword checks cannot match by
accident)."""
KEYWORDS: tuple[str, ...] = ("red", "blue", "green", "gold", "pink", "gray", "jade", "teal")
"""Words an instruction asks to include (never topic words)."""
START_WORDS: tuple[str, ...] = ("hello", "well", "yes", "okay")
"""Words a reply is asked to start with."""
END_PHRASES: tuple[str, ...] = ("the end", "bye now", "that is all", "done")
"""Phrases a reply is asked to end with."""

NO_COMMA = "punctuation:no_comma"
QUOTATION = "startend:quotation"
EXISTENCE = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
FREQUENCY = "keywords:frequency"
END = "startend:end_checker"
START = "startend:start_checker"
WORDS = "length_constraints:number_words"
CAPITALS = "change_case:capital_word_frequency"
TITLE = "detectable_format:title"

INSTRUCTION_IDS: tuple[str, ...] = (
    NO_COMMA, QUOTATION, EXISTENCE, FORBIDDEN, FREQUENCY, END, START, WORDS, CAPITALS, TITLE,
)  # fmt: skip
"""The ``ifeval`` instruction ids the task uses."""
_EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({START, TITLE}), frozenset({START, QUOTATION}))
"""Pairs that cannot be obeyed together (both want the reply's first characters)."""


@dataclass(slots=True)
class Instruction:
    """One instruction of a prompt: its ``ifeval`` id, its ``ifeval`` kwargs and its wording in the prompt."""

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(slots=True)
class Prompt:
    """A task prompt: topic words and instructions (in prompt order)."""

    topics: list[str]
    instructions: list[Instruction]

    def user_text(self) -> str:
        """The user turn."""
        return " ".join([f"Words: {' '.join(self.topics)}.", *(i.text for i in self.instructions)])

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (system toggle + user)."""
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.user_text()}]

    def ground_truth(self) -> dict[str, Any]:
        """The ``ifeval`` ground truth (IFEval's own row format)."""
        return {
            "instruction_id_list": [i.id for i in self.instructions],
            "kwargs": [dict(i.kwargs) for i in self.instructions],
        }


def _count_words(text: str) -> int:
    from nemotron_plugins.rewards.ifeval import count_words

    return count_words(text)


def render_reply(prompt: Prompt, obey: Callable[[str], bool] | None = None) -> str:
    """The reply to ``prompt`` that obeys the instructions ``obey(id)`` accepts (all when ``None``) and does the
    plain thing for the others (commas, no quotes, the keyword left out or said once, the forbidden word kept, no
    start word / end phrase / title, no padding, lower case; a disobeyed upper word bound adds words past it)."""
    by_id = {i.id: i for i in prompt.instructions}

    def wants(iid: str) -> bool:
        return iid in by_id and (obey is None or obey(iid))

    forbidden = by_id[FORBIDDEN].kwargs["forbidden_words"][0] if FORBIDDEN in by_id else None
    words = [w for w in prompt.topics if not (wants(FORBIDDEN) and w == forbidden)]
    fillers = [w for w in prompt.topics if w != forbidden] or list(prompt.topics)
    if EXISTENCE in by_id and wants(EXISTENCE):
        words += by_id[EXISTENCE].kwargs["keywords"]
    if FREQUENCY in by_id:
        kw = by_id[FREQUENCY].kwargs
        words += [kw["keyword"]] * (int(kw["frequency"]) if wants(FREQUENCY) else 1)
    start = by_id[START].kwargs["start_phrase"] if wants(START) else None
    end = by_id[END].kwargs["end_phrase"] if wants(END) else None
    title = f"<<{fillers[0]}>>" if wants(TITLE) else None

    def text(ws: list[str]) -> str:
        caps = int(by_id[CAPITALS].kwargs["capital_frequency"]) if wants(CAPITALS) else 0
        shown = [w.upper() if i < caps else w for i, w in enumerate(ws)]
        body = (" " if wants(NO_COMMA) else ", ").join(shown)
        body = " ".join(p for p in (title, start, body, end) if p)
        return f'"{body}"' if wants(QUOTATION) else body

    if WORDS in by_id:
        kw = by_id[WORDS].kwargs
        bound = int(kw["num_words"])
        padding = itertools.cycle(fillers)
        at_least = kw["relation"] == "at least"
        if at_least == wants(WORDS):  # obeyed "at least" or disobeyed "less than": pad up to / past the bound
            while _count_words(text(words)) < bound:
                words.append(next(padding))
            if not at_least:
                words.append(next(padding))
    return text(words)


def _draw_instruction(iid: str, topics: list[str], rng: random.Random, taken: set[str]) -> Instruction:
    if iid == NO_COMMA:
        return Instruction(iid, {}, "No commas.")
    if iid == QUOTATION:
        return Instruction(iid, {}, "Wrap it in double quotes.")
    if iid == EXISTENCE:
        word = rng.choice([k for k in KEYWORDS if k not in taken])
        taken.add(word)
        return Instruction(iid, {"keywords": [word]}, f"Include {word}.")
    if iid == FREQUENCY:
        word = rng.choice([k for k in KEYWORDS if k not in taken])
        taken.add(word)
        n = rng.choice((2, 3))
        return Instruction(iid, {"keyword": word, "frequency": n, "relation": "at least"}, f"Say {word} {n} times.")
    if iid == FORBIDDEN:
        word = rng.choice(topics)
        return Instruction(iid, {"forbidden_words": [word]}, f"Avoid {word}.")
    if iid == END:
        phrase = rng.choice(END_PHRASES)
        return Instruction(iid, {"end_phrase": phrase}, f"End with '{phrase}'.")
    if iid == START:
        word = rng.choice(START_WORDS)
        return Instruction(iid, {"start_phrase": word}, f"Start with '{word}'.")
    if iid == CAPITALS:
        n = rng.choice((1, 2))
        return Instruction(
            iid,
            {"capital_frequency": n, "capital_relation": "at least"},
            f"At least {n} word{'s' if n > 1 else ''} in CAPS.",
        )
    if iid == TITLE:
        return Instruction(iid, {}, "Add a <<title>>.")
    if iid == WORDS:
        return Instruction(iid, {"num_words": 1, "relation": "at least"}, "")  # bound set by _set_word_bound
    raise ValueError(f"unknown instruction id {iid!r}; the task uses {INSTRUCTION_IDS}")


def _set_word_bound(prompt: Prompt, rng: random.Random) -> None:
    """Fix the word-count instruction's bound from the reply that obeys the other instructions."""
    inst = next((i for i in prompt.instructions if i.id == WORDS), None)
    if inst is None:
        return
    plain = _count_words(render_reply(prompt, lambda iid: iid != WORDS))
    if rng.random() < 0.5:
        n = plain + rng.choice((2, 3))
        inst.kwargs, inst.text = {"num_words": n, "relation": "at least"}, f"At least {n} words."
    else:
        n = plain + 1
        inst.kwargs, inst.text = {"num_words": n, "relation": "less than"}, f"Fewer than {n} words."


def check_prompt(prompt: Prompt) -> None:
    """Check with the real ``ifeval`` reward that the obeying reply follows every instruction and that disobeying any
    one instruction breaks that instruction (it may break another too: a kept forbidden word can overrun a word
    bound).

    Raises:
        ValueError: Naming the instruction and the reply that failed.
    """
    from nemotron_plugins.rewards.base import RewardSample
    from nemotron_plugins.rewards.ifeval import IFEvalReward

    reward = IFEvalReward(aggregate="fraction")
    gt = prompt.ground_truth()
    full = render_reply(prompt)
    result = reward.score_sample(RewardSample(completion=full, ground_truth=gt))
    if not result.ok or result.score != 1.0:
        raise ValueError(f"{prompt.user_text()!r}: the obeying reply {full!r} scores {result}")
    for k, inst in enumerate(prompt.instructions):
        reply = render_reply(prompt, lambda iid, skip=inst.id: iid != skip)
        res = reward.score_sample(RewardSample(completion=reply, ground_truth=gt))
        values = list(res.components.values())
        if values[k] != 0.0:
            raise ValueError(f"{prompt.user_text()!r}: disobeying {inst.id} gives {reply!r}, which still follows it")


def draw_prompt(topics: Sequence[str], rng: random.Random, *, max_instructions: int) -> Prompt:
    """Draw a checked prompt on ``topics`` with 1 to ``max_instructions`` compatible instructions."""
    if not 1 <= max_instructions <= len(INSTRUCTION_IDS) - len(_EXCLUSIVE):
        raise ValueError(
            f"max_instructions must be in [1, {len(INSTRUCTION_IDS) - len(_EXCLUSIVE)}], got {max_instructions}"
        )
    for _ in range(100):
        k = rng.randint(1, max_instructions)
        ids = rng.sample(INSTRUCTION_IDS, k)
        if any(pair <= set(ids) for pair in _EXCLUSIVE):
            continue
        taken: set[str] = set()
        prompt = Prompt(list(topics), [_draw_instruction(i, list(topics), rng, taken) for i in ids])
        _set_word_bound(prompt, rng)
        try:
            check_prompt(prompt)
        except ValueError:
            continue
        return prompt
    raise RuntimeError(f"no checkable instruction set drawn for topics {list(topics)} in 100 tries")


def sample_reply(prompt: Prompt, obey_probability: float, rng: random.Random) -> str:
    """A reply that obeys each instruction independently with probability ``obey_probability``."""
    obeyed = {i.id for i in prompt.instructions if rng.random() < obey_probability}
    return render_reply(prompt, obeyed.__contains__)


def _topic_sets(rng: random.Random) -> list[tuple[str, ...]]:
    sets = list(itertools.combinations(TOPICS, TOPIC_WORDS))
    rng.shuffle(sets)
    return sets


def _sft_row(prompt: Prompt, reply: str) -> dict[str, Any]:
    return {
        "input": [{"role": "user", "content": prompt.user_text()}],
        "output": reply,
        "reasoning": "off",
        "system_prompt": SYSTEM,
        "category": "instruction_following",
        "license": "cc-by-4.0",
        "generator": "nemotron_plugins.data.synthetic_instructions",
        "used_in_training": "yes",
        "version": "1",
    }


def _prompt_row(prompt: Prompt, index: int, split: str) -> dict[str, Any]:
    return {
        "id": f"ifrl-{split}-{index:06d}",
        "messages": prompt.messages(),
        "ground_truth": prompt.ground_truth(),
        "reward": "ifeval",
        "reasoning": "off",
        "category": "instruction_following",
    }


def write_instruction_task(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sft_rows: int = 8000,
    train_prompts: int = 2000,
    heldout_prompts: int = 500,
    max_instructions: int = 4,
    obey_probability: float = 0.5,
) -> dict[str, str]:
    """Write the task's files (byte-identical for the same arguments); returns ``name -> path``.

    Args:
        out_dir: Directory to write into (created).
        seed: Seed of every random choice.
        sft_rows: SFT rows (``sft.jsonl``).
        train_prompts: RL training prompts (``prompts_train.jsonl``).
        heldout_prompts: Held-out prompts (``prompts_heldout.jsonl``); their topic-word sets are never trained on.
        max_instructions: Most instructions per prompt (each prompt draws 1 to this many).
        obey_probability: Probability that an SFT reply obeys each of its prompt's instructions.
    """
    if not 0.0 <= obey_probability <= 1.0:
        raise ValueError(f"obey_probability must be in [0, 1], got {obey_probability}")
    rng = random.Random(seed)
    sets = _topic_sets(rng)
    if heldout_prompts >= len(sets):
        raise ValueError(f"heldout_prompts must be below the {len(sets)} topic-word sets, got {heldout_prompts}")
    heldout_sets, train_sets = sets[:heldout_prompts], sets[heldout_prompts:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def train_prompt(i: int) -> Prompt:
        return draw_prompt(train_sets[i % len(train_sets)], rng, max_instructions=max_instructions)

    sft = []
    for i in range(sft_rows):
        prompt = train_prompt(i)
        sft.append(_sft_row(prompt, sample_reply(prompt, obey_probability, rng)))
    files = {
        "sft": sft,
        "prompts_train": [_prompt_row(train_prompt(sft_rows + i), i, "train") for i in range(train_prompts)],
        "prompts_heldout": [
            _prompt_row(draw_prompt(s, rng, max_instructions=max_instructions), i, "heldout")
            for i, s in enumerate(heldout_sets)
        ],
    }
    paths = {}
    for name, rows in files.items():
        path = out / f"{name}.jsonl"
        write_jsonl(path, rows, sort_keys=True, ensure_ascii=True)
        paths[name] = str(path)
    return paths


@dataclass(slots=True)
class Accuracy:
    """IFEval's strict accuracies over a set of replies."""

    n: int
    """Replies scored."""
    prompt_level: float
    """Share of replies that follow all their instructions."""
    instruction_level: float
    """Followed instructions over all instructions."""
    instructions: int
    """Instructions scored."""
    per_instruction: dict[str, float]
    """Instruction id -> share of its occurrences followed."""


def score_replies(replies: Sequence[str], ground_truths: Sequence[Any]) -> Accuracy:
    """Prompt-level and instruction-level strict accuracy of ``replies`` with the ``ifeval`` reward.

    Raises:
        ValueError: A reply the reward could not score (named by index), or no replies.
    """
    from nemotron_plugins.rewards.base import RewardSample
    from nemotron_plugins.rewards.ifeval import IFEvalReward

    if not replies or len(replies) != len(ground_truths):
        raise ValueError(f"need as many replies as ground truths (>0), got {len(replies)} and {len(ground_truths)}")
    reward = IFEvalReward(aggregate="fraction")
    results = reward.score(
        [RewardSample(completion=r, ground_truth=g) for r, g in zip(replies, ground_truths, strict=True)]
    )
    strict, followed, total = 0, 0.0, 0
    per: dict[str, list[float]] = {}
    for i, res in enumerate(results):
        if not res.ok:
            raise ValueError(f"reply {i}: the ifeval reward gave no score ({res.status}: {res.message})")
        values = list(res.components.values())
        strict += all(v == 1.0 for v in values)
        followed += sum(values)
        total += len(values)
        for key, v in res.components.items():
            per.setdefault(key.split("#")[0], []).append(v)
    return Accuracy(
        n=len(results),
        prompt_level=strict / len(results),
        instruction_level=followed / total,
        instructions=total,
        per_instruction={k: sum(v) / len(v) for k, v in sorted(per.items())},
    )


def format_accuracy(acc: Accuracy, label: str) -> str:
    """One report line (plus one per instruction id)."""
    lines = [
        f"{label}: n={acc.n} prompt-level strict {acc.prompt_level:.3f}, instruction-level "
        f"{acc.instruction_level:.3f} ({acc.instructions} instructions)"
    ]
    lines += [f"  {k}: {v:.3f}" for k, v in acc.per_instruction.items()]
    return "\n".join(lines)


def evaluate_checkpoint(
    recipe: str,
    checkpoint: str,
    *,
    num_prompts: int | None = None,
    greedy: bool = False,
    out_path: str | None = None,
    overrides: Sequence[str] = (),
) -> Accuracy:
    """Generate one reply per held-out prompt of ``recipe`` (its ``data.eval_path``) from the weights in
    ``checkpoint`` and score them (:func:`score_replies`).

    Decoding is the RL trainer's held-out evaluation: the recipe's generation engine and sampling settings
    (temperature ``generation.temperature``, or greedy), seed ``config.seed + 17``.

    Args:
        recipe: Registered recipe name (an RL recipe: ``task`` ``grpo`` / ``rloo``).
        checkpoint: Checkpoint directory the policy starts from (a run's ``checkpoints``).
        num_prompts: Held-out prompts (``None``: ``evaluation.num_samples``).
        greedy: Arg-max decoding instead of sampling.
        out_path: Write ``{"id", "completion", "ground_truth"}`` rows here.
        overrides: ``key=value`` recipe overrides.
    """
    import torch

    from nemotron_plugins.data.sources import load_prompt_rows
    from nemotron_plugins.launch.build import build_recipe
    from nemotron_plugins.launch.recipe_config import resolve_paths
    from nemotron_plugins.rl.controller import decode_completions, encode_prompts
    from nemotron_plugins.rl.generation import GenerationWorker
    from nemotron_plugins.rl.policy_worker import MegatronPolicyWorker
    from nemotron_plugins.runtime.distributed import ensure_distributed

    config = build_recipe(recipe, list(overrides))
    config.init_from_recipe = None
    config.init_checkpoint = checkpoint
    config.checkpoint.load_dir = None
    resolve_paths(config)
    n = num_prompts if num_prompts is not None else config.evaluation.num_samples
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    with ensure_distributed(config.parallel, seed=config.seed):
        _, rows = load_prompt_rows(config.data, config.output_dir, num_heldout=n)
        if len(rows) < n:
            raise ValueError(f"data.eval_path {config.data.eval_path} has {len(rows)} prompts, fewer than {n}")
        policy = MegatronPolicyWorker(config)
        generation = GenerationWorker.build(config, policy)
        gen = config.generation
        samples = generation.generate(
            encode_prompts(policy.tokenizer, rows, template=config.data.chat_template),
            n=1,
            temperature=0.0 if greedy else gen.temperature,
            top_p=1.0 if greedy else gen.top_p,
            max_new_tokens=config.evaluation.max_new_tokens or gen.max_new_tokens,
            seed=config.seed + 17,
        )
        texts = decode_completions(policy.tokenizer, samples.completion_ids)
    ground_truths = [row["ground_truth"] for row in rows]
    if out_path:
        write_jsonl(
            Path(out_path),
            [
                {"id": r["id"], "completion": t, "ground_truth": r["ground_truth"]}
                for r, t in zip(rows, texts, strict=True)
            ],
            sort_keys=True,
            ensure_ascii=True,
        )
    return score_replies(texts, ground_truths)


def main(argv: Sequence[str] | None = None) -> int:
    """``write DIR``, ``score FILE`` or ``evaluate RECIPE --checkpoint DIR`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_plugins.data.synthetic_instructions")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write the task's files into DIR")
    w.add_argument("out_dir")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--obey", type=float, default=0.5, help="probability an SFT reply obeys each instruction")
    w.add_argument("--max-instructions", type=int, default=4)
    s = sub.add_parser("score", help="strict accuracies of {completion, ground_truth} rows (JSONL)")
    s.add_argument("path")
    e = sub.add_parser("evaluate", help="generate held-out replies from a checkpoint and score them")
    e.add_argument("recipe")
    e.add_argument("--checkpoint", required=True, help="checkpoint directory (a run's checkpoints/)")
    e.add_argument("--num-prompts", type=int, default=None)
    e.add_argument("--greedy", action="store_true")
    e.add_argument("--out", default=None, help="write the replies here (JSONL)")
    e.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also follow the options
        if args.command != "evaluate" or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "write":
        paths = write_instruction_task(
            args.out_dir, seed=args.seed, obey_probability=args.obey, max_instructions=args.max_instructions
        )
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    if args.command == "score":
        rows = []
        for line_no, line in enumerate(Path(args.path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((str(row["completion"]), row["ground_truth"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(
                    f"{args.path}:{line_no}: need a JSON object with completion and ground_truth: {exc}"
                ) from exc
        acc = score_replies([r for r, _ in rows], [g for _, g in rows])
        print(format_accuracy(acc, args.path))
        return 0
    acc = evaluate_checkpoint(
        args.recipe,
        args.checkpoint,
        num_prompts=args.num_prompts,
        greedy=args.greedy,
        out_path=args.out,
        overrides=args.overrides,
    )
    print(format_accuracy(acc, f"{args.recipe} @ {args.checkpoint} ({'greedy' if args.greedy else 'sampled'})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
