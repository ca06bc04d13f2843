"""The synthetic verifiable-instruction task: every instruction is checked by the real ``ifeval`` reward."""

from __future__ import annotations

import json
import random

import pytest

from nemotron_plugins.data.synthetic_instructions import (
    INSTRUCTION_IDS,
    Instruction,
    Prompt,
    draw_prompt,
    main,
    render_reply,
    score_replies,
    write_instruction_task,
)
from nemotron_plugins.rewards.base import RewardSample, build_reward


def _prompts(n: int, seed: int = 0, max_instructions: int = 4) -> list[Prompt]:
    rng = random.Random(seed)
    topics = [("cat", "dog", "sun"), ("leaf", "nest", "wave"), ("book", "bell", "kite")]
    return [draw_prompt(topics[i % 3], rng, max_instructions=max_instructions) for i in range(n)]


def test_obeying_reply_scores_one_and_each_violation_zero_with_the_real_reward() -> None:
    reward = build_reward("ifeval", aggregate="fraction")
    seen: set[str] = set()
    counts: set[int] = set()
    for prompt in _prompts(400):
        gt = prompt.ground_truth()
        counts.add(len(gt["instruction_id_list"]))
        obeying = reward.score([RewardSample(completion=render_reply(prompt), ground_truth=gt)])[0]
        assert obeying.ok and obeying.score == 1.0, (prompt.user_text(), render_reply(prompt))
        for k, inst in enumerate(prompt.instructions):
            seen.add(inst.id)
            reply = render_reply(prompt, lambda iid, skip=inst.id: iid != skip)
            res = reward.score([RewardSample(completion=reply, ground_truth=gt)])[0]
            assert res.ok
            assert list(res.components.values())[k] == 0.0, (prompt.user_text(), reply)
    assert seen == set(INSTRUCTION_IDS)
    assert counts == {1, 2, 3, 4}


def test_hand_built_prompt_renders_the_expected_replies() -> None:
    prompt = Prompt(
        ["cat", "dog", "sun"],
        [
            Instruction("punctuation:no_comma", {}, "No commas."),
            Instruction("keywords:existence", {"keywords": ["blue"]}, "Include blue."),
            Instruction("startend:end_checker", {"end_phrase": "bye now"}, "End with 'bye now'."),
            Instruction("keywords:forbidden_words", {"forbidden_words": ["dog"]}, "Avoid dog."),
        ],
    )
    assert prompt.user_text() == "Words: cat dog sun. No commas. Include blue. End with 'bye now'. Avoid dog."
    assert render_reply(prompt) == "cat sun blue bye now"
    assert render_reply(prompt, lambda iid: False) == "cat, dog, sun"
    assert render_reply(prompt, lambda iid: iid != "punctuation:no_comma") == "cat, sun, blue bye now"


def test_word_bounds_pad_or_overrun() -> None:
    at_least = Prompt(
        ["cat", "dog", "sun"],
        [Instruction("length_constraints:number_words", {"num_words": 5, "relation": "at least"})],
    )
    assert render_reply(at_least) == "cat, dog, sun, cat, dog"
    assert render_reply(at_least, lambda iid: False) == "cat, dog, sun"
    less = Prompt(
        ["cat", "dog", "sun"],
        [Instruction("length_constraints:number_words", {"num_words": 4, "relation": "less than"})],
    )
    assert render_reply(less) == "cat, dog, sun"
    assert render_reply(less, lambda iid: False) == "cat, dog, sun, cat, dog"


def test_score_replies_prompt_and_instruction_level() -> None:
    gt2 = {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]}
    gt1 = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["red"]}]}
    acc = score_replies(['"a b"', "a, b", "red"], [gt2, gt2, gt1])
    assert acc.n == 3 and acc.instructions == 5
    assert acc.prompt_level == pytest.approx(2 / 3)
    assert acc.instruction_level == pytest.approx(3 / 5)
    assert acc.per_instruction == {"keywords:existence": 1.0, "punctuation:no_comma": 0.5, "startend:quotation": 0.5}
    with pytest.raises(ValueError, match="reply 0: the ifeval reward gave no score"):
        score_replies(["x"], [{"instruction_id_list": ["no:such"], "kwargs": [{}]}])


def test_files_are_deterministic_disjoint_and_route_to_ifeval(tmp_path, tiny_tokenizer) -> None:
    from nemotron_plugins.data.rows import read_rows
    from nemotron_plugins.data.sft import build_sft_examples
    from nemotron_plugins.data.sources import check_reward_routing, read_prompt_rows

    kw = {"seed": 5, "sft_rows": 300, "train_prompts": 60, "heldout_prompts": 40}
    a = write_instruction_task(tmp_path / "a", **kw)
    write_instruction_task(tmp_path / "b", **kw)
    for name in a:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    train = read_prompt_rows(a["prompts_train"], splits=["instruction_following"], reasoning="off", limit=None)
    heldout = read_prompt_rows(a["prompts_heldout"], splits=["instruction_following"], reasoning="off", limit=None)
    assert len(train) == 60 and len(heldout) == 40
    for rows in (train, heldout):
        check_reward_routing(rows, ["ifeval"], "test")
        assert {r["reward"] for r in rows} == {"ifeval"}
    topics = lambda text: frozenset(text.split(".")[0].removeprefix("Words: ").split())  # noqa: E731
    sft = [json.loads(line) for line in open(a["sft"], encoding="utf-8")]
    trained = {topics(r["messages"][-1]["content"]) for r in train} | {topics(r["input"][0]["content"]) for r in sft}
    held = {topics(r["messages"][-1]["content"]) for r in heldout}
    assert len(held) == 40 and not trained & held
    examples, report = build_sft_examples(list(read_rows(a["sft"])), tiny_tokenizer, max_seq_len=256, strict=True)
    assert len(examples) == 300


@pytest.mark.parametrize(("obey", "low", "high"), [(1.0, 1.0, 1.0), (0.5, 0.3, 0.7)])
def test_sft_replies_obey_with_the_given_probability(tmp_path, obey, low, high) -> None:
    paths = write_instruction_task(
        tmp_path, seed=1, sft_rows=400, train_prompts=1, heldout_prompts=1, obey_probability=obey
    )
    sft = [json.loads(line) for line in open(paths["sft"], encoding="utf-8")]
    # SFT rows carry no ground truth: read it back from the prompt wording (an independent parse).
    acc = score_replies([r["output"] for r in sft], [_gt_of(r["input"][0]["content"]) for r in sft])
    assert low <= acc.instruction_level <= high


def _gt_of(text: str) -> dict:
    """The ground truth of a prompt text, parsed back from its wording (a second, independent reading)."""
    import re

    ids, kwargs = [], []
    for sentence in re.findall(r"[^.]*?(?:'[^']*'\.|<<title>>\.|\.)", text.split(". ", 1)[1] + "."):
        s = sentence.strip()
        if not s or s == ".":
            continue
        if s == "No commas.":
            ids.append("punctuation:no_comma"), kwargs.append({})
        elif s == "Wrap it in double quotes.":
            ids.append("startend:quotation"), kwargs.append({})
        elif s == "Add a <<title>>.":
            ids.append("detectable_format:title"), kwargs.append({})
        elif m := re.fullmatch(r"Include (\w+)\.", s):
            ids.append("keywords:existence"), kwargs.append({"keywords": [m[1]]})
        elif m := re.fullmatch(r"Avoid (\w+)\.", s):
            ids.append("keywords:forbidden_words"), kwargs.append({"forbidden_words": [m[1]]})
        elif m := re.fullmatch(r"Say (\w+) (\d) times\.", s):
            (
                ids.append("keywords:frequency"),
                kwargs.append({"keyword": m[1], "frequency": int(m[2]), "relation": "at least"}),
            )
        elif m := re.fullmatch(r"End with '([^']+)'\.", s):
            ids.append("startend:end_checker"), kwargs.append({"end_phrase": m[1]})
        elif m := re.fullmatch(r"Start with '([^']+)'\.", s):
            ids.append("startend:start_checker"), kwargs.append({"start_phrase": m[1]})
        elif m := re.fullmatch(r"At least (\d+) words\.", s):
            (
                ids.append("length_constraints:number_words"),
                kwargs.append({"num_words": int(m[1]), "relation": "at least"}),
            )
        elif m := re.fullmatch(r"Fewer than (\d+) words\.", s):
            (
                ids.append("length_constraints:number_words"),
                kwargs.append({"num_words": int(m[1]), "relation": "less than"}),
            )
        elif m := re.fullmatch(r"At least (\d) words? in CAPS\.", s):
            ids.append("change_case:capital_word_frequency")
            kwargs.append({"capital_frequency": int(m[1]), "capital_relation": "at least"})
        else:
            raise AssertionError(f"unparsed instruction {s!r} in {text!r}")
    return {"instruction_id_list": ids, "kwargs": kwargs}


def test_score_cli_names_the_bad_line(tmp_path, capsys) -> None:
    good = {"completion": "a b", "ground_truth": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    assert main(["score", str(path)]) == 0
    assert "prompt-level strict 1.000, instruction-level 1.000" in capsys.readouterr().out
    path.write_text(json.dumps(good) + '\n{"completion": 1}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"s\.jsonl:2: need a JSON object with completion and ground_truth"):
        main(["score", str(path)])
