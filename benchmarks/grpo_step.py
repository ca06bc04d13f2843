"""Time per GRPO step on CPU, split into rollout / reward / update: our megatron-core trainer vs TRL's GRPOTrainer.

Run:  python benchmarks/grpo_step.py [--steps 5] [--warmup 2] [--prompts 8] [--generations 8] [--max-new-tokens 32]
      [--threads 2] [--micro-batch-size 0] [--json PATH] [--quick]

Both engines do the same work per step, in the same process, one after the other:

* ``ours``: :func:`nemotron_plugins.rl.trainer.train_step` on the tiny Puzzle policy
  (:func:`~nemotron_plugins.puzzle.tiny.tiny_puzzle_config`, heterogeneous, ~0.8M parameters) wrapped in megatron
  DDP with megatron's Adam, rollouts from the embedded megatron engine (KV cache), one gloo process;
* ``TRL``: ``trl.GRPOTrainer.train()`` on a ``transformers.LlamaForCausalLM`` of the same width, depth and heads
  (hidden 128, 6 layers, 4 query heads, 2 KV heads) whose MLP width is chosen so that its parameter count is the
  closest to ours (``--trl-intermediate-size`` overrides it), generating with ``model.generate`` (no vLLM).

Shared settings: the tiny character tokenizer, the same chat-rendered synthetic addition prompts (TRL gets them as
plain text, which tokenizes to the same ids), ``--prompts`` x ``--generations`` completions per step, at most
``--max-new-tokens`` new tokens, temperature 1, top-p 1, one optimizer step per rollout (the whole rollout in
micro-batches of ``--micro-batch-size``), no KL term (beta 0), token-level loss over the global batch (TRL's
``dapo``), gradient-norm clip 1.0, the same ``math`` + ``think_format`` rewards (TRL through
:func:`nemotron_plugins.rewards.adapters.make_trl_reward_func`), ``torch.set_num_threads(--threads)``. Groups whose
rewards are all equal are NOT skipped in our update (``skip_uniform_groups=False``), since TRL trains on them too.
Ours runs with ``algorithm.prompt_sharing`` = ``--prompt-sharing`` (default ``auto``: a group's prompt goes through
the policy once per micro-batch where the cost estimate says it is cheaper, with the same log-probs and gradients,
:mod:`nemotron_plugins.rl.shared_prompt`; ``off`` runs every completion's row with its own prompt copy, as TRL does).

How the columns are measured (wall clock, ``time.perf_counter``; each column is the median over the timed steps,
after ``--warmup`` untimed steps, so the columns need not add up exactly):

* step: ours ``time/step_s`` from ``train_step`` (rollout to the end of the optimizer step); TRL from the trainer
  callbacks ``on_step_begin`` to ``on_step_end`` (the whole optimizer step including generation; TRL's own logging,
  which runs after ``on_step_end``, is excluded);
* rollout: ours ``time/rollout_s`` (the engine's ``rollout`` call on pre-tokenised prompts); TRL the time inside
  ``GRPOTrainer._generate_single_turn`` (padding the prompt ids, ``model.generate``, cutting at EOS), wrapped on the
  trainer instance;
* reward: ours ``time/reward_s`` (scoring every completion with both rewards); TRL the time inside the two reward
  functions, measured by a timing wrapper around each;
* update: step - rollout - reward for BOTH engines (decoding completions, advantages, batch packing, the log-prob
  forward, backward and optimizer step; TRL also tokenises the prompts each step). Our pure policy update
  (``time/train_s``) is printed below the table;
* generated tokens/s: completion tokens sampled in the step (EOS included when sampled) / rollout seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402 - the offline switches above must precede any transformers import

REWARD_NAMES = ("math", "think_format")
TRL_KV_HEADS = 2
HOW_MEASURED = {
    "ours": {
        "rollout_s": "train_step metrics['time/rollout_s']: the megatron engine's rollout() on pre-tokenised prompts",
        "reward_s": "train_step metrics['time/reward_s']: math + think_format over every completion",
        "update_s": "step_s - rollout_s - reward_s (decode, advantages, packing, policy_update)",
        "step_s": "train_step metrics['time/step_s']",
        "train_s": "train_step metrics['time/train_s']: pack_policy_batch + policy_update only",
        "generated_tokens": "sum of completion lengths (response_length/mean x sequences)",
    },
    "trl": {
        "rollout_s": "time inside GRPOTrainer._generate_single_turn (pad, model.generate, EOS cut), wrapped on the "
        "instance",
        "reward_s": "time inside the two reward functions (timing wrapper around each TRL reward function)",
        "update_s": "step_s - rollout_s - reward_s (prompt tokenisation, decode, advantages, loss forward, backward, "
        "optimizer step)",
        "step_s": "TrainerCallback on_step_begin -> on_step_end",
        "generated_tokens": "sum of the completion id lists returned by _generate_single_turn",
    },
}


@dataclass(kw_only=True, slots=True)
class BenchSettings:
    """What both engines run with."""

    prompts: int = 8
    """Prompts per step."""
    generations: int = 8
    """Completions per prompt (the GRPO group size)."""
    max_new_tokens: int = 32
    """Longest completion in tokens."""
    steps: int = 5
    """Timed steps."""
    warmup: int = 2
    """Untimed steps before the timed ones."""
    threads: int = 2
    """``torch.set_num_threads`` for both engines."""
    micro_batch_size: int = 0
    """Sequences per forward/backward pass (0: the whole rollout at once)."""
    lr: float = 5e-5
    """Adam learning rate (constant) of both."""
    seed: int = 1234
    """Seed of model init, data and sampling."""
    trl_intermediate_size: int = 0
    """MLP width of TRL's Llama (0: matched to our parameter count)."""
    prompt_sharing: str = "auto"
    """Ours: ``algorithm.prompt_sharing`` (``auto``: a group's prompt runs once per micro-batch where that is cheaper,
    :mod:`nemotron_plugins.rl.shared_prompt`; ``off``: every completion's row runs its own prompt copy, as TRL)."""

    @property
    def sequences(self) -> int:
        """Completions per step."""
        return self.prompts * self.generations

    @property
    def micro(self) -> int:
        """The effective micro-batch size."""
        return self.micro_batch_size or self.sequences

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        for name in ("prompts", "steps", "threads", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.generations < 2:
            raise ValueError(f"--generations must be >= 2 (a GRPO group), got {self.generations}")
        if self.warmup < 0 or self.micro_batch_size < 0 or self.trl_intermediate_size < 0:
            raise ValueError("--warmup, --micro-batch-size and --trl-intermediate-size must be >= 0")
        if self.sequences % self.micro:
            raise ValueError(f"--micro-batch-size {self.micro} must divide prompts x generations = {self.sequences}")


@dataclass(kw_only=True, slots=True)
class StepTimes:
    """One step's measurements."""

    rollout_s: float
    """Sampling the completions."""
    reward_s: float
    """Scoring them with every reward."""
    step_s: float
    """The whole step, rollout to optimizer step."""
    generated_tokens: int
    """Completion tokens sampled (EOS included when sampled)."""
    train_s: float | None = None
    """Ours only: ``time/train_s`` (batch packing + ``policy_update``)."""
    padded_over_real: float | None = None
    """Ours only: positions the update ran through the model / real positions."""
    padded_over_real_rollout_longest: float | None = None
    """Ours only: the same ratio had every row been padded to the rollout's longest (the update before packing)."""

    @property
    def update_s(self) -> float:
        """Everything in the step that is neither rollout nor reward."""
        return self.step_s - self.rollout_s - self.reward_s


@dataclass(kw_only=True, slots=True)
class EngineResult:
    """The timed steps of one engine and their medians."""

    engine: str
    """Row label."""
    params: int
    """Parameters of the policy."""
    model: str
    """What the policy is."""
    steps: list[StepTimes] = field(default_factory=list)
    """Timed steps only (warm-up steps dropped)."""
    setup_s: float = 0.0
    """Building the model, optimizer, engine and rewards (not part of any step)."""

    def median(self, key: str) -> float:
        """Median of ``key`` (a :class:`StepTimes` field or ``update_s`` / ``tokens_per_s``) over the timed steps."""
        if key == "tokens_per_s":
            values = [s.generated_tokens / max(s.rollout_s, 1e-9) for s in self.steps]
        else:
            values = [float(getattr(s, key)) for s in self.steps if getattr(s, key) is not None]
        return statistics.median(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        """The table's numbers for this engine."""
        out = {k: self.median(k) for k in ("rollout_s", "reward_s", "update_s", "step_s", "tokens_per_s")}
        out["generated_tokens"] = self.median("generated_tokens")
        for key in ("train_s", "padded_over_real", "padded_over_real_rollout_longest"):
            if any(getattr(s, key) is not None for s in self.steps):
                out[key] = self.median(key)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Ours: train_step on the tiny Puzzle policy
# ----------------------------------------------------------------------------------------------------------------


def _train_config(settings: BenchSettings, workdir: Path, seq_length: int = 256) -> Any:
    """The tiny GRPO recipe's run config sized to ``settings`` (random initial policy, synthetic data in
    ``workdir``, uniform prompt order)."""
    from nemotron_plugins.launch.build import build_recipe
    from nemotron_plugins.launch.recipe_config import RewardSpec

    prompts = settings.prompts * (settings.warmup + settings.steps)
    config = build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            f"output_dir={workdir}",
            "init_from_recipe=null",
            "model.init=random",
            f"model.seq_length={seq_length}",
            f"data.synthetic.problems={prompts}",
            "data.synthetic.heldout_problems=0",
            f"data.num_train_samples={prompts}",
            "evaluation.num_samples=0",
            "evaluation.interval=0",
            f"algorithm.num_prompts_per_rollout={settings.prompts}",
            f"algorithm.num_generations={settings.generations}",
            "algorithm.skip_uniform_groups=false",
            "algorithm.beta=0.0",
            "algorithm.loss_aggregation=token",
            f"algorithm.prompt_sharing={settings.prompt_sharing}",
            f"global_batch_size={settings.sequences}",
            f"micro_batch_size={settings.micro}",
            f"generation.max_new_tokens={settings.max_new_tokens}",
            "generation.temperature=1.0",
            "generation.top_p=1.0",
            f"optimizer.lr={settings.lr}",
            "optimizer.clip_grad=1.0",
            f"torch_threads={settings.threads}",
            f"seed={settings.seed}",
        ],
    )
    config.rewards = [RewardSpec(name=name) for name in REWARD_NAMES]
    return config


def load_rows(settings: BenchSettings, workdir: Path) -> list[dict[str, Any]]:
    """The synthetic addition prompt rows both engines train on (written into ``workdir`` on first use)."""
    from nemotron_plugins.data.sources import prepare_synthetic_data
    from nemotron_plugins.rl.trainer import load_prompt_rows

    config = _train_config(settings, workdir)
    prepare_synthetic_data(config.data, workdir)
    rows, _ = load_prompt_rows(config)
    return rows


def _step_batch(step: int, prompts: int, num_rows: int) -> list[int]:
    return [(step * prompts + i) % num_rows for i in range(prompts)]


def run_ours(settings: BenchSettings, workdir: Path) -> EngineResult:
    """Time :func:`nemotron_plugins.rl.trainer.train_step` on the tiny Puzzle policy.

    Args:
        settings: Batch, lengths, steps and threads.
        workdir: Directory for the synthetic data.

    Returns:
        The timed steps (``time/*`` metrics of ``train_step``).
    """
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.launch.validation import validate_for_run
    from nemotron_plugins.rl.trainer import (
        GenerationWorker,
        MegatronPolicyWorker,
        build_rewards,
        encode_prompts,
        train_step,
    )
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(settings.threads)
    rows = load_rows(settings, workdir)
    tokenizer = build_tiny_tokenizer()
    prompt_ids = encode_prompts(tokenizer, rows)  # the tiny recipe renders with the default template
    needed = max(len(p) for p in prompt_ids) + settings.max_new_tokens
    config = _train_config(settings, workdir, seq_length=max(256, -(-needed // 64) * 64))
    validate_for_run(config)
    start = time.perf_counter()
    with distributed_context(config.parallel, seed=config.seed):
        policy = MegatronPolicyWorker(config)
        tokenizer = policy.tokenizer
        params = policy.num_parameters()
        generation = GenerationWorker.build(config, policy)
        rewards = build_rewards(config)
        result = EngineResult(
            engine="ours (megatron-core)",
            params=params,
            model="tiny Puzzle GPTModel (6 heterogeneous layers, hidden 128)",
            setup_s=time.perf_counter() - start,
        )
        try:
            for step in range(settings.warmup + settings.steps):
                metrics = train_step(
                    step=step,
                    policy=policy,
                    generation=generation,
                    config=config,
                    tokenizer=tokenizer,
                    rows=rows,
                    prompt_ids=prompt_ids,
                    batch=_step_batch(step, settings.prompts, len(rows)),
                    rewards=rewards,
                )
                if step >= settings.warmup:
                    result.steps.append(
                        StepTimes(
                            rollout_s=metrics["time/rollout_s"],
                            reward_s=metrics["time/reward_s"],
                            step_s=metrics["time/step_s"],
                            train_s=metrics["time/train_s"],
                            padded_over_real=metrics["train/padded_over_real"],
                            padded_over_real_rollout_longest=metrics["train/padded_over_real_rollout_longest"],
                            generated_tokens=round(metrics["response_length/mean"] * settings.sequences),
                        )
                    )
        finally:
            for _, reward in rewards.values():
                reward.close()
            generation.close()
    return result


# ----------------------------------------------------------------------------------------------------------------
# TRL: GRPOTrainer on a LlamaForCausalLM of the same size
# ----------------------------------------------------------------------------------------------------------------


class _Clock:
    """Per-step accumulators filled by the instrumentation and drained by the step callback."""

    def __init__(self) -> None:
        self.rollout_s = 0.0
        self.reward_s = 0.0
        self.tokens = 0
        self.step_start: float | None = None
        self.steps: list[StepTimes] = []

    def reset(self) -> None:
        """Zero the accumulators at the start of a step."""
        self.rollout_s = self.reward_s = 0.0
        self.tokens = 0


def _timed_reward(func: Callable[..., Any], clock: _Clock) -> Callable[..., Any]:
    """``func`` with its wall time added to ``clock.reward_s`` (keeps ``__name__``, which TRL logs under)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            clock.reward_s += time.perf_counter() - start

    return wrapper


def _instrument_generation(trainer: Any, clock: _Clock) -> None:
    """Wrap the trainer instance's ``_generate_single_turn`` to time it and count the completion tokens."""
    original = trainer._generate_single_turn

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            completion_ids, logprobs = original(*args, **kwargs)
        finally:
            clock.rollout_s += time.perf_counter() - start
        clock.tokens += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = wrapper


def build_trl_model(vocab_size: int, intermediate_size: int, *, seed: int, tokenizer: Any) -> Any:
    """A randomly initialised ``LlamaForCausalLM``: hidden 128, 6 layers, 4 query / 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=intermediate_size,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=TRL_KV_HEADS,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def matched_intermediate_size(target_params: int, vocab_size: int, tokenizer: Any, multiple: int = 16) -> int:
    """The MLP width (a multiple of ``multiple``) whose Llama has the parameter count closest to ``target_params``."""
    base = build_trl_model(vocab_size, multiple, seed=0, tokenizer=tokenizer).num_parameters()
    per_unit = 3 * 128 * 6  # gate, up and down projections of 6 layers grow by 3 x hidden per MLP unit
    units = round((target_params - base) / (per_unit * multiple))
    return multiple * max(1, 1 + units)


def run_trl(settings: BenchSettings, workdir: Path, target_params: int | None = None) -> EngineResult:
    """Time ``trl.GRPOTrainer.train()`` on a Llama of the tiny policy's size with the same prompts and rewards.

    Args:
        settings: Batch, lengths, steps and threads.
        workdir: Directory for the synthetic data (shared with :func:`run_ours`) and TRL's output.
        target_params: Parameter count to match with the MLP width (ignored when
            ``settings.trl_intermediate_size`` is set; ``None`` uses 787,840, the tiny Puzzle policy's).

    Returns:
        The timed steps, measured as described in the module docstring.
    """
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging

    from nemotron_plugins.chat.render import render_chat
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
    from nemotron_plugins.rewards.adapters import make_trl_reward_func

    hf_logging.set_verbosity_error()
    torch.set_num_threads(settings.threads)
    rows = load_rows(settings, workdir)
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    start = time.perf_counter()
    width = settings.trl_intermediate_size or matched_intermediate_size(target_params or 787_840, vocab, tokenizer)
    model = build_trl_model(vocab, width, seed=settings.seed, tokenizer=tokenizer)
    dataset = Dataset.from_dict(
        {
            "prompt": [render_chat(r["messages"], add_generation_prompt=True) for r in rows],
            "ground_truth": [str(r["ground_truth"]) for r in rows],
            "reasoning": [str(r.get("reasoning", "on")) for r in rows],
        }
    )
    clock = _Clock()
    reward_funcs = [_timed_reward(make_trl_reward_func(name), clock) for name in REWARD_NAMES]
    args = trl.GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        use_vllm=False,
        report_to="none",
        per_device_train_batch_size=settings.micro,
        gradient_accumulation_steps=settings.sequences // settings.micro,
        num_generations=settings.generations,
        max_completion_length=settings.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        num_iterations=1,
        beta=0.0,
        loss_type="dapo",
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=settings.warmup + settings.steps,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=settings.seed,
    )

    class StepTimer(TrainerCallback):
        """Times each optimizer step and drains the rollout / reward accumulators into it."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.reset()
            clock.step_start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if clock.step_start is None:  # pragma: no cover - TRL always begins a step before ending it
                return
            clock.steps.append(
                StepTimes(
                    rollout_s=clock.rollout_s,
                    reward_s=clock.reward_s,
                    step_s=time.perf_counter() - clock.step_start,
                    generated_tokens=clock.tokens,
                )
            )
            clock.step_start = None

    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics dict; the table reports what we need
    _instrument_generation(trainer, clock)
    params = sum(p.numel() for p in trainer.model.parameters())
    setup_s = time.perf_counter() - start
    torch.set_num_threads(settings.threads)  # in case the trainer / accelerate changed it
    try:
        trainer.train()
    finally:
        for func in reward_funcs:
            reward = getattr(func, "reward", None)
            if reward is not None:
                reward.close()
    if len(clock.steps) != settings.warmup + settings.steps:
        raise RuntimeError(f"TRL ran {len(clock.steps)} steps, expected {settings.warmup + settings.steps}")
    return EngineResult(
        engine=f"TRL {trl.__version__} GRPOTrainer",
        params=params,
        model=f"LlamaForCausalLM (6 layers, hidden 128, 4 heads / {TRL_KV_HEADS} KV, MLP {width})",
        steps=clock.steps[settings.warmup :],
        setup_s=setup_s,
    )


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("megatron-core", "trl", "transformers", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def busy_warning(load_before: float, threads: int, cpus: int | None = None) -> str | None:
    """A warning when other processes already kept the cores busy before the run (1-minute load average above the
    cores this run leaves free), else ``None``: contended cores inflate the times and the spread between steps."""
    cpus = cpus or os.cpu_count() or 1
    free = max(0, cpus - threads)
    if load_before <= free + 0.5:
        return None
    return (
        f"WARNING: load average {load_before:.2f} on {cpus} CPUs before the run: other processes compete for the "
        f"cores this run's {threads} threads use; times are inflated and noisy (rerun on an idle machine)"
    )


def settings_lines(settings: BenchSettings, load_before: float | None = None) -> list[str]:
    """The exact settings as printed above the table (``load_before``: 1-minute load average before the run)."""
    v = _versions()
    load = f"load average {load_before:.2f} before / " if load_before is not None else "load average "
    return [
        f"machine: {os.cpu_count()} CPUs, {load}{os.getloadavg()[0]:.2f} after (1 min); "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"batch: {settings.prompts} prompts x {settings.generations} generations = {settings.sequences} sequences per "
        f"step, max {settings.max_new_tokens} new tokens, temperature 1.0, top_p 1.0",
        f"update: 1 optimizer step per rollout, micro-batch {settings.micro} "
        f"({settings.sequences // settings.micro} accumulation steps), Adam lr {settings.lr:g} constant, grad clip 1.0, "
        "beta 0 (no reference model), token-level loss over the global batch (TRL loss_type='dapo'), "
        f"uniform-reward groups kept; ours algorithm.prompt_sharing={settings.prompt_sharing}",
        f"rewards: {' + '.join(REWARD_NAMES)} (weights 1); prompts: synthetic addition, chat-rendered "
        "(llama-nemotron-super template), tiny character tokenizer",
        f"timing: {settings.warmup} warm-up + {settings.steps} timed steps per engine, median; "
        f"torch threads {settings.threads}; fp32 on CPU",
    ]


def format_table(results: Sequence[EngineResult]) -> str:
    """The comparison table (one row per engine, then ours / TRL when both are present)."""
    header = (
        f"{'engine':<28}{'params':>10}{'rollout s':>11}{'reward s':>10}{'update s':>10}{'step s':>9}"
        f"{'gen tokens/s':>14}"
    )
    lines = [header, "-" * len(header)]
    summaries = [r.summary() for r in results]
    for r, s in zip(results, summaries, strict=True):
        lines.append(
            f"{r.engine:<28}{r.params:>10,}{s['rollout_s']:>11.3f}{s['reward_s']:>10.3f}{s['update_s']:>10.3f}"
            f"{s['step_s']:>9.3f}{s['tokens_per_s']:>14.0f}"
        )
    if len(results) == 2:
        a, b = summaries

        def ratio(key: str) -> str:
            return f"{a[key] / b[key]:.2f}x" if b[key] > 0 else "n/a"

        lines.append(
            f"{'ratio ours/TRL':<28}{results[0].params / results[1].params:>9.2f}x{ratio('rollout_s'):>11}"
            f"{ratio('reward_s'):>10}{ratio('update_s'):>10}{ratio('step_s'):>9}{ratio('tokens_per_s'):>14}"
        )
    return "\n".join(lines)


def run_benchmark(settings: BenchSettings, workdir: Path) -> list[EngineResult]:
    """Run ours, then TRL, with ``settings``; the synthetic data go to ``workdir``."""
    settings.validate()
    threads = torch.get_num_threads()
    try:
        ours = run_ours(settings, workdir / "ours")
        # TRL gets the same rows: the data are written once, under ours' output directory.
        trl_result = run_trl(settings, workdir / "ours", target_params=ours.params)
    finally:
        torch.set_num_threads(threads)
    return [ours, trl_result]


def report(settings: BenchSettings, results: Sequence[EngineResult]) -> dict[str, Any]:
    """Everything the run measured, as written by ``--json``."""
    out: dict[str, Any] = {
        "settings": asdict(settings),
        "versions": _versions(),
        "how_measured": HOW_MEASURED,
        "engines": [],
    }
    for r, key in zip(results, ("ours", "trl"), strict=False):
        out["engines"].append(
            {
                "key": key,
                "engine": r.engine,
                "model": r.model,
                "params": r.params,
                "setup_s": r.setup_s,
                "median": r.summary(),
                "steps": [{**asdict(s), "update_s": s.update_s} for s in r.steps],
            }
        )
    if len(results) == 2:
        a, b = results[0].summary(), results[1].summary()
        out["ratio_ours_over_trl"] = {
            k: a[k] / b[k] for k in ("rollout_s", "reward_s", "update_s", "step_s", "tokens_per_s") if b[k] > 0
        }
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchSettings, argparse.Namespace]:
    """Command-line options -> :class:`BenchSettings`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per engine (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per engine (default 2)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (default 8)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest completion (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both engines (default 2)")
    parser.add_argument(
        "--micro-batch-size", type=int, default=0, help="sequences per forward/backward (default 0: the whole rollout)"
    )
    parser.add_argument(
        "--trl-intermediate-size", type=int, default=0, help="MLP width of TRL's Llama (default 0: match our params)"
    )
    parser.add_argument(
        "--prompt-sharing",
        choices=("auto", "on", "off"),
        default="auto",
        help="ours' algorithm.prompt_sharing (default auto; off: each completion's row carries its prompt, as TRL)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 prompts x 4 generations, 16 new tokens, 1 warm-up, 2 steps"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.generations, args.max_new_tokens, args.warmup, args.steps = 4, 4, 16, 1, 2
    settings = BenchSettings(
        prompts=args.prompts,
        generations=args.generations,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        micro_batch_size=args.micro_batch_size,
        seed=args.seed,
        trl_intermediate_size=args.trl_intermediate_size,
        prompt_sharing=args.prompt_sharing,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the settings, the table and how each column was measured."""
    settings, args = parse_args(argv)
    try:
        settings.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="grpo_step_bench_") as tmp:
        results = run_benchmark(settings, Path(tmp))
    print("GRPO step time on CPU: ours (megatron-core train_step) vs TRL GRPOTrainer, same batch and rewards")
    for line in settings_lines(settings, load_before):
        print(f"  {line}")
    for r in results:
        print(f"  {r.engine}: {r.model}; setup {r.setup_s:.1f} s (not timed)")
    print()
    print(format_table(results))
    ours = results[0].summary()
    print()
    print(
        f"ours' policy update alone (time/train_s: packing + policy_update): {ours['train_s']:.3f} s; "
        f"generated tokens per step (median): ours {ours['generated_tokens']:.0f}, "
        f"TRL {results[1].summary()['generated_tokens']:.0f} of {settings.sequences * settings.max_new_tokens} max"
    )
    print(
        "ours' update, positions run through the model / real positions (median): "
        f"{ours['padded_over_real']:.3f} now (algorithm.prompt_sharing={settings.prompt_sharing}: < 1 when a group's "
        "prompt runs once; else packed on CUDA, each micro-batch padded to its own longest on CPU) vs "
        f"{ours['padded_over_real_rollout_longest']:.3f} with every row padded to the rollout's longest (before)"
    )
    print("columns (median over timed steps, so they need not add up): ")
    print("  rollout  ours: train_step time/rollout_s (engine.rollout on token ids); TRL: wall time inside")
    print("           GRPOTrainer._generate_single_turn (pad + model.generate + EOS cut), wrapped on the instance")
    print("  reward   ours: time/reward_s (both rewards over all completions); TRL: wall time inside the two")
    print("           reward functions (make_trl_reward_func, each wrapped in a timer)")
    print("  update   both: step - rollout - reward (decode, advantages, log-prob forward, backward, optimizer)")
    print("  step     ours: time/step_s; TRL: TrainerCallback on_step_begin -> on_step_end (logging excluded)")
    print("  tokens/s completion tokens sampled per step / rollout seconds; ratio < 1x in a time column = ours faster")
    warning = busy_warning(load_before, settings.threads)
    if warning:
        print(warning)
    if args.json is not None:
        out = report(settings, results)
        out["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        out["warning"] = warning
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
