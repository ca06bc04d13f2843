"""Chat RLHF with preference learning: reward models and RPO (SYSTEM.md section 3, issue 18).

Paper settings (Llama-Nemotron): Super 49B runs online RPO against a reward model (lr 4e-7, KL beta 1e-5, reward
scale 3.0, batch 64); Nano 8B runs offline RPO (lr 7e-7, beta 3e-2, batch 512). Batches count preference pairs.

The tiny CPU recipes demonstrate the pipeline on the synthetic letters task of
:mod:`nemotron_plugins.preference.synthetic` (write its files first)::

    python -m nemotron_plugins.preference.synthetic write runs/preference_data
    nemotron-plugins train tiny_preference_sft_cpu      # the policy
    nemotron-plugins train tiny_reward_model_cpu        # the reward model
    nemotron-plugins train tiny_rpo_online_cpu          # online RPO scored by the trained reward model
    nemotron-plugins train tiny_rpo_offline_cpu         # offline RPO on the pairs file with its rule scores
"""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import (
    ClusterConfig,
    DataConfig,
    EvalConfig,
    GenerationConfig,
    RecipeConfig,
    RewardSpec,
)
from nemotron_plugins.preference.config import PreferenceConfig
from nemotron_plugins.runtime.config import LoggingConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    NANO_8B_CONFIG,
    NEMO_CONTAINER,
    POST_TRAINING_DATASET,
    SUPER_49B_CONFIG,
    gpu_logging,
    paper_model,
    param_balanced_layout,
    tiny_cluster,
    tiny_data,
    tiny_model,
    tiny_sft_optimizer,
    vllm_generation,
)

TINY_DATA_DIR = "runs/preference_data"
"""Where ``python -m nemotron_plugins.preference.synthetic write`` puts the tiny task's files (relative to the
working directory, as ``runs/`` is)."""
TINY_RM_CHECKPOINT = "runs/tiny_reward_model_cpu/checkpoints"
"""The tiny reward model the tiny online RPO recipe scores with (``nemotron-plugins train tiny_reward_model_cpu``)."""
HELPSTEER = "nvidia/HelpSteer2"
"""A public source of scored preference pairs for offline RPO (its preference split, converted to the JSONL of
:mod:`nemotron_plugins.preference.data`: prompt, chosen, rejected and their scores)."""
TINY_SEQ = 128
HELDOUT = 500


def _pairs(split: str) -> str:
    return f"{TINY_DATA_DIR}/pairs_{split}.jsonl"


def tiny_preference_sft_cpu_config() -> RecipeConfig:
    """SFT of the tiny Puzzle model on the letters task (replies follow the rule only partly: room for RPO)."""
    return RecipeConfig(
        name="tiny_preference_sft_cpu",
        task="sft",
        description="Tiny Puzzle model, SFT on the synthetic letters task (the policy and reward-model backbone), CPU",
        model=tiny_model(TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=tiny_sft_optimizer(),
        logging=LoggingConfig(log_interval=50, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/sft.jsonl",
            max_seq_length=TINY_SEQ,
            reasoning="off",
        ),
        train_steps=100,
        micro_batch_size=64,
        global_batch_size=64,
        seed=1234,
    )


def tiny_reward_model_cpu_config() -> RecipeConfig:
    """A Bradley-Terry reward model on the letters task's pairs (held-out accuracy on 500 pairs whose prompts were
    never trained on). The backbone is the tiny Puzzle architecture from a random initialisation: on 2 shared CPU
    cores this fits the ~10-minute budget; ``init_from_recipe=tiny_preference_sft_cpu`` starts it from the policy,
    as the paper's reward models start from a trained model."""
    return RecipeConfig(
        name="tiny_reward_model_cpu",
        task="reward_model",
        description="Tiny reward model (Puzzle backbone + scalar head), Bradley-Terry on synthetic pairs, CPU",
        model=tiny_model(TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=3e-4, warmup_steps=10, clip_grad=1.0, weight_decay=0.0),
        logging=LoggingConfig(log_interval=5, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            _pairs("train"),
            max_seq_length=TINY_SEQ,
            dataset="preference_pairs",
            eval_path=_pairs("heldout"),
        ),
        evaluation=EvalConfig(num_samples=HELDOUT, at_start=True),
        preference=PreferenceConfig(),
        train_steps=40,
        micro_batch_size=16,
        global_batch_size=32,
        seed=1234,
    )


def tiny_rpo_online_cpu_config() -> RecipeConfig:
    """Online RPO of the tiny SFT policy: 4 replies per prompt from the megatron engine, scored by the tiny reward
    model in-process (``megatron_reward_model``), bwd-KL RPO; held-out mean reward over 200 prompts."""
    return RecipeConfig(
        name="tiny_rpo_online_cpu",
        task="rpo",
        description="Tiny online RPO: policy samples scored by the tiny reward model, CPU",
        model=tiny_model(TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=2e-4, clip_grad=1.0, weight_decay=0.0),
        logging=LoggingConfig(log_interval=1, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/prompts_train.jsonl",
            max_seq_length=112,
            eval_path=f"{TINY_DATA_DIR}/prompts_heldout.jsonl",
        ),
        evaluation=EvalConfig(num_samples=200, at_start=True, greedy=True),
        rewards=[
            RewardSpec(
                name="megatron_reward_model", options={"checkpoint": TINY_RM_CHECKPOINT, "max_length": TINY_SEQ}
            )
        ],
        generation=GenerationConfig(engine="megatron", temperature=1.0, top_p=1.0, max_new_tokens=16, batch_size=128),
        preference=PreferenceConfig(mode="online", loss="bwd_kl", beta=0.1, reward_scale=3.0, num_generations=4),
        train_steps=16,
        micro_batch_size=16,
        global_batch_size=16,
        seed=1234,
        init_from_recipe="tiny_preference_sft_cpu",
    )


def tiny_rpo_offline_cpu_config() -> RecipeConfig:
    """Offline RPO of the tiny SFT policy on the pairs file (rule scores as rewards); held-out implicit-reward
    accuracy over 500 pairs."""
    return RecipeConfig(
        name="tiny_rpo_offline_cpu",
        task="rpo",
        description="Tiny offline RPO on synthetic pairs with rewards, CPU",
        model=tiny_model(TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=1e-4, clip_grad=1.0, weight_decay=0.0),
        logging=LoggingConfig(log_interval=10, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            _pairs("train"),
            max_seq_length=TINY_SEQ,
            dataset="preference_pairs",
            eval_path=_pairs("heldout"),
        ),
        evaluation=EvalConfig(num_samples=HELDOUT, at_start=True),
        preference=PreferenceConfig(mode="offline", loss="bwd_kl", beta=0.1, reward_scale=1.0),
        train_steps=60,
        micro_batch_size=32,
        global_batch_size=64,
        seed=1234,
        init_from_recipe="tiny_preference_sft_cpu",
    )


def _chat_prompts(chat_template: str, max_prompt_tokens: int) -> DataConfig:
    """Chat prompts (RL prompt rows: ``messages``, ``ground_truth``) from the post-training data's chat split."""
    return DataConfig(
        dataset="post_training",
        hub_id=POST_TRAINING_DATASET,
        chat_template=chat_template,
        max_seq_length=max_prompt_tokens,
    )


def llama_nemotron_super_49b_rpo_64gpu_h100_bf16_config() -> RecipeConfig:
    """Super 49B chat RLHF with online RPO (the paper's lr 4e-7, beta 1e-5, reward scale 3.0, batch 64): vLLM
    rollouts at TP4, replies scored by a reward model served over HTTP (the ``reward_model`` reward), 8 x 8 H100."""
    return RecipeConfig(
        name="llama_nemotron_super_49b_rpo_64gpu_h100_bf16",
        task="rpo",
        description="Chat RLHF: online RPO against a reward model server (lr 4e-7, beta 1e-5, eta 3), 8 x 8 H100",
        model=paper_model(SUPER_49B_CONFIG, 8192),
        parallel=ParallelConfig(
            tensor_model_parallel_size=8,
            sequence_parallel=True,
            pipeline_model_parallel_size=2,
            pipeline_layout=param_balanced_layout(SUPER_49B_CONFIG, 2),
            use_distributed_optimizer=True,
        ),
        optimizer=OptimizerConfig(lr=4e-7, bf16=True),
        logging=gpu_logging(),
        cluster=ClusterConfig(nodes=8, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER),
        data=_chat_prompts("llama-nemotron-super", 4096),
        rewards=[RewardSpec(name="reward_model", options={"url": "http://127.0.0.1:5000/score"})],
        generation=vllm_generation(4, max_new_tokens=4096, max_num_seqs=64),
        preference=PreferenceConfig(mode="online", loss="bwd_kl", beta=1e-5, reward_scale=3.0, num_generations=2),
        train_steps=200,
        micro_batch_size=1,
        global_batch_size=64,
        recompute="full",
    )


def llama_nemotron_nano_8b_rpo_8gpu_h100_bf16_config() -> RecipeConfig:
    """Nano 8B chat RLHF with offline RPO on scored preference pairs (the paper's lr 7e-7, beta 3e-2, batch 512),
    1 x 8 H100: TP2 + SP, DP4."""
    return RecipeConfig(
        name="llama_nemotron_nano_8b_rpo_8gpu_h100_bf16",
        task="rpo",
        description="Chat RLHF: offline RPO on preference pairs with rewards (lr 7e-7, beta 3e-2), 1 x 8 H100",
        model=paper_model(NANO_8B_CONFIG, 8192),
        parallel=ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=7e-7, bf16=True),
        logging=gpu_logging(),
        cluster=ClusterConfig(nodes=1, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER),
        data=DataConfig(
            dataset="preference_pairs", hub_id=HELPSTEER, chat_template="llama-nemotron-nano", max_seq_length=8192
        ),
        preference=PreferenceConfig(mode="offline", loss="bwd_kl", beta=3e-2, reward_scale=1.0),
        train_steps=100,
        micro_batch_size=1,
        global_batch_size=512,
        recompute="full",
    )
