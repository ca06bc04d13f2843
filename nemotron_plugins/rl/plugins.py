"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations

from nemotron_plugins.registry import ALGORITHMS, ROLLOUT_ENGINES


def register() -> None:
    """Register this area's builtin plugins: the GRPO/RLOO algorithms (and the GRPO presets) and the rollout
    engines."""
    ALGORITHMS.register("grpo", "nemotron_plugins.rl.algorithms:GRPO")
    ALGORITHMS.register("rloo", "nemotron_plugins.rl.algorithms:RLOO")
    for preset in ("loo_grpo", "dr_grpo", "gspo", "dapo"):  # default configs of the same hooks (algorithm="grpo")
        ALGORITHMS.register(preset, f"nemotron_plugins.rl.algorithms:{preset.upper()}")
    ROLLOUT_ENGINES.register("megatron", "nemotron_plugins.rl.engines.megatron_engine:MegatronRolloutEngine")
    ROLLOUT_ENGINES.register("vllm", "nemotron_plugins.rl.engines.vllm_engine:VLLMRolloutEngine")
    ROLLOUT_ENGINES.register("openai", "nemotron_plugins.rl.engines.openai_engine:OpenAIRolloutEngine")
