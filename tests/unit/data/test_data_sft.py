"""SFT examples: prompt/target, loss masks, multi-turn rows, on/off pairs, bad-row counting, strict mode."""

from __future__ import annotations

import json

import pytest
from sft_row_factory import make_row

from nemotron_plugins.chat.render import render_chat
from nemotron_plugins.data.report import SKIP_REASONS, BadRowError
from nemotron_plugins.data.rows import RawRow, read_rows
from nemotron_plugins.data.sft import build_sft_examples, find_on_off_pairs, load_sft_examples


def test_prompt_and_target_with_mask_on_target_only(tiny_tokenizer):
    tok = tiny_tokenizer
    row = make_row()
    (example,), report = build_sft_examples([row], tok, max_seq_len=512)
    assert report.kept == 1 and report.num_skipped == 0
    prompt = render_chat(
        [{"role": "system", "content": "detailed thinking on"}, {"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
    )
    target = "<think>\n2+2=4\n</think>\n\n4<|eot_id|>"
    assert tok.decode(example.input_ids) == prompt + target
    assert tok.decode(example.input_ids[: example.prompt_length]) == prompt
    assert tok.decode(example.target_ids) == target
    assert example.loss_mask == [0] * example.prompt_length + [1] * (len(example) - example.prompt_length)
    # The loss covers exactly the target tokens, including <think> and the final <|eot_id|>.
    masked = [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m]
    assert tok.decode(masked) == target
    assert masked[-1] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.convert_tokens_to_ids("<think>") in masked
    assert example.input_ids.count(tok.bos_token_id) == 1 and example.input_ids[0] == tok.bos_token_id
    assert example.reasoning == "on" and example.line == 1 and example.category == "math"


def test_off_row_and_on_off_pairs(tiny_tokenizer):
    rows = [
        make_row(),
        make_row(output="4", reasoning="off"),
        make_row(user="What is 3+3?", output="6", reasoning="off"),
    ]
    examples, report = build_sft_examples(rows, tiny_tokenizer, max_seq_len=512)
    assert report.kept == 3
    off = examples[1]
    assert tiny_tokenizer.decode(off.target_ids) == "4<|eot_id|>"
    assert "detailed thinking off" in tiny_tokenizer.decode(off.input_ids[: off.prompt_length])
    pairs = find_on_off_pairs(examples)
    assert pairs == [(examples[0], examples[1])]
    assert examples[0].prompt_key == examples[1].prompt_key != examples[2].prompt_key


def test_multi_turn_row_strips_history_reasoning_keeps_target_reasoning(tiny_tokenizer):
    row = make_row(
        output="<think>\n3+3=6\n</think>\n\n6",
        input=[
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\n4"},
            {"role": "user", "content": "And 3+3?"},
        ],
    )
    (example,), _ = build_sft_examples([row], tiny_tokenizer, max_seq_len=512)
    prompt = tiny_tokenizer.decode(example.input_ids[: example.prompt_length])
    assert "2+2=4" not in prompt
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>" in prompt
    assert tiny_tokenizer.decode(example.target_ids) == "<think>\n3+3=6\n</think>\n\n6<|eot_id|>"


def test_input_system_message_merged_with_toggle(tiny_tokenizer):
    row = make_row(input=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "q"}])
    (example,), _ = build_sft_examples([row], tiny_tokenizer, max_seq_len=512)
    prompt = tiny_tokenizer.decode(example.input_ids[: example.prompt_length])
    assert "system<|end_header_id|>\n\ndetailed thinking on\n\nBe terse.<|eot_id|>" in prompt


BAD_ROWS = [
    ("missing_field", {k: v for k, v in make_row().items() if k != "output"}),
    ("missing_field", make_row(reasoning=None)),
    ("bad_field", make_row(input=42)),
    ("bad_messages", make_row(input=[{"role": "robot", "content": "x"}])),
    ("bad_messages", make_row(input=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])),
    ("bad_reasoning_value", make_row(reasoning="maybe", system_prompt="detailed thinking on")),
    ("reasoning_mismatch", make_row(system_prompt="detailed thinking off")),
    ("reasoning_mismatch", make_row(output="4", reasoning="off", system_prompt="You are helpful.")),
    ("empty_output", make_row(output="  ")),
    ("missing_think", make_row(output="4")),
    ("malformed_think", make_row(output="<think>never closed")),
    ("malformed_think", make_row(output="<think>a<think>b</think></think>4")),
    ("think_in_off_mode", make_row(output="<think>x</think>4", reasoning="off")),
    ("too_long", make_row(user="x" * 600)),
]


def test_bad_rows_skipped_and_counted_per_reason(tiny_tokenizer):
    rows = [make_row()] + [row for _, row in BAD_ROWS] + [make_row(output="4", reasoning="off")]
    examples, report = build_sft_examples(rows, tiny_tokenizer, max_seq_len=256)
    assert [e.line for e in examples] == [1, len(rows)]
    expected: dict[str, list[int]] = {}
    for offset, (reason, _) in enumerate(BAD_ROWS):
        expected.setdefault(reason, []).append(offset + 2)
    assert report.example_lines == expected
    assert report.skipped == {reason: len(lines) for reason, lines in expected.items()}
    assert report.total == len(rows) and report.kept == 2 and report.num_skipped == len(BAD_ROWS)
    assert set(report.skipped) <= set(SKIP_REASONS)
    text = report.format()
    for reason in expected:
        assert reason in text
    assert "'output' is missing" in report.first_detail["missing_field"]
    json.dumps(report.to_dict())


@pytest.mark.parametrize(("reason", "row"), BAD_ROWS)
def test_strict_mode_raises_with_line_and_reason(tiny_tokenizer, reason, row):
    with pytest.raises(BadRowError) as info:
        build_sft_examples([make_row(), row], tiny_tokenizer, max_seq_len=256, strict=True)
    assert info.value.line == 2
    assert info.value.reason == reason
    assert str(info.value).startswith(f"line 2: {reason}: ")


def test_jsonl_reader_counts_bad_json_with_file_lines(tiny_tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(make_row()), "", "{broken", json.dumps([1, 2]), json.dumps(make_row(output="4"))]
    path.write_text("\n".join(lines) + "\n")
    raw = list(read_rows(path))
    assert [r.line for r in raw] == [1, 3, 4, 5]
    assert raw[1].row is None and "not valid JSON" in raw[1].error
    examples, report = load_sft_examples(path, tiny_tokenizer, max_seq_len=256)
    assert len(examples) == 1
    assert report.skipped == {"bad_json": 2, "missing_think": 1}
    assert report.example_lines == {"bad_json": [3, 4], "missing_think": [5]}
    with pytest.raises(BadRowError, match="line 3: bad_json"):
        load_sft_examples(path, tiny_tokenizer, max_seq_len=256, strict=True)


def test_raw_rows_and_plain_dicts_accepted(tiny_tokenizer):
    examples, _ = build_sft_examples([RawRow(line=17, row=make_row())], tiny_tokenizer, max_seq_len=256)
    assert examples[0].line == 17


def test_rejects_tokenizer_without_single_eot(tiny_tokenizer):
    class SplitsEverything:
        bos_token = "<|begin_of_text|>"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    with pytest.raises(ValueError, match="one special token"):
        build_sft_examples([make_row()], SplitsEverything(), max_seq_len=256)
    with pytest.raises(ValueError, match="max_seq_len"):
        build_sft_examples([make_row()], tiny_tokenizer, max_seq_len=1)


def test_hf_datasets_sources(tiny_tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [make_row(), make_row(output="4", reasoning="off"), make_row(output="no think")]
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset, "math": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    (tmp_path / "jsonl_dir").mkdir()
    (tmp_path / "jsonl_dir" / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = [
        (tmp_path / "saved", "train"),
        (tmp_path / "saved_dict", "math"),
        (tmp_path / "rows.parquet", "train"),
        (tmp_path / "jsonl_dir", "train"),
    ]
    cache = str(tmp_path / "cache")
    for source, split in sources:
        raw = list(read_rows(source, split=split, cache_dir=cache))
        examples, report = build_sft_examples(raw, tiny_tokenizer, max_seq_len=256)
        assert [e.reasoning for e in examples] == ["on", "off"], source
        assert report.skipped == {"missing_think": 1} and report.example_lines == {"missing_think": [3]}, source
    with pytest.raises(KeyError, match="no split 'nope'"):
        list(read_rows(tmp_path / "saved_dict", split="nope"))
    with pytest.raises(FileNotFoundError):
        list(read_rows(tmp_path / "missing.jsonl"))
