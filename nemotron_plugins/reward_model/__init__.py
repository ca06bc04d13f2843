"""A Megatron reward model: the policy's Puzzle backbone plus a scalar head, trained with a Bradley-Terry loss.

- :mod:`~nemotron_plugins.reward_model.model`: :class:`RewardModel` (backbone ``GPTModel`` + head on the last
  token's final hidden state).
- :mod:`~nemotron_plugins.reward_model.trainer`: ``run_reward_model(config)`` (``task="reward_model"``) on the shared
  training stack, with held-out pair accuracy before and after.
- :mod:`~nemotron_plugins.reward_model.reward`: the ``megatron_reward_model`` reward, scoring prompt + reply with a
  saved reward model in-process.
"""
