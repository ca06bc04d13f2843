"""The tiny character-level tokenizer and local tokenizer loading."""

from __future__ import annotations

import string

import pytest

from nemotron_plugins.chat.catalog import get_chat_template
from nemotron_plugins.chat.render import render_chat
from nemotron_plugins.chat.tokenizer import (
    TINY_SPECIAL_TOKENS,
    TINY_VOCAB,
    TINY_VOCAB_SIZE,
    build_tiny_tokenizer,
    load_tokenizer,
)

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_vocab_is_small_fixed_and_character_level(tok):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == TINY_VOCAB_SIZE == 106
    assert tok.get_vocab() == {t: i for i, t in enumerate(TINY_VOCAB)}
    text = string.printable[:95] + "\t\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.pad_token_id == 0


def test_special_tokens_and_think_tags_are_single_ids(tok):
    for token in [*SPECIALS, "<think>", "</think>"]:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == "<|eot_id|>"
    assert tok.unk_token_id == TINY_VOCAB.index("<unk>")
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    # think tags survive skip_special_tokens; Llama-3 control tokens do not.
    ids = tok("<|begin_of_text|><think>x</think>y<|eot_id|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>x</think>y"


def test_encoding_rendered_prompt_has_one_bos_and_single_token_specials(tok):
    text = render_chat([{"role": "user", "content": "What is 12+30?"}], add_generation_prompt=True)
    for add_special_tokens in (True, False):
        ids = tok(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert ids.count(tok.bos_token_id) == 1
        assert tok.decode(ids) == text
    ids = tok(text)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|start_header_id|>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<|eot_id|>")) == 2


def test_deterministic_and_chat_template_set(tok):
    other = build_tiny_tokenizer()
    assert other.get_vocab() == tok.get_vocab()
    assert tok.chat_template == get_chat_template("llama-nemotron-super")
    assert build_tiny_tokenizer(chat_template=None).chat_template is None
    assert build_tiny_tokenizer("llama-nemotron-nano").chat_template == get_chat_template("llama-nemotron-nano")


def test_save_pretrained_and_load_tokenizer_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tiny")
    loaded = load_tokenizer(tmp_path / "tiny")
    text = render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True) + "<think>a</think>b"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.chat_template == tok.chat_template
    assert loaded.eos_token == "<|eot_id|>" and loaded.pad_token_id == 0
    assert set(TINY_SPECIAL_TOKENS) <= set(loaded.get_vocab())
    assert load_tokenizer("tiny").get_vocab() == tok.get_vocab()


def test_load_tokenizer_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_tokenizer(tmp_path / "file.json")


def test_load_checkpoint_tokenizer_sets_the_registered_template(tmp_path):
    from nemotron_plugins.chat.catalog import get_chat_template
    from nemotron_plugins.chat.tokenizer import load_checkpoint_tokenizer
    from nemotron_plugins.fixtures import build_fixture_tokenizer

    tok = build_fixture_tokenizer()
    tok.chat_template = "{{ 'not ours' }}"
    tok.save_pretrained(tmp_path / "ckpt")
    loaded = load_checkpoint_tokenizer(tmp_path / "ckpt")
    assert loaded.chat_template == get_chat_template("llama-nemotron-super")
    assert len(loaded) == len(tok)
    assert load_checkpoint_tokenizer(tmp_path / "ckpt", chat_template=None).chat_template == "{{ 'not ours' }}"


def test_load_checkpoint_tokenizer_rejects_split_control_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from nemotron_plugins.chat.tokenizer import load_checkpoint_tokenizer

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"encodes '<\|begin_of_text\|>' as \d+ tokens"):
        load_checkpoint_tokenizer(tmp_path / "plain")
