"""The ``algorithm`` block of the run config: GRPO / RLOO rollout sizes, advantages and the clipped loss.

It is a part of :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` (``recipe.algorithm``), not a config
of its own: sampling lives in ``recipe.generation``, batch sizes in ``recipe.global_batch_size`` /
``micro_batch_size``, the seed in ``recipe.seed``. Defaults follow the Llama-Nemotron report's scientific-reasoning
GRPO run (LN-Ultra): 72 prompts per rollout with 16 samples each (1,152 sequences); with the recipe's global batch
of 576 sequences each rollout gives 2 gradient updates; a clipping epsilon of 0.2. :func:`rloo_config` returns the
instruction-following RLOO setup.

Plain data: no torch import, so a config can be built and validated anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

AlgorithmName = Literal["grpo", "rloo"]
LossAggregation = Literal["token", "sequence", "constant"]
RatioLevel = Literal["token", "sequence"]
PromptSharing = Literal["auto", "on", "off"]


class GRPOConfigError(ValueError):
    """A field of :class:`GRPOConfig` holds an invalid value."""


@dataclass(kw_only=True, slots=True)
class GRPOConfig:
    """One config for the GRPO family of algorithms (GRPO and RLOO differ only in their advantage estimator)."""

    algorithm: AlgorithmName = "grpo"
    """``"grpo"``: group-normalised advantages; ``"rloo"``: leave-one-out baseline without std normalisation.
    Selects the defaults of ``leave_one_out_baseline`` / ``normalize_advantages_by_std`` in :func:`rloo_config`;
    the two fields themselves decide what is computed."""

    # ---- rollout sizes -------------------------------------------------------------------------------------------
    num_prompts_per_rollout: int = 72
    """Prompts sampled per rollout (LN-Ultra GRPO: 72)."""
    num_generations: int = 16
    """Completions sampled per prompt, i.e. the group size (LN-Ultra GRPO: 16). Must be >= 2."""
    epochs_per_rollout: int = 1
    """Passes over each rollout's samples. Optimizer steps per rollout = epochs * rollout size / the recipe's
    ``global_batch_size`` (LN-Ultra: 1 * 1152 / 576 = 2)."""

    # ---- advantages ----------------------------------------------------------------------------------------------
    leave_one_out_baseline: bool = False
    """Baseline of each sample = mean reward of the OTHER samples of its group (RLOO) instead of the group mean."""
    normalize_advantages_by_std: bool = True
    """Divide (reward - baseline) by the group's reward std, only in groups whose std > 0 (others keep the raw,
    all-zero difference)."""
    std_unbiased: bool = True
    """Use Bessel's correction (divide by n - 1) in the group std, as TRL and NeMo-RL do; False divides by n."""
    std_epsilon: float = 0.0
    """Added to the std before dividing. 0 = exact division where std > 0; TRL uses 1e-4 everywhere."""
    leave_one_out_std: bool = False
    """With ``leave_one_out_baseline`` and ``normalize_advantages_by_std``: divide each sample's advantage by the std
    of the OTHER valid samples of its group (NeMo-RL's default), only where that std is > 0, instead of the whole
    group's std."""
    skip_uniform_groups: bool = True
    """Leave groups whose rewards are all equal (zero advantage, no learning signal) out of the update."""

    # ---- loss ----------------------------------------------------------------------------------------------------
    epsilon: float = 0.2
    """Clip range of the probability ratio: [1 - epsilon, 1 + epsilon_high] (paper: 0.2)."""
    epsilon_high: float | None = None
    """Upper clip epsilon; ``None`` uses ``epsilon`` (symmetric). A larger value ("clip-higher") lets rare tokens
    with positive advantage grow faster."""
    beta: float = 0.0
    """Coefficient of the KL penalty to the frozen reference policy (k3 estimator exp(r) - 1 - r with
    r = logp_ref - logp). 0 skips the reference model entirely. LN-Ultra's chat GRPO used 1e-3."""
    loss_aggregation: LossAggregation = "token"
    """``"token"``: sum of per-token losses divided by the number of completion tokens in the GLOBAL batch (every
    token weighs the same); ``"sequence"``: each sequence's token mean, averaged over the global batch's sequences;
    ``"constant"`` (Dr. GRPO): sum of per-token losses divided by (sequences in the global batch x the generation
    budget ``generation.max_new_tokens``), a normaliser that does not depend on the lengths sampled."""
    ratio_level: RatioLevel = "token"
    """``"token"``: one probability ratio per token (PPO / GRPO); ``"sequence"`` (GSPO): one ratio per sequence, the
    geometric mean of its token ratios ``exp(mean_t(logp_t - logp_old_t))``, clipped at sequence level (GSPO uses
    ``loss_aggregation="sequence"`` and a much smaller ``epsilon``)."""
    dual_clip: float | None = None
    """Dual clip (Ye et al. 2020, verl's ``clip_ratio_c``): for negative advantages the per-token loss is capped at
    ``-A * dual_clip``, so a huge ratio cannot blow up the update. ``None`` = off; must be > 1 (verl: 3.0)."""
    kl_input_clamp: float | None = 20.0
    """The log-ratio ``logp_ref - logp`` entering the k3 KL is clamped to [-c, c] before ``exp`` (NeMo-RL / verl:
    20), so a token the reference finds vastly likelier cannot overflow. ``None`` = no clamp."""
    kl_output_clamp: float | None = 10.0
    """The per-token k3 value is clamped to at most this (NeMo-RL / verl: 10). ``None`` = no clamp."""
    overlong_filtering: bool = False
    """DAPO's overlong filtering: samples truncated at the length limit (no end of sequence) leave the loss (their
    tokens are not trained on); they still count in their group's advantages."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: over the last ``overlong_buffer`` tokens before the generation budget
    ``L = generation.max_new_tokens``, the reward gets ``-overlong_penalty * (length - (L - overlong_buffer)) /
    overlong_buffer`` (linear from 0 to ``-overlong_penalty`` at ``L``). 0 = off; must be < ``L``."""
    overlong_penalty: float = 1.0
    """The soft overlong penalty at the full generation budget (verl's ``overlong_buffer.penalty_factor``)."""
    importance_sampling_correction: bool = False
    """Multiply each token's policy-gradient term by the truncated ratio pi_old / pi_generator (trainer log-probs at
    rollout time over the generator's log-probs), correcting the mismatch between the rollout engine and the
    trainer (vLLM FP8 vs Megatron bf16)."""
    importance_sampling_cap: float | None = 2.0
    """Upper truncation of the importance-sampling weight; ``None`` leaves it unbounded."""

    # ---- trainer side (issue 17): dynamic sampling ----------------------------------------------------------------
    max_refill_rounds: int = 2
    """With ``skip_uniform_groups``: extra rollouts (each of ``num_prompts_per_rollout`` new prompts from the
    sampler) drawn at most to refill the optimizer batch to ``num_prompts_per_rollout`` groups with signal (DAPO's
    dynamic sampling); the surplus of the last round is dropped. 0 trains on the groups left after skipping."""
    refill_prompts: int | None = None
    """Prompts a refill round generates for: the first ``refill_prompts`` of the sampler's next batch (the rest of
    that batch is skipped). ``None``: the whole batch, ``num_prompts_per_rollout`` (DAPO / verl). Smaller rounds cost
    fewer rollouts when only a few groups are missing, at the price of more rounds when many are."""

    # ---- trainer side: update layout ------------------------------------------------------------------------------
    prompt_sharing: PromptSharing = "auto"
    """Run a group's prompt through the policy once per micro-batch instead of once per completion (one row per
    group: the prompt, then each completion attending to the prompt and itself; :mod:`nemotron_plugins.rl.
    shared_prompt`). Same log-probs and gradients. ``"auto"``: per micro-batch where its cost estimate is lower than
    padding each completion's row (long prompts, short completions) and the layout is possible (unpacked micro-batches
    on one pipeline stage, no context parallelism, SDPA core attention); ``"on"``: always (an error where it is not
    possible); ``"off"``: never."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def rollout_size(self) -> int:
        """Sequences generated per rollout (prompts x generations)."""
        return self.num_prompts_per_rollout * self.num_generations

    def updates_per_rollout(self, global_batch_size: int) -> int:
        """Optimizer steps taken on each rollout with ``global_batch_size`` sequences per step."""
        return self.epochs_per_rollout * self.rollout_size // global_batch_size

    @property
    def clip_high(self) -> float:
        """The effective upper clip epsilon."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def validate(self) -> None:
        """Check every field; raise :class:`GRPOConfigError` naming the first bad one and what would be valid."""

        def bad(name: str, value: Any, valid: str) -> GRPOConfigError:
            return GRPOConfigError(f"GRPOConfig.{name} = {value!r} is invalid: {valid}")

        if self.algorithm not in ("grpo", "rloo"):
            raise bad("algorithm", self.algorithm, "use 'grpo' or 'rloo'")
        for name in ("num_prompts_per_rollout", "epochs_per_rollout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "must be an integer >= 1")
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise bad("num_generations", self.num_generations, "a group needs at least 2 samples (integer >= 2)")
        if self.std_epsilon < 0:
            raise bad("std_epsilon", self.std_epsilon, "must be >= 0")
        if not 0 < self.epsilon < 1:
            raise bad("epsilon", self.epsilon, "must be in (0, 1)")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise bad("epsilon_high", self.epsilon_high, "must be > 0 or None")
        if self.beta < 0:
            raise bad("beta", self.beta, "must be >= 0 (0 disables the KL penalty and the reference model)")
        if self.loss_aggregation not in ("token", "sequence", "constant"):
            raise bad("loss_aggregation", self.loss_aggregation, "use 'token', 'sequence' or 'constant'")
        if self.importance_sampling_cap is not None and not self.importance_sampling_cap > 0:
            raise bad("importance_sampling_cap", self.importance_sampling_cap, "must be > 0 or None")
        if self.leave_one_out_std and not (self.leave_one_out_baseline and self.normalize_advantages_by_std):
            raise bad(
                "leave_one_out_std",
                self.leave_one_out_std,
                "needs leave_one_out_baseline=true and normalize_advantages_by_std=true (it is the std of the other "
                "samples that the leave-one-out advantage is divided by)",
            )
        if self.ratio_level not in ("token", "sequence"):
            raise bad("ratio_level", self.ratio_level, "use 'token' (PPO / GRPO) or 'sequence' (GSPO)")
        if self.dual_clip is not None and not (
            isinstance(self.dual_clip, int | float) and not isinstance(self.dual_clip, bool) and self.dual_clip > 1
        ):
            raise bad("dual_clip", self.dual_clip, "must be a number > 1 (verl uses 3.0) or None")
        for name in ("kl_input_clamp", "kl_output_clamp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise bad(name, value, "must be > 0 or None")
        if (
            not isinstance(self.overlong_buffer, int)
            or isinstance(self.overlong_buffer, bool)
            or self.overlong_buffer < 0
        ):
            raise bad(
                "overlong_buffer", self.overlong_buffer, "must be an integer >= 0 (0 = no soft overlong penalty)"
            )
        if not self.overlong_penalty > 0:
            raise bad("overlong_penalty", self.overlong_penalty, "must be > 0 (set overlong_buffer=0 to turn it off)")
        if not isinstance(self.max_refill_rounds, int) or isinstance(self.max_refill_rounds, bool):
            raise bad("max_refill_rounds", self.max_refill_rounds, "must be an integer >= 0")
        if self.max_refill_rounds < 0:
            raise bad("max_refill_rounds", self.max_refill_rounds, "must be an integer >= 0")
        if self.prompt_sharing not in ("auto", "on", "off"):
            raise bad("prompt_sharing", self.prompt_sharing, "use 'auto', 'on' or 'off'")
        if self.refill_prompts is not None and (
            not isinstance(self.refill_prompts, int)
            or isinstance(self.refill_prompts, bool)
            or not 1 <= self.refill_prompts <= self.num_prompts_per_rollout
        ):
            raise bad(
                "refill_prompts",
                self.refill_prompts,
                f"must be None or an integer in [1, num_prompts_per_rollout={self.num_prompts_per_rollout}]",
            )

    def replace(self, **changes: Any) -> GRPOConfig:
        """Return a validated copy with ``changes`` applied; unknown names raise with the list of valid fields."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise GRPOConfigError(f"unknown GRPOConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        return replace(self, **changes)


def grpo_config(**overrides: Any) -> GRPOConfig:
    """GRPO with the LN-Ultra scientific-reasoning defaults, plus ``overrides``."""
    return GRPOConfig().replace(algorithm="grpo", **overrides)


def rloo_config(**overrides: Any) -> GRPOConfig:
    """RLOO as used for instruction-following RL: batch of 128 prompts, leave-one-out baseline, no std division.

    The report gives the batch (128 prompts) and fewer than 120 steps; the group size is not stated, we use 8, with
    one update per rollout (the recipe's global batch = 128 x 8).
    """
    defaults: dict[str, Any] = {
        "algorithm": "rloo",
        "num_prompts_per_rollout": 128,
        "num_generations": 8,
        "leave_one_out_baseline": True,
        "normalize_advantages_by_std": False,
    }
    defaults.update(overrides)
    return GRPOConfig().replace(**defaults)


def _preset(defaults: dict[str, Any], overrides: dict[str, Any]) -> GRPOConfig:
    return GRPOConfig().replace(**{**defaults, **overrides})


def loo_grpo_config(**overrides: Any) -> GRPOConfig:
    """GRPO with NeMo-RL's default advantages: leave-one-out baseline divided by the leave-one-out std."""
    return _preset(
        {
            "algorithm": "grpo",
            "leave_one_out_baseline": True,
            "normalize_advantages_by_std": True,
            "leave_one_out_std": True,
        },
        overrides,
    )


def dr_grpo_config(**overrides: Any) -> GRPOConfig:
    """Dr. GRPO (Liu et al. 2025): no std division, loss normalised by a constant (sequences x generation budget)."""
    return _preset(
        {"algorithm": "grpo", "normalize_advantages_by_std": False, "loss_aggregation": "constant"}, overrides
    )


def gspo_config(**overrides: Any) -> GRPOConfig:
    """GSPO (Zheng et al. 2025): sequence-level ratios clipped to [1 - 3e-4, 1 + 4e-4], sequence-mean loss."""
    return _preset(
        {
            "algorithm": "grpo",
            "ratio_level": "sequence",
            "loss_aggregation": "sequence",
            "epsilon": 3e-4,
            "epsilon_high": 4e-4,
        },
        overrides,
    )


def dapo_config(**overrides: Any) -> GRPOConfig:
    """DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), token-level loss, no KL, overlong filtering and a soft
    overlong penalty over the last 4,096 tokens of the budget (the paper's 16,384 / 20,480 split); the batch refill
    of dynamic sampling is a trainer setting."""
    return _preset(
        {
            "algorithm": "grpo",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
            "loss_aggregation": "token",
            "beta": 0.0,
            "overlong_filtering": True,
            "overlong_buffer": 4096,
            "overlong_penalty": 1.0,
        },
        overrides,
    )
