"""Tiny CPU recipes: SFT then GRPO on a ~1M-parameter heterogeneous model, synthetic addition data, no downloads.

Settings follow the study in SYSTEM.md section 5: half of the SFT traces are corrupted (a forgotten carry with a
consistent answer) so SFT leaves headroom, then GRPO (16 prompts x 8 responses, clip 0.2, no KL, lr 5e-5, one update
per rollout, uniform-reward groups skipped, ``math`` + ``think_format`` rewards) recovers accuracy. Both stages use
reasoning-on data, as the study did (the RL prompts are reasoning-on). ``tiny_puzzle_grpo_cpu`` starts from the SFT
recipe's checkpoint and ``nemotron-plugins train`` runs the SFT stage first when that checkpoint is missing.

Measured (2 CPU cores, n = 500 held-out prompts, sampled at T=1 / greedy): the SFT stage's outcome depends strongly
on its seed (greedy 0.460 at the default seed 1234, 0.718 at ``seed=1``, 0.274 at ``seed=2``) and GRPO's 80 steps
end where that start allows: 0.234 -> 0.716 / 0.460 -> 0.818 (seed 1234), 0.392 -> 0.878 / 0.718 -> 0.906 (seed 1),
0.170 -> 0.934 / 0.274 -> 0.992 (seed 2); from the first-wave trainer's SFT checkpoint 0.280 -> 0.928 / 0.396 ->
0.976. The table and commands are in the README ("The spread is the SFT stage's, not GRPO's").
"""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import (
    DataConfig,
    EvalConfig,
    GenerationConfig,
    RecipeConfig,
    RewardSpec,
    SyntheticDataConfig,
)
from nemotron_plugins.runtime.config import LoggingConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    tiny_cluster,
    tiny_grpo_algorithm,
    tiny_model,
    tiny_sft_optimizer,
)

SEQ_LENGTH = 256
MAX_PROMPT_TOKENS = 128
MAX_NEW_TOKENS = 64


SFT_PROBLEMS = 4000
"""Synthetic training problems of the SFT stage; the GRPO stage writes the same problems (same seed) so its
held-out prompts are exactly the SFT stage's held-out problems, disjoint from everything SFT trained on."""


HELDOUT_PROBLEMS = 500
"""Held-out problems of both stages (never trained on); every one is evaluated."""


def _data(*, max_seq_length: int, num_train_samples: int | None = None, corrupt_fraction: float = 0.0) -> DataConfig:
    """The synthetic addition task, chosen explicitly; both stages write the same problems (same seed)."""
    return DataConfig(
        dataset="synthetic_addition",
        reasoning="on",
        chat_template="llama-nemotron-super",
        tokenizer="tiny",
        max_seq_length=max_seq_length,
        num_train_samples=num_train_samples,
        synthetic=SyntheticDataConfig(
            problems=SFT_PROBLEMS,
            heldout_problems=HELDOUT_PROBLEMS,
            corrupt_fraction=corrupt_fraction,
            min_value=10,
            max_value=999,
            seed=0,
        ),
    )


def tiny_puzzle_sft_cpu_config() -> RecipeConfig:
    """SFT of the tiny Puzzle model on synthetic addition with half of the traces corrupted (2 CPU cores: ~0.6 s/step
    with dynamic padding to 112 tokens, ~10 minutes for the 800 steps plus the held-out evaluation)."""
    return RecipeConfig(
        name="tiny_puzzle_sft_cpu",
        task="sft",
        description="Tiny Puzzle model, SFT on synthetic addition (50% corrupted traces leave room for GRPO), CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=tiny_sft_optimizer(),
        logging=LoggingConfig(log_interval=50, progress_bar=False),
        cluster=tiny_cluster(),
        data=_data(max_seq_length=SEQ_LENGTH, corrupt_fraction=0.5),
        evaluation=EvalConfig(num_samples=HELDOUT_PROBLEMS, at_start=False, max_new_tokens=64, batch_size=64),
        train_steps=800,
        micro_batch_size=64,
        global_batch_size=64,
        seed=1234,
    )


def tiny_puzzle_grpo_cpu_config() -> RecipeConfig:
    """GRPO of the tiny SFT model on synthetic addition with an exact-answer reward (CPU, a few minutes)."""
    return RecipeConfig(
        name="tiny_puzzle_grpo_cpu",
        task="grpo",
        description="Tiny Puzzle model, GRPO on synthetic addition from the tiny SFT checkpoint, CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=5e-5, clip_grad=1.0),
        logging=LoggingConfig(log_interval=10, progress_bar=False),
        cluster=tiny_cluster(),
        data=_data(max_seq_length=MAX_PROMPT_TOKENS, num_train_samples=1024),
        evaluation=EvalConfig(
            num_samples=HELDOUT_PROBLEMS,
            interval=20,
            greedy=True,
            accuracy_reward="math",
            format_reward="think_format",
        ),
        sampler=None,  # prompts uniformly at random (the measured run); the curriculum is one override away
        rewards=[RewardSpec(name="math", weight=1.0), RewardSpec(name="think_format", weight=0.5)],
        algorithm=tiny_grpo_algorithm(16),
        generation=GenerationConfig(
            engine="megatron", temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, batch_size=128
        ),
        train_steps=80,
        micro_batch_size=64,
        global_batch_size=128,
        seed=1234,
        init_from_recipe="tiny_puzzle_sft_cpu",
    )
