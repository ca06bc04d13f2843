"""``llm_judge``: an LLM served over an OpenAI-compatible chat-completions API decides whether the answer matches.

This is the accuracy reward of Llama-Nemotron's scientific-reasoning GRPO (the judge was Llama-3.3-70B-Instruct).
For each sample the judge sees the question (the prompt's last user message), the reference answer and the model's
final answer (the text after ``</think>``) and must reply YES or NO; YES scores 1.0.

Requests for a batch run concurrently (at most ``max_concurrency`` at once); identical (question, answer, reference)
triples in a batch are asked once. Each request has a total deadline, retries with exponential backoff on timeouts,
refused connections, 5xx/429 and malformed JSON, and then fails with a clear status: ``timeout`` when the server did
not answer in time, ``error`` (naming the URL and the cause) otherwise. A judge reply that is neither YES nor NO is an
``error`` too, never a silent 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nemotron_plugins.rewards.base import Reward, RewardResult, RewardSample
from nemotron_plugins.rewards.http_client import HTTPCallError, RetryPolicy, post_json
from nemotron_plugins.rewards.text import split_think

DEFAULT_TEMPLATE = (
    "You are grading a student's answer against a reference answer.\n\n"
    "Question:\n{question}\n\n"
    "Reference answer:\n{ground_truth}\n\n"
    "Student's final answer:\n{answer}\n\n"
    "Does the student's final answer match the reference answer (same meaning; formatting differences do not "
    "matter)? Reply with exactly one word: YES or NO."
)

_VERDICT = re.compile(r"^[\s*_\"'`(\[]*(yes|no)\b", re.IGNORECASE)


def prompt_text(prompt: str | list[dict] | None) -> str:
    """The question text: a string prompt, or the last user message of a chat prompt."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def parse_verdict(text: str) -> bool | None:
    """``True`` for YES, ``False`` for NO (first word, after any ``</think>``), ``None`` otherwise.

    Example:
        >>> parse_verdict("YES."), parse_verdict("<think>hmm</think> no"), parse_verdict("maybe")
        (True, False, None)
    """
    m = _VERDICT.match(split_think(text).answer)
    return None if m is None else m.group(1).lower() == "yes"


class LLMJudgeReward(Reward):
    """YES/NO answer-equivalence judged by an OpenAI-compatible chat-completions server.

    Args:
        base_url: Server base URL, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: Model name sent in the request.
        api_key: Bearer token; defaults to the environment variable named by ``api_key_env``.
        api_key_env: Environment variable holding the key (``OPENAI_API_KEY``).
        template: Prompt template with ``{question}``, ``{ground_truth}`` and ``{answer}`` fields.
        timeout_s: Total deadline of one request attempt.
        max_retries: Retries after the first attempt for retryable failures.
        backoff_s: First retry's backoff (doubles per retry).
        max_concurrency: Requests in flight at once.
        max_tokens: Judge reply length (raise it for judges that reason first).
        temperature: Judge sampling temperature.
        max_answer_chars: The model answer is cut to its last ``max_answer_chars`` characters.

    Components: ``judged`` (the judge gave a verdict).
    """

    name = "llm_judge"
    bounded = True  # request deadlines, a batch deadline and a circuit breaker

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "judge",
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        template: str = DEFAULT_TEMPLATE,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 8,
        max_tokens: int = 8,
        temperature: float = 0.0,
        max_answer_chars: int = 4000,
    ) -> None:
        for field in ("{question}", "{ground_truth}", "{answer}"):
            if field not in template:
                raise ValueError(f"llm_judge: template must contain {field}")
        if max_concurrency < 1:
            raise ValueError(f"llm_judge: max_concurrency must be >= 1, got {max_concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.template = template
        self.policy = RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s)
        self.max_concurrency = max_concurrency
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_answer_chars = max_answer_chars

    def _ask(self, content: str) -> RewardResult:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        try:
            reply = post_json(self.url, body, headers=headers, policy=self.policy)
        except HTTPCallError as err:
            return RewardResult(score=0.0, status=err.reward_status, components={"judged": 0.0}, message=str(err))
        try:
            text = reply["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as exc:
            return RewardResult.error(f"llm_judge: {self.url} reply lacks choices[0].message.content ({exc})")
        verdict = parse_verdict(text)
        if verdict is None:
            return RewardResult.error(f"llm_judge: judge reply is not YES/NO: {text[:100]!r}")
        return RewardResult(score=1.0 if verdict else 0.0, components={"judged": 1.0})

    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Judge every sample; one result per sample, in input order, never raising."""
        results: list[RewardResult | None] = [None] * len(samples)
        requests: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            gt: Any = sample.ground_truth
            if gt is None or (isinstance(gt, str) and not gt.strip()):
                results[i] = RewardResult.invalid("llm_judge: ground_truth is missing")
                continue
            if not isinstance(sample.completion, str):
                results[i] = RewardResult.invalid("llm_judge: completion must be a string")
                continue
            answer = split_think(sample.completion).answer.strip()
            if not answer:
                results[i] = RewardResult(score=0.0, components={"judged": 0.0}, message="no final answer")
                continue
            content = self.template.format(
                question=prompt_text(sample.prompt), ground_truth=gt, answer=answer[-self.max_answer_chars :]
            )
            requests.setdefault(content, []).append(i)
        if requests:
            contents = list(requests)
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(contents))) as pool:
                for content, result in zip(contents, pool.map(self._ask, contents), strict=True):
                    for i in requests[content]:
                        results[i] = result
        return [r if r is not None else RewardResult.error("llm_judge: no result") for r in results]
