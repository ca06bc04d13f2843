"""The GRPO / RLOO training loop on megatron-core: curriculum sampler -> rollouts -> rewards -> advantages -> update.

The policy is the Puzzle ``GPTModel`` (:func:`nemotron_plugins.puzzle.model.build_puzzle_model`) wrapped in
megatron-core's ``DistributedDataParallel`` with megatron's optimizer, at any TP / PP / DP layout that
:func:`nemotron_plugins.runtime.distributed.init_distributed` builds (gloo on CPU, NCCL on GPU). One step of
:func:`run_grpo`:

1. the batch sampler (the progressive-Gaussian curriculum over estimated pass rates, or uniform) hands out
   ``num_prompts_per_rollout`` prompt indices, the same on every rank;
2. rollouts: each data-parallel replica samples ``num_generations`` completions for its share of the prompts with
   the rollout engine (``megatron``: megatron-core's static KV cache on the policy itself; every TP rank of a replica
   draws the same tokens from the same seed), seeded per step and replica so a resumed run draws the same samples;
   the replicas' rollouts are all-gathered;
3. rewards: every rank scores a 1/world slice of the samples, each reward in a pool of worker processes with a hard
   per-sample time bound (``reward_workers``, ``reward_timeout_s``); the scores are all-gathered; the weighted sum
   is the reward. A sample whose reward gave no verdict (timeout / error / unavailable) is NaN, not 0: it leaves
   the advantages and the update, is counted in ``reward_failures/*``, and past ``max_reward_failure_rate`` the
   run stops naming the reward and its last error (a reward routed to other rows is "not applicable", not a
   failure);
4. group-relative advantages (:mod:`nemotron_plugins.rl.advantages`); groups whose rewards are all equal carry no
   signal and are skipped (``skip_uniform_groups``), and up to ``algorithm.max_refill_rounds`` extra rollouts on
   the sampler's next prompts refill the update to ``num_prompts_per_rollout`` groups (dynamic sampling);
5. update: the kept samples are split into ``updates_per_rollout / epochs_per_rollout`` global batches, run once
   per epoch (the LR schedule of ``optimizer`` advances once per optimizer step); each global batch is
   split over the data-parallel replicas and run through megatron's ``forward_backward_func`` (1F1B pipelining when
   PP > 1) with the clipped loss (:func:`nemotron_plugins.rl.loss.compute_policy_loss`, token-level mean over the
   GLOBAL batch: each micro-batch's loss is already divided by the global token count, so
   ``calculate_per_token_loss`` keeps megatron from rescaling and DDP sums the replicas' gradients);
   ``finalize_model_grads`` reduces the gradients (DP, sequence-parallel norms, tied embeddings) and megatron's
   optimizer clips and steps. Log-probs come from vocab-parallel cross entropy on the logits of the real vocabulary
   (megatron's padding ids masked), at the sampling temperature;
6. weight sync: the ``megatron`` engine samples from the trained module itself (nothing to copy); other engines get
   :meth:`~nemotron_plugins.rl.engines.base.RolloutEngine.update_weights` after every step;
7. metrics (rewards per component, accuracy, advantage stats, KL, clip fraction, response length, tokens/s) go to the
   console (progress bar), a JSONL file and TensorBoard / W&B when configured; an atomic checkpoint (every rank its
   shard) holds the model, optimizer, sampler position, pass rates and RNG, so a killed run resumes exactly.

The run reads the recipe's :class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` directly (``algorithm``,
``generation``, ``rewards``, ``sampler``, ``evaluation``, ``data``...): there is no second RL schema. The model,
optimizer and LR scheduler come from the shared training stack (:mod:`nemotron_plugins.training`).

The code lives in three modules behind small interfaces (NeMo-RL's split); this module is their public face:

* :mod:`nemotron_plugins.rl.controller`: the algorithm loop (data, curriculum, rewards, advantages, dynamic
  sampling, metrics, checkpoint cadence), no Megatron in it;
* :mod:`nemotron_plugins.rl.policy_worker`: :class:`MegatronPolicyWorker`, the Megatron policy's log-probs and
  updates at the training TP / PP / DP layout (:func:`policy_update`, packed micro-batches);
* :mod:`nemotron_plugins.rl.generation`: :class:`GenerationWorker`, a rollout engine at its
  :class:`GenerationLayout` plus the refit after each update.

Public API::

    run_grpo(config: RecipeConfig) -> GRPOResult
    train_step(step=, policy=, generation=, config=, ...) -> dict   # one rollout + update
    policy_update(model, optimizer, batch, config) -> dict   # one rollout's gradient updates (any TP / PP / DP)
    evaluate_policy(generation, tokenizer, rows, rewards, ...) -> dict   # held-out accuracy, sampled and greedy
"""

from __future__ import annotations

from nemotron_plugins.rl.controller import (
    FAILED_STATUSES,
    GRPOResult,
    RewardFailureError,
    RewardScores,
    RolloutRound,
    accuracy_reward_name,
    build_rewards,
    check_reward_failures,
    decode_completions,
    distributed_score,
    encode_prompts,
    estimate_pass_rates,
    evaluate_policy,
    load_prompt_rows,
    reward_failure_metrics,
    rollout_round,
    run_grpo,
    sampler_settings,
    score_completions,
    select_groups,
    train_step,
)
from nemotron_plugins.rl.generation import (
    EMBEDDED_ENGINES,
    TRAINER_ENGINES,
    GenerationLayout,
    GenerationWorker,
    Samples,
    build_engine,
    distributed_rollout,
    engine_settings,
)
from nemotron_plugins.rl.policy_worker import (
    MegatronPolicyWorker,
    PolicyBatch,
    UpdatePlan,
    build_policy,
    pack_policy_batch,
    plan_micro_batches,
    policy_update,
)

__all__ = [
    "EMBEDDED_ENGINES",
    "FAILED_STATUSES",
    "TRAINER_ENGINES",
    "GRPOResult",
    "GenerationLayout",
    "GenerationWorker",
    "MegatronPolicyWorker",
    "PolicyBatch",
    "RewardFailureError",
    "RewardScores",
    "RolloutRound",
    "Samples",
    "UpdatePlan",
    "accuracy_reward_name",
    "build_engine",
    "build_policy",
    "build_rewards",
    "check_reward_failures",
    "decode_completions",
    "distributed_rollout",
    "distributed_score",
    "encode_prompts",
    "engine_settings",
    "estimate_pass_rates",
    "evaluate_policy",
    "load_prompt_rows",
    "pack_policy_batch",
    "plan_micro_batches",
    "policy_update",
    "reward_failure_metrics",
    "rollout_round",
    "run_grpo",
    "sampler_settings",
    "score_completions",
    "select_groups",
    "train_step",
]
