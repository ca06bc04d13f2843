"""``nemotron-plugins chat``: render conversations with the shipped chat templates, parse responses.

``chat render --template NAME [--generation-prompt] [--reasoning on|off] [--bos-token TOKEN] [--tools FILE]`` reads a
JSON list of ``{role, content}`` messages on stdin and writes exactly the rendered text to stdout (no added newline).
``chat parse [--reasoning on|off]`` reads a response on stdin and prints ``{reasoning, answer, errors}`` as JSON
(exit 1 when the response is malformed). ``chat templates`` lists the registered templates.
"""

from __future__ import annotations

import argparse
import json
import sys

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``chat`` group."""
    parser = subparsers.add_parser("chat", help="chat templates and the reasoning toggle")
    sub = parser.add_subparsers(dest="chat_command", metavar="SUBCOMMAND")

    render = sub.add_parser("render", help="render a JSON list of messages (stdin) with a chat template")
    render.add_argument("--template", default="llama-nemotron-super", help="registered template name")
    render.add_argument("--generation-prompt", action="store_true", help="append the assistant header")
    render.add_argument("--reasoning", choices=("on", "off"), help="set the 'detailed thinking' system prompt")
    render.add_argument("--bos-token", default="<|begin_of_text|>", help="text of the bos token")
    render.add_argument("--tools", help="JSON file with a list of tool schemas (llama-nemotron-nano)")
    render.set_defaults(func=run_render)

    parse = sub.add_parser("parse", help="split a response (stdin) into reasoning and answer")
    parse.add_argument("--reasoning", choices=("on", "off"), help="the mode the response was generated in")
    parse.set_defaults(func=run_parse)

    templates = sub.add_parser("templates", help="list the registered chat templates")
    templates.set_defaults(func=run_templates)


def _read_json_stdin(what: str) -> object:
    text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"stdin is not valid JSON ({what}): {exc.msg} at line {exc.lineno} column {exc.colno}")


def run_render(args: argparse.Namespace) -> int:
    """Render stdin messages to stdout."""
    from nemotron_plugins.chat.render import ChatTemplateError, render_chat
    from nemotron_plugins.chat.toggle import set_reasoning
    from nemotron_plugins.registry import CHAT_TEMPLATES

    if args.template not in CHAT_TEMPLATES:
        fail(f"unknown template {args.template!r}; registered: {', '.join(CHAT_TEMPLATES.names())}")
    messages = _read_json_stdin("expected a list of {role, content} messages")
    if not isinstance(messages, list):
        fail(f"stdin must be a JSON list of {{role, content}} messages, got a JSON {type(messages).__name__}")
    tools = None
    if args.tools:
        try:
            with open(args.tools, encoding="utf-8") as handle:
                tools = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"--tools {args.tools}: cannot read a JSON list of tools: {exc}")
    try:
        if args.reasoning:
            messages = set_reasoning(messages, args.reasoning)
        text = render_chat(
            messages,
            template=args.template,
            add_generation_prompt=args.generation_prompt,
            bos_token=args.bos_token,
            tools=tools,
        )
    except (ChatTemplateError, ValueError) as exc:
        fail(str(exc))
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def run_parse(args: argparse.Namespace) -> int:
    """Parse a stdin response and print JSON."""
    from nemotron_plugins.chat.toggle import parse_response

    parsed = parse_response(sys.stdin.read(), mode=args.reasoning)
    print(json.dumps({"reasoning": parsed.reasoning, "answer": parsed.answer, "errors": parsed.errors}, indent=2))
    return 0 if parsed.ok else 1


def run_templates(args: argparse.Namespace) -> int:
    """List the chat templates."""
    from nemotron_plugins.registry import CHAT_TEMPLATES

    for entry in CHAT_TEMPLATES.entries():
        template = CHAT_TEMPLATES.get(entry.name)
        print(f"{entry.name}: {getattr(template, 'description', '')} [{entry.source}]")
    return 0
