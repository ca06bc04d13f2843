"""Row factory for the data tests (a module with a unique name, importable from the test modules)."""

from __future__ import annotations


def make_row(user: str = "What is 2+2?", output: str = "<think>\n2+2=4\n</think>\n\n4", reasoning: str = "on", **kw):
    row = {
        "input": [{"role": "user", "content": user}],
        "output": output,
        "reasoning": reasoning,
        "system_prompt": f"detailed thinking {reasoning}",
        "category": "math",
        "license": "cc-by-4.0",
        "generator": "test",
        "used_in_training": "yes",
        "version": "v1",
    }
    row.update(kw)
    return row
