"""Pre-launch checks of the preference tasks (``reward_model``, ``rpo``), called by the shared validation
(:mod:`nemotron_plugins.launch.validation`); each error names the field."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nemotron_plugins.preference.config import PREFERENCE_LOSSES, PREFERENCE_TASKS, PreferenceConfig

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig


def is_online(recipe: RecipeConfig) -> bool:
    """Online RPO: pairs sampled from the policy and scored by ``rewards``."""
    return recipe.task == "rpo" and recipe.preference is not None and recipe.preference.mode == "online"


def preference_errors(recipe: RecipeConfig) -> list[str]:  # noqa: C901, PLR0912 - one flat list of checks
    """Everything a preference task needs or refuses; returns the errors."""
    errors: list[str] = []
    task, pref, d = recipe.task, recipe.preference, recipe.data
    if task not in PREFERENCE_TASKS:
        return ["preference is set but task is not 'reward_model' or 'rpo'; set it to null"] if pref else []
    if pref is None:
        return [f"task {task!r} needs the preference block"]
    defaults = PreferenceConfig()
    if pref.loss not in PREFERENCE_LOSSES:
        errors.append(f"preference.loss={pref.loss!r}: use one of {list(PREFERENCE_LOSSES)}")
    if pref.mode not in ("offline", "online"):
        errors.append(f"preference.mode={pref.mode!r}: use 'offline' or 'online'")
    online = pref.mode == "online"
    for part in ("algorithm", "sampler"):
        if getattr(recipe, part) is not None:
            errors.append(f"task {task!r} does not use {part}; set it to null")
    if task == "reward_model":
        for name in ("mode", "loss", "beta", "reward_scale", "num_generations"):
            if getattr(pref, name) != getattr(defaults, name):
                errors.append(f"preference.{name} is an RPO setting; a reward model trains with Bradley-Terry")
        for part in ("generation", "rewards"):
            if getattr(recipe, part) is not None:
                errors.append(f"task 'reward_model' does not use {part}; set it to null")
    else:
        if pref.use_margin:
            errors.append("preference.use_margin is a reward-model setting (Bradley-Terry margin)")
        if not pref.beta > 0:
            errors.append(f"preference.beta={pref.beta} must be > 0")
        if pref.loss == "dpo" and pref.reward_scale != defaults.reward_scale:
            errors.append("preference.reward_scale is unused with preference.loss='dpo' (DPO ignores rewards)")
        if online:
            if recipe.generation is None or not recipe.rewards:
                errors.append("preference.mode='online' needs generation and rewards (the reward model) to be set")
            if pref.num_generations < 2:
                errors.append(f"preference.num_generations={pref.num_generations} must be >= 2 (a pair per prompt)")
            if d.dataset != "post_training":
                errors.append("online RPO reads prompt rows: data.dataset must be 'post_training'")
            gen = recipe.generation
            if gen is not None:
                if gen.engine not in ("megatron", "vllm"):
                    errors.append(f"generation.engine={gen.engine!r}: online RPO drives 'megatron' or 'vllm'")
                if d.max_seq_length + gen.max_new_tokens > recipe.model.seq_length:
                    errors.append(
                        f"data.max_seq_length + generation.max_new_tokens = {d.max_seq_length + gen.max_new_tokens} "
                        f"exceeds model.seq_length={recipe.model.seq_length}"
                    )
            megatron_engine = gen is not None and gen.engine == "megatron"
            if megatron_engine and recipe.parallel.pipeline_model_parallel_size > 1:
                errors.append(
                    "parallel.pipeline_model_parallel_size > 1 with generation.engine='megatron': it decodes with the "
                    "whole model on each rank; use generation.engine='vllm' for a pipelined policy"
                )
            if megatron_engine and gen.tensor_model_parallel_size != recipe.parallel.tensor_model_parallel_size:
                errors.append(
                    "generation.tensor_model_parallel_size must equal parallel.tensor_model_parallel_size with the "
                    "megatron engine (it generates with the policy at its training TP)"
                )
        else:
            if pref.num_generations != defaults.num_generations:
                errors.append("preference.num_generations is an online-RPO setting")
            for part in ("generation", "rewards"):
                if getattr(recipe, part) is not None:
                    errors.append(f"offline RPO does not use {part}; set it to null (or preference.mode='online')")
    if not online:
        if d.dataset != "preference_pairs":
            errors.append(f"task {task!r} (offline) reads preference pairs: set data.dataset='preference_pairs'")
        if d.max_seq_length > recipe.model.seq_length:
            errors.append(f"data.max_seq_length={d.max_seq_length} exceeds model.seq_length={recipe.model.seq_length}")
        if recipe.reward_workers is not None:
            errors.append("reward_workers applies to online RPO only (offline pairs carry their rewards)")
        defaults_rl = type(recipe)(name="_", task="sft")
        for name in ("reward_timeout_s", "max_reward_failure_rate"):
            if getattr(recipe, name) != getattr(defaults_rl, name):
                errors.append(f"{name} applies to online RPO only (offline pairs carry their rewards)")
    if d.pack_sequences:
        errors.append("data.pack_sequences is an SFT setting; preference batches keep pairs side by side")
    if not d.dynamic_padding:
        errors.append("data.dynamic_padding=false is an SFT setting; preference steps pad to their longest pair")
    if d.reasoning != "both" or d.splits:
        errors.append("data.reasoning / data.splits filter Post-Training SFT rows; the preference tasks read all rows")
    ev = recipe.evaluation
    if ev.num_samples and not d.eval_path:
        errors.append("evaluation.num_samples > 0 needs data.eval_path (held-out pairs, or prompts for online RPO)")
    if ev.max_new_tokens is not None or ev.accuracy_reward is not None or ev.format_reward is not None:
        if not online:
            errors.append("evaluation.max_new_tokens / accuracy_reward / format_reward: online RPO settings only")
    if not online and not ev.greedy:
        errors.append("evaluation.greedy applies to online RPO (held-out replies); pair evaluations are exact")
    if ev.batch_size != type(ev)().batch_size:
        errors.append("evaluation.batch_size is an SFT setting; preference evaluations use micro_batch_size")
    if recipe.parallel.context_parallel_size > 1:
        errors.append("parallel.context_parallel_size > 1: the preference tasks do not split sequences over CP yet")
    return errors


def preference_input_errors(recipe: RecipeConfig) -> list[str]:
    """The preference-pair files exist (called with the other input checks); returns the errors."""
    errors: list[str] = []
    d = recipe.data
    if d.dataset == "preference_pairs":
        if not d.path:
            from nemotron_plugins.data.sources import missing_path_message

            errors.append(
                f"{missing_path_message(d)}; the file must be a JSONL of preference pairs (prompt, chosen, rejected, "
                "and chosen_reward / rejected_reward for RPO: nemotron_plugins.preference.data)"
            )
        elif not Path(d.path).is_file():
            errors.append(f"data.path={d.path} does not exist (a JSONL of preference pairs)")
        if d.eval_path and not Path(d.eval_path).is_file():
            errors.append(f"data.eval_path={d.eval_path} does not exist")
    return errors
