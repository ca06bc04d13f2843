"""End to end: estimate pass rates against a local OpenAI-compatible server with the real ``math`` reward, filter,
then plan; and the sampler under real data parallelism (2 gloo processes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

NUM_PROMPTS = 24
K = 8


class _Handler(BaseHTTPRequestHandler):
    """A tiny chat-completions server: for "What is a + b?" choice j is right when j < (a % 9).

    It returns at most 3 choices per request (clients must ask again) and answers 503 to every 7th request.
    """

    requests = 0
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):  # noqa: N802 - http.server API
        with _Handler.lock:
            _Handler.requests += 1
            count = _Handler.requests
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body.get("model") != "weak":
            self._send(404, {"error": f"unknown path {self.path} or model"})
            return
        if count % 7 == 0:
            self._send(503, {"error": "busy"})
            return
        question = body["messages"][-1]["content"]
        a, b = map(int, re.findall(r"\d+", question))
        # Which choices of this prompt were already served is unknown to a stateless server: decide by a
        # per-request counter in the request itself (n asked) so that the total per prompt is deterministic.
        asked = body["n"]
        offset = K - asked
        choices = []
        for j in range(min(asked, 3)):
            right = (offset + j) < (a % 9)
            answer = a + b if right else a + b + 1
            choices.append({"index": j, "message": {"role": "assistant", "content": f"So \\boxed{{{answer}}}"}})
        self._send(200, {"id": "x", "object": "chat.completion", "choices": choices})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _cli(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "nemotron_plugins.cli.main", "curriculum", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_estimate_filter_plan(tmp_path, server):
    prompts = tmp_path / "prompts.jsonl"
    with prompts.open("w") as handle:
        for i in range(NUM_PROMPTS):
            handle.write(
                json.dumps({"id": f"p{i}", "prompt": f"What is {i} + {100 + i}?", "ground_truth": str(100 + 2 * i)})
            )
            handle.write("\n")
    rated = tmp_path / "rated.jsonl"
    args = ["estimate", "--input", str(prompts), "--output", str(rated), "--base-url", server, "--model", "weak"]
    result = _cli(
        *args, "--reward", "math", "-k", str(K), "--concurrency", "4", "--chunk-size", "5", "--reward-workers", "1"
    )
    assert f"{NUM_PROMPTS} prompts: 0 already done, {NUM_PROMPTS} estimated now" in result.stdout
    assert "pass rates" in result.stderr  # the progress bar
    rows = [json.loads(line) for line in rated.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(NUM_PROMPTS)]
    for i, row in enumerate(rows):
        assert row["num_passed"] == i % 9, row
        assert row["pass_rate"] == (i % 9) / K and row["num_samples"] == K and row["num_reward_errors"] == 0
    # Running again resumes: nothing left to estimate.
    again = _cli(*args, "--reward", "math", "-k", str(K), "--no-progress")
    assert f"{NUM_PROMPTS} already done, 0 estimated now" in again.stdout

    kept = tmp_path / "kept.jsonl"
    report = json.loads(_cli("filter", "--input", str(rated), "--output", str(kept), "--json").stdout)
    expected_kept = sum(1 for i in range(NUM_PROMPTS) if (i % 9) / K < 0.75)
    assert report["kept"] == expected_kept == len(kept.read_text().splitlines())

    plan = json.loads(_cli("plan", "--input", str(kept), "--batch-size", "4", "--num-bins", "9", "--json").stdout)
    assert len(plan["batches"]) == expected_kept // 4
    means = plan["mean_pass_rate"]
    assert means[0] > means[-1]

    bad = _cli("estimate", "--input", str(prompts), "--output", str(tmp_path / "x.jsonl"), "--base-url", server,
               "--model", "other", "--reward", "math", "--no-progress", check=False)  # fmt: skip
    assert bad.returncode == 2 and "HTTP 404" in bad.stderr
    no_workers = _cli(*args, "--reward", "math", "--reward-workers", "0", "--no-progress", check=False)
    assert no_workers.returncode == 2 and "reward_workers" in no_workers.stderr


def _dp_worker(rank, world, init_file, result_dir):
    import torch.distributed as dist

    from nemotron_plugins.curriculum.sampler import ProgressiveGaussianBatchSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rates = [((i * 7) % 9) / 8 for i in range(360)]
    sampler = ProgressiveGaussianBatchSampler(rates, global_batch_size=24, dp_rank=rank, dp_world_size=world, seed=3)
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    state = sampler.state_dict()
    resumed = ProgressiveGaussianBatchSampler(rates, global_batch_size=24, dp_rank=rank, dp_world_size=world, seed=3)
    resumed.load_state_dict(state)
    mine = head + list(resumed)
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        with open(os.path.join(result_dir, "out.json"), "w") as handle:
            json.dump({"per_rank": gathered, "global": sampler.global_batches(0)}, handle)
    dist.destroy_process_group()


def test_data_parallel_ranks_partition_every_global_batch(tmp_path):
    import torch.multiprocessing as mp

    world = 3
    mp.spawn(_dp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    out = json.loads((tmp_path / "out.json").read_text())
    per_rank, global_batches = out["per_rank"], out["global"]
    assert len(global_batches) == 360 // 24
    for b, batch in enumerate(global_batches):
        slices = [per_rank[r][b] for r in range(world)]
        assert all(len(s) == 8 for s in slices)
        assert sum(slices, []) == batch
    used = [i for batch in global_batches for i in batch]
    assert len(set(used)) == len(used) == 360
