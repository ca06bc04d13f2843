"""``reward_model``: chat responses scored by an HTTP reward-model server (chat RLHF).

Requests carry whole conversations: the prompt (chat messages, or a string taken as one user turn) plus the
completion as the assistant turn, with any ``<think>...</think>`` removed (the Llama-Nemotron chat template never
shows reasoning to later turns, and the reward model judges the answer). Two wire formats:

* ``"messages"`` (default): ``POST url {"messages": [[{"role", "content"}, ...], ...]}`` -> ``{"rewards": [float, ...]}``
* ``"openrlhf"``: OpenRLHF's remote reward server, ``POST url {"query": [text, ...]}`` -> ``{"rewards": [...]}``,
  where each text is the rendered conversation (``"role: content"`` lines, or ``render`` if given).

``"scores"`` is accepted in place of ``"rewards"`` in replies. Samples are sent in sub-batches of ``batch_size``,
at most ``max_concurrency`` at once, with the same deadlines and retries as ``llm_judge``; a failed sub-batch gives
its samples status ``timeout`` or ``error``. ``scale`` and ``offset`` map the raw reward: ``scale * r + offset``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from nemotron_plugins.rewards.base import Reward, RewardResult, RewardSample
from nemotron_plugins.rewards.http_client import HTTPCallError, RetryPolicy, post_json
from nemotron_plugins.rewards.text import split_think


def conversation(sample: RewardSample) -> list[dict[str, str]]:
    """The sample as chat messages ending in the assistant's reply (reasoning removed)."""
    prompt = sample.prompt
    if prompt is None:
        messages: list[dict[str, str]] = []
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in prompt]
    answer = split_think(sample.completion).answer.strip()
    return [*messages, {"role": "assistant", "content": answer}]


def _plain_render(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class RewardModelReward(Reward):
    """Scores from an HTTP reward-model server.

    Args:
        url: Full endpoint URL, e.g. ``http://127.0.0.1:5000/score``.
        request_format: ``"messages"`` or ``"openrlhf"``.
        render: For ``"openrlhf"``: conversation -> text (default ``"role: content"`` lines).
        batch_size: Samples per request.
        max_concurrency: Requests in flight at once.
        timeout_s: Total deadline of one request attempt.
        max_retries: Retries for retryable failures.
        backoff_s: First retry's backoff.
        scale: Multiplier applied to the raw reward.
        offset: Added after scaling.
        api_key: Bearer token (default: the environment variable ``api_key_env``).
        api_key_env: Environment variable holding the key.
    """

    name = "reward_model"
    bounded = True  # every request has a deadline and a response-size bound

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:5000/score",
        request_format: str = "messages",
        render: Callable[[list[dict[str, str]]], str] | None = None,
        batch_size: int = 16,
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        scale: float = 1.0,
        offset: float = 0.0,
        api_key: str | None = None,
        api_key_env: str = "REWARD_MODEL_API_KEY",
    ) -> None:
        if request_format not in ("messages", "openrlhf"):
            raise ValueError(f"reward_model: request_format must be 'messages' or 'openrlhf', got {request_format!r}")
        if batch_size < 1 or max_concurrency < 1:
            raise ValueError("reward_model: batch_size and max_concurrency must be >= 1")
        self.url = url
        self.request_format = request_format
        self.render = render or _plain_render
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.policy = RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s)
        self.scale = float(scale)
        self.offset = float(offset)
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)

    def _request(self, batch: list[RewardSample]) -> list[RewardResult]:
        convs = [conversation(s) for s in batch]
        body = {"messages": convs} if self.request_format == "messages" else {"query": [self.render(c) for c in convs]}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            reply = post_json(self.url, body, headers=headers, policy=self.policy)
        except HTTPCallError as err:
            return [RewardResult(score=0.0, status=err.reward_status, message=str(err)) for _ in batch]
        rewards = None
        if isinstance(reply, Mapping):
            rewards = reply.get("rewards", reply.get("scores"))
        if not isinstance(rewards, list) or len(rewards) != len(batch):
            got = (
                f"{len(rewards)} rewards" if isinstance(rewards, list) else f"{type(reply).__name__} {str(reply)[:80]}"
            )
            return [
                RewardResult.error(
                    f"reward_model: {self.url} must return {{'rewards': [{len(batch)} numbers]}}, got {got}"
                )
            ] * len(batch)
        out = []
        for value in rewards:
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                out.append(RewardResult.error(f"reward_model: non-numeric reward {value!r}"))
            else:
                out.append(
                    RewardResult(score=self.scale * float(value) + self.offset, components={"raw": float(value)})
                )
        return out

    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score every sample; one result per sample, in input order, never raising."""
        samples = list(samples)
        results: list[RewardResult | None] = [None] * len(samples)
        valid = [i for i, s in enumerate(samples) if isinstance(s.completion, str)]
        for i in set(range(len(samples))) - set(valid):
            results[i] = RewardResult.invalid("reward_model: completion must be a string")
        chunks = [valid[j : j + self.batch_size] for j in range(0, len(valid), self.batch_size)]
        if chunks:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chunks))) as pool:
                outs = pool.map(lambda idx: self._request([samples[i] for i in idx]), chunks)
                for idx, out in zip(chunks, outs, strict=True):
                    for i, r in zip(idx, out, strict=True):
                        results[i] = r
        return [r if r is not None else RewardResult.error("reward_model: no result") for r in results]
