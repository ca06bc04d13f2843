"""Preference files are validated at the boundary (file and line named); encoding and the synthetic task."""

from __future__ import annotations

import json

import pytest

from nemotron_plugins.preference.data import PreferenceDataError, encode_conversation, read_preference_pairs
from nemotron_plugins.preference.synthetic import rule_score, write_preference_task

GOOD = {"prompt": "hi", "chosen": "good", "rejected": "bad", "chosen_reward": 2, "rejected_reward": 1}


def _write(tmp_path, rows) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_reads_both_field_spellings_and_chat_prompts(tmp_path) -> None:
    rows = [
        GOOD,
        "",
        {
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "chosen_response": "a",
            "rejected_response": "b",
            "margin": 0.5,
        },
    ]
    pairs = read_preference_pairs(_write(tmp_path, rows))
    assert [p.chosen for p in pairs] == ["good", "a"]
    assert pairs[0].messages == [{"role": "user", "content": "hi"}] and pairs[0].chosen_reward == 2.0
    assert pairs[1].margin == 0.5 and pairs[1].chosen_reward is None
    assert pairs[1].where.endswith("pairs.jsonl:3")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", r"pairs.jsonl:2: not valid JSON"),
        ([1, 2], r"pairs.jsonl:2: a preference row must be a JSON object"),
        ({"chosen": "a", "rejected": "b"}, r"pairs.jsonl:2: missing 'prompt'"),
        ({"prompt": "p", "rejected": "b"}, r"pairs.jsonl:2: missing 'chosen'"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, r"pairs.jsonl:2: 'chosen' must be a non-empty string"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_reward": 1}, r"pairs.jsonl:2: give both"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_reward": "x", "rejected_reward": 1},
            r"pairs.jsonl:2: 'chosen_reward' must be a finite number",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_reward": float("nan"), "rejected_reward": 1},
            r"pairs.jsonl:2: 'chosen_reward' must be a finite number",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                "chosen": "a",
                "rejected": "b",
            },
            r"pairs.jsonl:2: the prompt must end with a user turn",
        ),
        ({"prompt": [{"role": "robot", "content": "u"}], "chosen": "a", "rejected": "b"}, r"prompt\[0\].role"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message: str) -> None:
    with pytest.raises(PreferenceDataError, match=message):
        read_preference_pairs(_write(tmp_path, [GOOD, row]))


def test_offline_rpo_needs_rewards_and_files_must_exist(tmp_path) -> None:
    path = _write(tmp_path, [GOOD, {"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PreferenceDataError, match=r"pairs.jsonl:2: offline RPO needs 'chosen_reward'"):
        read_preference_pairs(path, need_rewards=True)
    with pytest.raises(PreferenceDataError, match=r"data.eval_path: .* is not a file"):
        read_preference_pairs(tmp_path / "missing.jsonl", field="data.eval_path")
    with pytest.raises(PreferenceDataError, match="holds no preference pairs"):
        read_preference_pairs(_write(tmp_path, [""]))


def test_encoding_is_the_generation_prompt_then_reply_and_eot() -> None:
    from nemotron_plugins.chat.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny")
    ids, prompt_len = encode_conversation(tok, [{"role": "user", "content": "hi"}], "abc", "llama-nemotron-super")
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[prompt_len:-1]) == "abc"
    assert tok.decode(ids[:prompt_len]).endswith("assistant<|end_header_id|>\n\n")


def test_synthetic_task_is_deterministic_disjoint_and_ordered(tmp_path) -> None:
    a = write_preference_task(
        tmp_path / "a", seed=3, sft_rows=50, train_pairs=60, heldout_pairs=40, train_prompts=30, heldout_prompts=20
    )
    b = write_preference_task(
        tmp_path / "b", seed=3, sft_rows=50, train_pairs=60, heldout_pairs=40, train_prompts=30, heldout_prompts=20
    )
    for name in a:
        assert open(a[name], "rb").read() == open(b[name], "rb").read()
    train = read_preference_pairs(a["pairs_train"], need_rewards=True)
    heldout = read_preference_pairs(a["pairs_heldout"], need_rewards=True)
    letters = lambda p: "".join(sorted(p.messages[-1]["content"].rsplit(" ", 1)[1]))  # noqa: E731
    assert not {letters(p) for p in train} & {letters(p) for p in heldout}
    for p in train + heldout:
        assert p.chosen_reward > p.rejected_reward
        assert rule_score(p.chosen) == p.chosen_reward
    assert rule_score("abcdei") == 3 and rule_score("ae") == 2
