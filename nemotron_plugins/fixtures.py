"""Real-format inputs for end-to-end runs on a CPU: a nemotron-nas checkpoint, a BPE tokenizer, Post-Training data.

Public API::

    write_fixtures(out_dir, *, seed=0) -> FixturePaths            # everything below, plus fixture.json
    write_fixture_checkpoint(out_dir, *, seed=0, dtype="bfloat16") -> Path
    build_fixture_tokenizer() -> transformers.PreTrainedTokenizerFast
    fixture_model_config(vocab_size) -> PuzzleModelConfig
    write_fixture_data(out_dir, *, seed=0) -> dict[str, Any]      # files + expected bad-row counts

The command line: ``nemotron-plugins fixtures write DIR [--seed N]``.

What is written (``DIR/``)::

    checkpoint/                  a Hugging Face nemotron-nas (DeciLM) checkpoint directory
      config.json                architectures ["DeciLMForCausalLM"], model_type "nemotron-nas", 8 block_configs
      model-0000k-of-0000n.safetensors, model.safetensors.index.json      bf16, ~17M parameters
      tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja
      generation_config.json
    data/sft/{math,code,chat}.jsonl          SFT rows, one file per category (as the dataset's SFT/<category>/)
    data/sft_parquet/{math,code,chat}.parquet   the same rows as parquet (without the rows JSON cannot hold)
    data/sft_dataset/            the parquet rows as a ``datasets.DatasetDict`` saved to disk, one split per category
    data/rl/{train,validation}.jsonl (+ data/rl_parquet/*.parquet)  RL prompts with ground truth and reward
    data/rl/bad_rows.jsonl       RL prompt rows the loader must reject (no ground truth, unknown reward, bad JSON)
    fixture.json                 paths, sizes, seed, and the bad rows each file holds, by reason

The architecture has every block kind the Puzzle models use: GQA with ``n_heads_in_group`` 1, 2 and 4 (8, 4 and 2
KV heads of 8 query heads, all divisible by TP=2), an attention replaced by a linear layer, no-op attentions, SwiGLU
FFNs with ``ffn_mult`` 1.3125 / 2.625 / 5.25 (widths 512 / 1024 / 1792 at hidden 512), a linear FFN, no-op FFNs and
one fully no-op layer. Weights are drawn from ``N(0, 0.02)`` (norm weights ``1 + N(0, 0.02)``) with a generator
seeded by ``seed``.

The tokenizer is a byte-level BPE trained here with the ``tokenizers`` library on a fixed, generated corpus (the
same for every seed; deterministic), with the Llama-3 control tokens as special tokens and ``<think>`` /
``</think>`` as single (non-special) tokens, like the Llama-Nemotron tokenizer. It encodes like Llama-3's (a
``<|begin_of_text|>`` is prepended unless ``add_special_tokens=False``) and carries the ``llama-nemotron-super`` chat
template of our registry. ``transformers.AutoTokenizer.from_pretrained(DIR / "checkpoint")`` loads it offline.

Data rows follow :mod:`nemotron_plugins.data.rows` (``input``, ``output``, ``reasoning``, ``system_prompt``,
``category``, ``license``, ``generator``, ``used_in_training``, ``version``): synthetic arithmetic (math),
templated Python functions (code) and word games, some multi-turn (chat), each problem as a reasoning-on row with a
``<think>`` trace and a reasoning-off row. A few deliberately bad rows sit in ``math`` and ``chat``; ``fixture.json``
lists them per file as ``{reason: count}`` using the reason codes of :data:`nemotron_plugins.data.report.SKIP_REASONS`.
RL prompt rows have the same ``input`` / ``system_prompt`` / ``reasoning`` / ``category`` columns plus ``id``,
``ground_truth`` and ``reward`` (the registered reward that scores them): additions scored by ``math`` (category
``math``, three in four) and multiple-choice additions scored by ``mcq`` (category ``science``, as the dataset
files its MCQs), so ``data.splits=[math]`` selects the ``math``-only rows. ``train`` / ``validation`` are clean;
``bad_rows.jsonl`` holds one row per problem (listed in ``fixture.json`` under ``rl_bad_rows``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from nemotron_plugins.puzzle.block_config import PuzzleModelConfig

__all__ = [
    "FIXTURE_SPECIAL_TOKENS",
    "FixturePaths",
    "build_fixture_tokenizer",
    "fixture_model_config",
    "write_fixture_checkpoint",
    "write_fixture_data",
    "write_fixtures",
]

FIXTURE_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|finetune_right_pad_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
"""Special tokens of the fixture tokenizer, ids 0..5 in this order (pad first, as the tiny tokenizer has it)."""
THINK_TOKENS: tuple[str, str] = ("<think>", "</think>")
TOKENIZER_VOCAB_SIZE = 4096
"""Target size of the BPE vocabulary (the trainer may stop a little short of it; think tags come on top)."""
GENERATOR = "nemotron_plugins.fixtures"
VERSION = "fixture-v1"
CATEGORIES: tuple[str, ...] = ("math", "code", "chat")
MAX_SHARD_SIZE = "10MB"


@dataclass(frozen=True, kw_only=True, slots=True)
class FixturePaths:
    """Where :func:`write_fixtures` wrote what."""

    root: Path
    """The output directory."""
    checkpoint: Path
    """HF checkpoint directory (weights, config, tokenizer, generation config): ``model.checkpoint``."""
    sft: dict[str, Path]
    """SFT JSONL file per category (``math``, ``code``, ``chat``)."""
    sft_parquet: dict[str, Path]
    """SFT parquet file per category (empty when pyarrow is not installed)."""
    sft_dataset: Path | None
    """``save_to_disk`` directory with one split per category (``None`` without the ``datasets`` package)."""
    rl: dict[str, Path]
    """RL prompt JSONL per split (``train``, ``validation``)."""
    rl_parquet: dict[str, Path]
    """RL prompt parquet per split (empty without pyarrow)."""
    manifest: Path
    """``fixture.json``: all of the above, sizes and the expected bad-row counts."""

    @property
    def sft_dir(self) -> Path:
        """Directory of the SFT JSONL files (``data.path`` for all categories)."""
        return self.root / "data" / "sft"

    @property
    def tokenizer(self) -> Path:
        """Tokenizer directory (the checkpoint directory)."""
        return self.checkpoint


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def fixture_model_config(vocab_size: int) -> PuzzleModelConfig:
    """The fixture's nemotron-nas architecture (decilm field style), 8 layers at hidden 512.

    Args:
        vocab_size: Rows of the embedding and output layer (the tokenizer's ``len``).

    Returns:
        The config; ``to_hf_config`` of it is the checkpoint's ``config.json``.
    """
    from nemotron_plugins.puzzle.block_config import (
        AttentionConfig,
        BlockConfig,
        FFNConfig,
        ffn_mult_to_intermediate_size,
        make_config,
    )

    hidden, heads = 512, 8

    def ffn(mult: float) -> FFNConfig:
        return FFNConfig(kind="swiglu", intermediate_size=ffn_mult_to_intermediate_size(mult, hidden), ffn_mult=mult)

    blocks = [
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=ffn(2.625)),  # n_heads_in_group 4
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=ffn(1.3125)),  # n_heads_in_group 2
        BlockConfig(attention=AttentionConfig.linear(), ffn=ffn(2.625)),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=ffn(5.25)),
        BlockConfig(attention=AttentionConfig.gqa(8), ffn=FFNConfig.linear()),  # n_heads_in_group 1
        BlockConfig(attention=AttentionConfig.gqa(2), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.no_op(), ffn=FFNConfig.no_op()),
        BlockConfig(attention=AttentionConfig.gqa(4), ffn=ffn(2.625)),
    ]
    ids = {t: i for i, t in enumerate(FIXTURE_SPECIAL_TOKENS)}
    from nemotron_plugins.puzzle.block_config import _DECILM_HF_EXTRA

    extra = {
        **_DECILM_HF_EXTRA,  # the nemotron-nas / DeciLM top-level keys every export writes
        "bos_token_id": ids["<|begin_of_text|>"],
        "eos_token_id": ids["<|eot_id|>"],
        "initializer_range": 0.02,
    }
    return make_config(
        hidden_size=hidden,
        num_attention_heads=heads,
        vocab_size=vocab_size,
        blocks=blocks,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        field_style="decilm",
        hf_extra=extra,
    )


def _random_weights(cfg: PuzzleModelConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    import torch

    from nemotron_plugins.puzzle.hf_checkpoint import expected_hf_tensors

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_hf_tensors(cfg).items():
        if len(shape) == 1:  # norms near 1, not exactly 1, so a misplaced norm changes the logits
            tensor = 1.0 + torch.empty(shape).normal_(0.0, 0.02, generator=gen)
        else:
            tensor = torch.empty(shape).normal_(0.0, 0.02, generator=gen)
        out[name] = tensor.to(dtype)
    return out


def write_fixture_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Write the nemotron-nas checkpoint directory: config, sharded safetensors + index, tokenizer, generation config.

    Args:
        out_dir: Directory to create or overwrite.
        seed: Seed of the weights.
        dtype: ``bfloat16`` (as the released checkpoints) or ``float32``.
        tokenizer: The tokenizer to save with it (default: :func:`build_fixture_tokenizer`).

    Returns:
        ``out_dir``.
    """
    import torch

    from nemotron_plugins.puzzle.block_config import save_hf_config
    from nemotron_plugins.puzzle.hf_checkpoint import save_hf_weights

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_fixture_tokenizer()
    cfg = fixture_model_config(len(tokenizer))
    save_hf_weights(_random_weights(cfg, seed, getattr(torch, dtype)), out, max_shard_size=MAX_SHARD_SIZE)
    save_hf_config(cfg, out)
    if dtype != "bfloat16":
        data = json.loads((out / "config.json").read_text(encoding="utf-8"))
        data["torch_dtype"] = dtype
        (out / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(out))
    _portable_tokenizer_config(out)
    write_generation_config(out, tokenizer)
    return out


def write_generation_config(out_dir: Path, tokenizer: Any) -> Path:
    """Write a Llama-Nemotron style ``generation_config.json`` (bos, eos = ``<|eot_id|>`` and end of text).

    Values follow the released Llama-Nemotron checkpoints' recommendation for reasoning on (sampling at
    temperature 0.6, top-p 0.95).
    """
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]
    config = {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|begin_of_text|>"),
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
    }
    path = Path(out_dir) / "generation_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _portable_tokenizer_config(out: Path) -> None:
    """Make the saved tokenizer loadable by transformers 4.x too.

    transformers 5 names its internal ``TokenizersBackend`` class and writes no ``special_tokens_map.json``; name
    ``PreTrainedTokenizerFast`` (known to every version) and write the map as 4.x did.
    """
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    special = {k: data[k] for k in ("bos_token", "eos_token", "pad_token") if data.get(k)}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------

_WORDS = (
    "the of and to in is it that for you was with on as have be at one this from or had by word but what some we can "
    "out other were all there when up use your how said an each she which do their time if will way about many then "
    "them write would like so these her long make thing see him two has look more day could go come did number sound "
    "no most people my over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our under name very "
    "through just form sentence great think say help low line differ turn cause much mean before move right boy old "
    "too same tell does set three want air well also play small end put home read hand port large spell add even "
    "land here must big high such follow act why ask men change went light kind off need house picture try us again "
    "animal point mother world near build self earth father answer function return value list string integer sum "
    "result step carry digit column reverse letter count reason problem solve check first second final question"
).split()
_SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "ve", "za", "an", "el", "or", "um", "ist", "ing", "ed")


def _tokenizer_corpus() -> list[str]:
    """A fixed corpus: the fixture's data rows rendered as chats, English-like sentences, numbers and code."""
    from nemotron_plugins.chat.render import render_chat
    from nemotron_plugins.data.sft import prompt_messages

    rng = random.Random(1234)
    lines: list[str] = []
    for rows in _sft_rows(random.Random(1234), n_math=300, n_code=120, n_chat=120).values():
        for row in rows:
            text = render_chat(prompt_messages(row), add_generation_prompt=True)
            lines.append(text + row["output"] + "<|eot_id|>")
    pseudo = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(1500)]
    vocabulary = list(_WORDS) * 4 + pseudo
    for _ in range(12000):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(6, 18))]
        lines.append(" ".join(words).capitalize() + rng.choice((".", "?", "!", ",")))
    for _ in range(3000):
        lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 5))) for _ in range(8)))
    return lines


def build_fixture_tokenizer() -> PreTrainedTokenizerFast:
    """Train the fixture's byte-level BPE tokenizer (offline, deterministic, about a second on one core).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``: ids 0..5 are :data:`FIXTURE_SPECIAL_TOKENS`, bos
        ``<|begin_of_text|>`` (prepended when ``add_special_tokens`` is true, as Llama-3's), eos ``<|eot_id|>``, pad
        ``<|finetune_right_pad_id|>``; ``<think>`` / ``</think>`` are single tokens; chat template
        ``llama-nemotron-super``. About 4k ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from nemotron_plugins.chat.catalog import get_chat_template

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in FIXTURE_SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tokenizer_corpus(), trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    bos = FIXTURE_SPECIAL_TOKENS[1]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token=FIXTURE_SPECIAL_TOKENS[0],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = get_chat_template("llama-nemotron-super")
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def _row(category: str, messages: list[dict[str, str]], output: str, mode: str) -> dict[str, Any]:
    from nemotron_plugins.chat.toggle import SYSTEM_PROMPTS

    return {
        "input": messages,
        "output": output,
        "reasoning": mode,
        "system_prompt": SYSTEM_PROMPTS[mode],
        "category": category,
        "license": "cc-by-4.0",
        "generator": GENERATOR,
        "used_in_training": "yes",
        "version": VERSION,
    }


def _pair(category: str, messages: list[dict[str, str]], answer: str, reasoning: str) -> list[dict[str, Any]]:
    from nemotron_plugins.chat.toggle import format_response

    return [
        _row(category, messages, format_response(answer, reasoning, mode="on"), "on"),
        _row(category, messages, format_response(answer, mode="off"), "off"),
    ]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _math_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    from nemotron_plugins.data.synthetic import ArithmeticConfig, addition_trace, sample_problems

    rows = []
    for p in sample_problems(n, rng, ArithmeticConfig()):
        trace, answer = addition_trace(p.a, p.b)
        rows += _pair("math", _user(f"What is {p.a} + {p.b}?"), str(answer), trace)
    return rows


_OPS = (("+", "adds {k} to"), ("-", "subtracts {k} from"), ("*", "multiplies by {k}"))


def _code_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        op, verb = rng.choice(_OPS)
        k = rng.randint(2, 99)
        name = rng.choice(("shift", "scale", "step", "bump", "adjust", "apply")) + f"_{k}"
        question = f"Write a Python function `{name}(x)` that returns x {op} {k}."
        code = f"```python\ndef {name}(x):\n    return x {op} {k}\n```"
        reasoning = f"The function takes one argument x and {verb.format(k=k)} it.\nOne return statement is enough."
        rows += _pair("code", _user(question), code, reasoning)
    return rows


def _chat_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        word = rng.choice(_WORDS)
        kind = i % 3
        if kind == 0:
            question, answer = f"Reverse the word '{word}'.", word[::-1]
            reasoning = "Letters from the end: " + ", ".join(word[::-1]) + "."
        elif kind == 1:
            question, answer = f"How many letters are in the word '{word}'?", str(len(word))
            reasoning = "Counting: " + " ".join(f"{c}={j + 1}" for j, c in enumerate(word)) + "."
        else:  # multi-turn: an earlier exchange, then the question
            other = rng.choice(_WORDS)
            question = f"Now write '{word}' in capital letters."
            answer = word.upper()
            reasoning = f"Each letter of '{word}' becomes its capital form."
            messages = [
                {"role": "user", "content": f"Repeat the word '{other}'."},
                {"role": "assistant", "content": other},
                {"role": "user", "content": question},
            ]
            rows += _pair("chat", messages, answer, reasoning)
            continue
        rows += _pair("chat", _user(question), answer, reasoning)
    return rows


def _sft_rows(rng: random.Random, *, n_math: int, n_code: int, n_chat: int) -> dict[str, list[dict[str, Any]]]:
    return {"math": _math_rows(rng, n_math), "code": _code_rows(rng, n_code), "chat": _chat_rows(rng, n_chat)}


def _bad_sft_rows(good: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Rows that fit a parquet schema but the SFT builder must skip, with the reason it gives."""
    on = dict(good, reasoning="on", system_prompt="detailed thinking on")
    off = dict(good, reasoning="off", system_prompt="detailed thinking off", output="42")
    return [
        ("missing_field", dict(on, output=None)),
        ("bad_reasoning_value", dict(on, reasoning="maybe")),
        ("reasoning_mismatch", dict(on, system_prompt="detailed thinking off")),
        ("empty_output", dict(on, output="   ")),
        ("missing_think", dict(on, output="42")),
        ("think_in_off_mode", dict(off, output="<think>\nhm\n</think>\n\n42")),
        ("malformed_think", dict(on, output="<think>\nnever closed 42")),
    ]


def _rl_rows(rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
    from nemotron_plugins.chat.toggle import SYSTEM_PROMPTS
    from nemotron_plugins.data.synthetic import ArithmeticConfig, sample_problems

    rows = []
    for i, p in enumerate(sample_problems(n, rng, ArithmeticConfig())):
        common = {"system_prompt": SYSTEM_PROMPTS["on"], "reasoning": "on"}
        if i % 4 == 3:  # multiple choice over four sums, one right (category "science", as the dataset's MCQs)
            common["category"] = "science"
            answer = p.a + p.b
            options = [answer, answer + 10, answer - 1, answer + 100]
            rng.shuffle(options)
            letter = "ABCD"[options.index(answer)]
            listing = "\n".join(f"{c}) {v}" for c, v in zip("ABCD", options, strict=True))
            text = f"What is {p.a} + {p.b}?\n{listing}\nAnswer with the letter of the correct option."
            rows.append(
                {"id": f"{split}-{i:05d}", "input": _user(text), **common, "ground_truth": letter, "reward": "mcq"}
            )
        else:
            common["category"] = "math"
            text = f"What is {p.a} + {p.b}?"
            rows.append(
                {
                    "id": f"{split}-{i:05d}",
                    "input": _user(text),
                    **common,
                    "ground_truth": str(p.a + p.b),
                    "reward": "math",
                }
            )
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return True


def _write_dataset_dict(path: Path, splits: dict[str, list[dict[str, Any]]]) -> bool:
    """``datasets.DatasetDict.save_to_disk`` with one split per category (skipped without ``datasets``)."""
    try:
        import datasets
        from datasets.utils import logging as datasets_logging
    except ImportError:
        return False
    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
    return True


def write_fixture_data(out_dir: str | os.PathLike[str], *, seed: int = 0) -> dict[str, Any]:
    """Write the SFT and RL rows (JSONL, and parquet when pyarrow is installed).

    Args:
        out_dir: The ``data`` directory to fill.
        seed: Seed of the problems and where the bad rows go.

    Returns:
        ``{"sft": {category: path}, "sft_parquet": {...}, "sft_dataset": path | None, "rl": {split: path},
        "rl_parquet": {...},
        "sft_bad_rows": {file: {reason: count}}, "rl_bad_rows": {file: {problem: count}}, "rows": {file: n}}``;
        the ``file`` keys are relative to ``out_dir``.
    """
    out = Path(out_dir)
    rng = random.Random(seed)
    sft = _sft_rows(rng, n_math=160, n_code=60, n_chat=60)
    files: dict[str, Any] = {"sft": {}, "sft_parquet": {}, "sft_dataset": None, "rl": {}, "rl_parquet": {}}
    parquet_splits: dict[str, list[dict[str, Any]]] = {}
    bad_counts: dict[str, dict[str, int]] = {}
    rows_per_file: dict[str, int] = {}
    for sub in ("sft", "sft_parquet", "rl", "rl_parquet"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        rows: list[dict[str, Any] | str] = list(sft[category])
        parquet_rows = list(sft[category])
        counts: dict[str, int] = {}
        parquet_counts: dict[str, int] = {}
        if category in ("math", "chat"):
            bad = _bad_sft_rows(sft[category][0])
            for reason, row in bad:
                at = rng.randrange(len(rows) + 1)
                rows.insert(at, row)
                parquet_rows.insert(min(at, len(parquet_rows)), row)
                counts[reason] = counts.get(reason, 0) + 1
                parquet_counts[reason] = parquet_counts.get(reason, 0) + 1
            # What only JSON can hold: a line that is not JSON, an input that is not a message list.
            rows.insert(rng.randrange(len(rows) + 1), '{"input": [{"role": "user", "content": "cut off')
            rows.insert(rng.randrange(len(rows) + 1), json.dumps(dict(sft[category][0], input=42)))
            counts["bad_json"] = 1
            counts["bad_field"] = 1
        jsonl = out / "sft" / f"{category}.jsonl"
        _write_jsonl(jsonl, rows)
        files["sft"][category] = jsonl
        bad_counts[f"sft/{category}.jsonl"] = counts
        rows_per_file[f"sft/{category}.jsonl"] = len(rows)
        parquet_splits[category] = parquet_rows
        parquet = out / "sft_parquet" / f"{category}.parquet"
        if _write_parquet(parquet, parquet_rows):
            files["sft_parquet"][category] = parquet
            bad_counts[f"sft_parquet/{category}.parquet"] = parquet_counts
            rows_per_file[f"sft_parquet/{category}.parquet"] = len(parquet_rows)

    if _write_dataset_dict(out / "sft_dataset", parquet_splits):
        files["sft_dataset"] = out / "sft_dataset"
        for category, rows in parquet_splits.items():
            bad_counts[f"sft_dataset/{category}"] = bad_counts[f"sft_parquet/{category}.parquet"]
            rows_per_file[f"sft_dataset/{category}"] = len(rows)

    for split, n in (("train", 96), ("validation", 32)):
        rows = _rl_rows(rng, n, split)
        path = out / "rl" / f"{split}.jsonl"
        _write_jsonl(path, rows)
        files["rl"][split] = path
        rows_per_file[f"rl/{split}.jsonl"] = len(rows)
        parquet = out / "rl_parquet" / f"{split}.parquet"
        if _write_parquet(parquet, rows):
            files["rl_parquet"][split] = parquet
            rows_per_file[f"rl_parquet/{split}.parquet"] = len(rows)
    # Bad RL rows live in their own file: the RL prompt loader stops at the first one (naming file and line).
    good = _rl_rows(random.Random(seed + 1), 2, "bad")
    bad_rows: list[dict[str, Any] | str] = [
        {k: v for k, v in good[0].items() if k != "ground_truth"},
        dict(good[1], reward="no_such_reward"),
        '{"id": "bad-00002", "input": [',
    ]
    _write_jsonl(out / "rl" / "bad_rows.jsonl", bad_rows)
    files["rl"]["bad_rows"] = out / "rl" / "bad_rows.jsonl"
    rows_per_file["rl/bad_rows.jsonl"] = len(bad_rows)
    rl_bad = {"rl/bad_rows.jsonl": {"missing_ground_truth": 1, "unknown_reward": 1, "bad_json": 1}}
    files["sft_bad_rows"] = bad_counts
    files["rl_bad_rows"] = rl_bad
    files["rows"] = rows_per_file
    return files


# --------------------------------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------------------------------


def write_fixtures(out_dir: str | os.PathLike[str], *, seed: int = 0) -> FixturePaths:
    """Write the checkpoint, tokenizer and data into ``out_dir`` (the same seed gives identical files).

    Args:
        out_dir: Directory to create or refresh.
        seed: Seed of the weights and the data rows (the tokenizer is the same for every seed).

    Returns:
        The :class:`FixturePaths`; ``fixture.json`` holds the same as JSON.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_fixture_tokenizer()
    checkpoint = write_fixture_checkpoint(root / "checkpoint", seed=seed, tokenizer=tokenizer)
    data = write_fixture_data(root / "data", seed=seed)
    from nemotron_plugins.puzzle.block_config import load_hf_config
    from nemotron_plugins.puzzle.cost import estimate_cost

    cfg = load_hf_config(checkpoint)
    paths = FixturePaths(
        root=root,
        checkpoint=checkpoint,
        sft=data["sft"],
        sft_parquet=data["sft_parquet"],
        sft_dataset=data["sft_dataset"],
        rl=data["rl"],
        rl_parquet=data["rl_parquet"],
        manifest=root / "fixture.json",
    )

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    manifest = {
        "seed": seed,
        "generator": GENERATOR,
        "version": VERSION,
        "checkpoint": rel(checkpoint),
        "parameters": estimate_cost(cfg).total_params,
        "vocab_size": cfg.vocab_size,
        "sft": {k: rel(v) for k, v in paths.sft.items()},
        "sft_parquet": {k: rel(v) for k, v in paths.sft_parquet.items()},
        "sft_dataset": None if paths.sft_dataset is None else rel(paths.sft_dataset),
        "rl": {k: rel(v) for k, v in paths.rl.items()},
        "rl_parquet": {k: rel(v) for k, v in paths.rl_parquet.items()},
        # Keyed by path relative to ``root``, like the paths above.
        "rows": {f"data/{k}": v for k, v in data["rows"].items()},
        "sft_bad_rows": {f"data/{k}": v for k, v in data["sft_bad_rows"].items()},
        "rl_bad_rows": {f"data/{k}": v for k, v in data["rl_bad_rows"].items()},
    }
    paths.manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths
