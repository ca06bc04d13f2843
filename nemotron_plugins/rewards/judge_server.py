"""Health checks for the ``llm_judge`` server, run before training starts.

The judge is any OpenAI-compatible chat-completions server: the paper's Llama-3.3-70B-Instruct behind vLLM's
``vllm serve`` on its own nodes (``launchers/judge_server.sbatch`` starts one and runs this check), or any URL. A
judge is *healthy* when ``GET {base_url}/models`` answers and lists the model, and a one-line grading request comes
back as a lone YES or NO (the only replies :class:`~nemotron_plugins.rewards.llm_judge.LLMJudgeReward` accepts).

Command line (exit status 0 when healthy, 1 otherwise)::

    python -m nemotron_plugins.rewards.judge_server --base-url http://judge-node:8000/v1 \\
        --model meta-llama/Llama-3.3-70B-Instruct --wait 1800
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nemotron_plugins.rewards.http_client import HTTPCallError, RetryPolicy, get_json, post_json

#: The probe request: a question whose right verdict is YES.
PROBE_PROMPT = (
    "You are grading a student's answer against a reference answer.\n\nQuestion:\nWhat is 2 + 2?\n\n"
    "Reference answer:\n4\n\nStudent's final answer:\nfour\n\n"
    "Does the student's final answer match the reference answer? Reply with exactly one word: YES or NO."
)


class JudgeUnavailableError(RuntimeError):
    """The judge server did not become healthy in time."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JudgeHealth:
    """The outcome of one health check."""

    ok: bool
    """The server listed the model and answered the probe with a lone YES or NO."""
    message: str
    """What was checked, or what failed (naming the URL)."""
    models: tuple[str, ...] = ()
    """The model names the server lists."""


def check_judge(
    base_url: str, *, model: str | None = None, api_key: str | None = None, timeout_s: float = 30.0
) -> JudgeHealth:
    """One health check of the judge at ``base_url`` (never raises).

    Args:
        base_url: The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: The model the reward will ask for; ``None`` takes the first model the server lists.
        api_key: Bearer token, if the server needs one.
        timeout_s: Deadline of each of the two requests.

    Returns:
        The :class:`JudgeHealth`.
    """
    from nemotron_plugins.rewards.llm_judge import parse_verdict

    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        listing = get_json(base_url + "/models", headers=headers, timeout_s=timeout_s)
        models = tuple(str(m.get("id")) for m in listing.get("data", []) if isinstance(m, dict))
    except HTTPCallError as err:
        return JudgeHealth(ok=False, message=f"GET {base_url}/models failed: {err}")
    except AttributeError:
        return JudgeHealth(ok=False, message=f"GET {base_url}/models: not an OpenAI model list: {listing!r:.200}")
    if model is None:
        if not models:
            return JudgeHealth(ok=False, message=f"{base_url}/models lists no model")
        model = models[0]
    elif model not in models:
        return JudgeHealth(ok=False, message=f"{base_url} serves {list(models)}, not {model!r}", models=models)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
        "max_tokens": 8,
        "temperature": 0.0,
    }
    try:
        reply = post_json(
            base_url + "/chat/completions",
            body,
            headers=headers,
            policy=RetryPolicy(timeout_s=timeout_s, max_retries=0),
        )
        text = reply["choices"][0]["message"]["content"]
    except HTTPCallError as err:
        return JudgeHealth(ok=False, message=f"probe request to {model!r} failed: {err}", models=models)
    except (KeyError, IndexError, TypeError):
        return JudgeHealth(ok=False, message=f"{base_url}/chat/completions reply lacks a message: {reply!r:.200}")
    if not isinstance(text, str) or parse_verdict(text) is None:
        return JudgeHealth(
            ok=False,
            message=f"{model!r} answered the probe with {text!r:.100}, not a lone YES/NO (check max_tokens, template)",
            models=models,
        )
    return JudgeHealth(ok=True, message=f"{model!r} at {base_url} answers verdicts ({text.strip()!r})", models=models)


def wait_for_judge(
    base_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 1800.0,
    interval_s: float = 10.0,
    log: Callable[[str], None] | None = None,
) -> JudgeHealth:
    """Check the judge every ``interval_s`` until it is healthy or ``timeout_s`` has passed.

    Args:
        base_url: The OpenAI-compatible base URL.
        model: The model the reward will ask for (``None``: any listed model).
        api_key: Bearer token, if needed.
        timeout_s: How long to wait in all (a 70B model takes minutes to load).
        interval_s: Pause between checks.
        log: Called with each failed check's message (e.g. ``print``).

    Returns:
        The healthy :class:`JudgeHealth`.

    Raises:
        JudgeUnavailableError: When the judge is not healthy within ``timeout_s``; the message has the last failure.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        health = check_judge(base_url, model=model, api_key=api_key, timeout_s=max(1.0, min(30.0, left)))
        if health.ok:
            return health
        if log is not None:
            log(health.message)
        left = deadline - time.monotonic()
        if left <= 0:
            raise JudgeUnavailableError(f"judge not healthy after {timeout_s:g} s: {health.message}")
        time.sleep(min(interval_s, left))


def main(argv: list[str] | None = None) -> int:
    """``python -m nemotron_plugins.rewards.judge_server``: wait for the judge; print the outcome; 0 when healthy."""
    parser = argparse.ArgumentParser(description="Health-check an OpenAI-compatible LLM judge server.")
    parser.add_argument("--base-url", required=True, help="e.g. http://judge-node:8000/v1")
    parser.add_argument("--model", default=None, help="the served model name the reward asks for (default: any)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to keep trying (0: one check)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between checks")
    args = parser.parse_args(argv)
    if args.wait > 0:
        try:
            health = wait_for_judge(
                args.base_url,
                model=args.model,
                api_key=args.api_key,
                timeout_s=args.wait,
                interval_s=args.interval,
                log=lambda msg: print(f"judge not ready: {msg}", file=sys.stderr, flush=True),
            )
        except JudgeUnavailableError as err:
            print(f"judge unavailable: {err}", file=sys.stderr)
            return 1
    else:
        health = check_judge(args.base_url, model=args.model, api_key=args.api_key)
    print(("judge healthy: " if health.ok else "judge unhealthy: ") + health.message, flush=True)
    return 0 if health.ok else 1


if __name__ == "__main__":
    sys.exit(main())
