"""``nemotron-plugins reward-model``: serve a trained reward model over HTTP, or health-check such a server.

``serve`` loads a ``task="reward_model"`` checkpoint and answers the HTTP ``reward_model`` reward's requests
(:mod:`nemotron_plugins.reward_model.server`); ``check`` exits 0 when a server at ``--url`` is healthy.
"""

from __future__ import annotations

import argparse

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reward-model`` group."""
    parser = subparsers.add_parser("reward-model", help="serve a trained reward model over HTTP")
    sub = parser.add_subparsers(dest="reward_model_command", metavar="SUBCOMMAND")
    serve = sub.add_parser("serve", help="serve a task=reward_model checkpoint (POST /score, GET /health)")
    serve.add_argument("--checkpoint", required=True, help="the reward model's checkpoint root (<run>/checkpoints)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5000, help="port to bind (0: ephemeral; default 5000)")
    serve.add_argument("--chat-template", default="llama-nemotron-super", help="the template the model trained with")
    serve.add_argument("--batch-size", type=int, default=64, help="samples per forward pass")
    serve.add_argument("--max-length", type=int, default=4096, help="longest prompt + reply in tokens")
    serve.add_argument("--max-batch", type=int, default=256, help="most conversations per request (more: 413)")
    serve.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024, help="largest body (more: 413)")
    serve.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check", help="health-check a reward-model server; exit 0 when healthy")
    check.add_argument("--url", default="http://127.0.0.1:5000/score", help="the server's scoring URL")
    check.add_argument("--timeout", type=float, default=30.0, help="deadline of each request, seconds")
    check.set_defaults(func=_check)


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nemotron_plugins.reward_model.server import ServerLimits, build_server

    if not (Path(args.checkpoint) / "config.json").is_file():
        fail(f"--checkpoint {args.checkpoint}: no config.json (pass a task=reward_model run's checkpoints/ root)")
    for name in ("batch_size", "max_length", "max_batch", "max_request_bytes"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = ServerLimits(max_request_bytes=args.max_request_bytes, max_batch=args.max_batch)
    server = build_server(
        args.checkpoint,
        host=args.host,
        port=args.port,
        chat_template=args.chat_template,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limits=limits,
    )
    print(f"serving {args.checkpoint} at {server.url} (GET /health)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0


def _check(args: argparse.Namespace) -> int:
    from nemotron_plugins.reward_model.server import check_server

    ok, message = check_server(args.url, timeout_s=args.timeout)
    print(message)
    return 0 if ok else 1
