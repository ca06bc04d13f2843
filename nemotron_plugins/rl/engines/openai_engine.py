"""Rollouts from any OpenAI-compatible server (vLLM, SGLang, TGI, NIM): for pass-rate estimation and evaluation.

Uses the legacy *completions* endpoint ``POST {base_url}/completions`` because it takes raw text or token-id prompts
and returns per-token log-probs for ``n`` choices in one request. One request per prompt, at most ``concurrency``
in flight; every request has a total deadline and transient failures (timeouts, refused connections, HTTP 5xx/429)
are retried with exponential backoff (the shared client of :mod:`nemotron_plugins.rewards.http_client`).

Token ids: with ``vllm_extensions`` (default) the request asks vLLM for ``return_tokens_as_token_ids`` (each
log-prob token comes back as ``"token_id:<id>"``) and ``include_stop_str_in_output``; servers that ignore the
fields still work, the rollouts then carry ``completion_ids=None`` unless a tokenizer maps the returned token
strings to ids. The weights live in the server: :meth:`update_weights` is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nemotron_plugins.rewards.http_client import HTTPCallError, RetryPolicy, post_json
from nemotron_plugins.rl.engines.base import (
    Prompt,
    Rollout,
    RolloutEngine,
    RolloutGroup,
    SamplingSettings,
    check_n,
    cut_at_stop,
    encode_prompt,
)


class RolloutServerError(RuntimeError):
    """The server failed after retries or answered something that is not a completions response."""


@dataclass(kw_only=True, slots=True)
class OpenAIEngineConfig:
    """Connection settings of :class:`OpenAIRolloutEngine`."""

    base_url: str
    """Server root with the API prefix, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """Model name the server serves."""
    api_key: str | None = None
    """Bearer token; ``None`` sends no Authorization header."""
    timeout_s: float = 300.0
    """Total deadline of one request attempt (connect, send, read)."""
    max_retries: int = 3
    """Extra attempts after the first for transient failures."""
    retry_backoff_s: float = 0.5
    """Sleep before the first retry; doubles each retry."""
    concurrency: int = 8
    """Requests (prompts) in flight at once."""
    logprobs: bool = True
    """Ask for the sampled tokens' log-probs."""
    vllm_extensions: bool = True
    """Send vLLM's ``return_tokens_as_token_ids`` and ``include_stop_str_in_output`` request fields."""
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    """Extra JSON fields for every request (e.g. ``{"top_k": 20}``)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIEngineConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("OpenAIEngineConfig.model must name the served model")
        if self.concurrency < 1:
            raise ValueError(f"OpenAIEngineConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("OpenAIEngineConfig.max_retries must be >= 0 and timeout_s > 0")


class OpenAIRolloutEngine(RolloutEngine):
    """Sample completions from an OpenAI-compatible completions endpoint.

    Args:
        config: Connection settings (or pass its fields as keyword arguments).
        tokenizer: Optional tokenizer: renders chat-message prompts and maps returned token strings to ids.
        default_sampling: Defaults for omitted sampling arguments and for :meth:`generate`.
    """

    name = "openai"

    def __init__(
        self,
        config: OpenAIEngineConfig | None = None,
        *,
        tokenizer: Any = None,
        default_sampling: SamplingSettings | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__(default_sampling)
        if config is None:
            config = OpenAIEngineConfig(**config_fields)
        elif config_fields:
            raise TypeError("pass either config or its fields, not both")
        config.validate()
        self.config = config
        self.tokenizer = tokenizer
        self.url = config.base_url.rstrip("/") + "/completions"
        self._policy = RetryPolicy(
            timeout_s=config.timeout_s, max_retries=config.max_retries, backoff_s=config.retry_backoff_s
        )

    def rollout(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[RolloutGroup]:
        """Sample ``n`` completions per prompt (one request per prompt, ``concurrency`` at a time).

        Raises:
            RolloutServerError: A request failed after its retries or the reply was malformed; names the prompt.
        """
        check_n(n)
        s = self.sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
        wire = [self._wire_prompt(p, i) for i, p in enumerate(prompts)]
        jobs = list(enumerate(wire))
        if len(jobs) <= 1 or self.config.concurrency == 1:
            results = [self._complete(i, w, n, s) for i, w in jobs]
        else:
            with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(jobs))) as pool:
                results = list(pool.map(lambda job: self._complete(job[0], job[1], n, s), jobs))
        return [
            RolloutGroup(prompt_index=i, prompt=p, rollouts=r)
            for i, (p, r) in enumerate(zip(prompts, results, strict=True))
        ]

    def _wire_prompt(self, prompt: Prompt, index: int) -> str | list[int]:
        if isinstance(prompt, str):
            return prompt
        return encode_prompt(self.tokenizer, prompt, index)

    def _payload(self, prompt: str | list[int], n: int, s: SamplingSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": prompt,
            "n": n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if self.config.logprobs:
            body["logprobs"] = 1
        if self.config.vllm_extensions:
            body["return_tokens_as_token_ids"] = True
            body["include_stop_str_in_output"] = True
        body.update(self.config.extra_body)
        return body

    def _complete(self, index: int, prompt: str | list[int], n: int, s: SamplingSettings) -> list[Rollout]:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else None
        prompt_ids = list(prompt) if isinstance(prompt, list) else None
        out: list[Rollout] = []
        while len(out) < n:
            want = n - len(out)
            try:
                reply = post_json(self.url, self._payload(prompt, want, s), headers=headers, policy=self._policy)
            except HTTPCallError as exc:
                raise RolloutServerError(f"prompt {index}: {exc}") from exc
            choices = reply.get("choices") if isinstance(reply, Mapping) else None
            if not isinstance(choices, list) or not choices:
                raise RolloutServerError(f"prompt {index}: {self.url} returned no 'choices' list: {str(reply)[:200]}")
            choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, Mapping) else 0)
            for choice in choices[:want]:
                out.append(self._parse_choice(choice, prompt_ids, s, index))
        return out

    def _parse_choice(self, choice: Any, prompt_ids: list[int] | None, s: SamplingSettings, index: int) -> Rollout:
        if not isinstance(choice, Mapping) or not isinstance(choice.get("text"), str):
            raise RolloutServerError(f"prompt {index}: malformed choice without 'text': {str(choice)[:200]}")
        text = choice["text"]
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        if s.stop and reason == "stop":
            text, _ = cut_at_stop(text, s.stop)
        ids: list[int] | None = None
        logprobs: list[float] | None = None
        lp = choice.get("logprobs")
        if isinstance(choice.get("token_ids"), list):  # vLLM's return_token_ids
            ids = [int(t) for t in choice["token_ids"]]
        if isinstance(lp, Mapping):
            tokens = lp.get("tokens")
            values = lp.get("token_logprobs")
            if isinstance(values, list):
                logprobs = [float(v) if v is not None else float("nan") for v in values]
            if ids is None and isinstance(tokens, list):
                ids = self._token_ids(tokens)
        if isinstance(choice.get("prompt_token_ids"), list):
            prompt_ids = [int(t) for t in choice["prompt_token_ids"]]
        return Rollout(
            prompt_ids=prompt_ids, completion_ids=ids, completion_text=text, logprobs=logprobs, finish_reason=reason
        )

    def _token_ids(self, tokens: list[Any]) -> list[int] | None:
        if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            return [int(t.split(":", 1)[1]) for t in tokens]
        if self.tokenizer is not None and all(isinstance(t, str) for t in tokens):
            ids = self.tokenizer.convert_tokens_to_ids(tokens)
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if all(isinstance(i, int) for i in ids) and (unk is None or unk not in ids):
                return list(ids)
        return None
