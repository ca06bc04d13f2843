"""Tokenizers without hub downloads: a tiny character-level Llama-3-style tokenizer, and local loading.

Public API::

    build_tiny_tokenizer(chat_template="llama-nemotron-super") -> transformers.PreTrainedTokenizerFast
    load_tokenizer(path_or_name) -> transformers.PreTrainedTokenizerBase   # local files only; "tiny" builds one
    load_checkpoint_tokenizer(checkpoint_dir, chat_template="llama-nemotron-super") -> PreTrainedTokenizerBase
    TINY_SPECIAL_TOKENS, TINY_VOCAB_SIZE

The tiny tokenizer is what tests and the CPU demos use. It is character level over printable ASCII (space to ``~``
plus tab and newline), so a tiny model learns arithmetic digit by digit, and has the Llama-3 control tokens and the
think tags as single tokens. Its vocabulary is fixed (106 ids, built in a few milliseconds, identical on every
machine):

====  ===========================  ================================================
id    token                        role
====  ===========================  ================================================
0     ``<|finetune_right_pad_id|>``  pad (id 0, the default pad id of the packer)
1     ``<|begin_of_text|>``        bos
2     ``<|end_of_text|>``          end of document
3     ``<|start_header_id|>``      chat header start
4     ``<|end_header_id|>``        chat header end
5     ``<|eot_id|>``               end of turn; the tokenizer's ``eos_token``
6     ``<unk>``                    any character outside the vocabulary
7, 8  ``<think>``, ``</think>``    reasoning tags (plain added tokens: kept by ``skip_special_tokens``)
9..   ``\\t``, ``\\n``, ``' '`` .. ``~``  one id per character
====  ===========================  ================================================

Encoding never adds tokens on its own (no post-processor): a rendered chat already starts with
``<|begin_of_text|>``, so ``tokenizer(render_chat(...))["input_ids"]`` holds exactly one bos id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<|finetune_right_pad_id|>"
BOS_TOKEN = "<|begin_of_text|>"
END_OF_TEXT_TOKEN = "<|end_of_text|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
UNK_TOKEN = "<unk>"
THINK_TOKENS: tuple[str, str] = ("<think>", "</think>")

TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    END_OF_TEXT_TOKEN,
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    EOT_TOKEN,
    UNK_TOKEN,
)
TINY_CHARACTERS: tuple[str, ...] = ("\t", "\n", *(chr(c) for c in range(32, 127)))
TINY_VOCAB: tuple[str, ...] = (*TINY_SPECIAL_TOKENS, *THINK_TOKENS, *TINY_CHARACTERS)
TINY_VOCAB_SIZE = len(TINY_VOCAB)
"""Number of ids of the tiny tokenizer (106)."""

TINY_NAME = "tiny"
"""Name :func:`load_tokenizer` maps to :func:`build_tiny_tokenizer`."""


def build_tiny_tokenizer(chat_template: str | None = "llama-nemotron-super") -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer with Llama-3 special tokens (no files, no downloads).

    Args:
        chat_template: Registered chat template to set as ``tokenizer.chat_template`` (``None`` for none).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with bos ``<|begin_of_text|>``, eos ``<|eot_id|>``, pad
        ``<|finetune_right_pad_id|>`` and unk ``<unk>``; saveable with ``save_pretrained`` and reloadable with
        :func:`load_tokenizer`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TINY_VOCAB)}
    # A BPE model without merges splits text into single characters; unknown characters become <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    if chat_template is not None:
        from nemotron_plugins.chat.catalog import get_chat_template

        tokenizer.chat_template = get_chat_template(chat_template)
    return tokenizer


def load_tokenizer(path_or_name: str | os.PathLike[str], **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a Hugging Face tokenizer from local files only (never downloads).

    Args:
        path_or_name: A directory written by ``save_pretrained``, a model name already in the local Hugging Face
            cache, or ``"tiny"`` for :func:`build_tiny_tokenizer`.
        **kwargs: Passed to ``transformers.AutoTokenizer.from_pretrained``.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: If nothing local matches, with what was looked for.
    """
    if str(path_or_name) == TINY_NAME:
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    path = Path(path_or_name).expanduser()
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} is a file; pass the directory holding tokenizer files")
    kwargs.setdefault("local_files_only", True)
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else str(path_or_name), **kwargs)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot load a tokenizer from {str(path_or_name)!r} with local files only: pass a directory written "
            f"by save_pretrained (with tokenizer.json / tokenizer_config.json), a model already in the local "
            f"Hugging Face cache, or {TINY_NAME!r} ({type(exc).__name__}: {exc})"
        ) from exc


CHAT_CONTROL_TOKENS: tuple[str, ...] = (BOS_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, EOT_TOKEN)
"""Tokens the Llama-Nemotron chat templates emit; a checkpoint's tokenizer must encode each as one id."""


def load_checkpoint_tokenizer(
    checkpoint_dir: str | os.PathLike[str], *, chat_template: str | None = "llama-nemotron-super"
) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a Hugging Face checkpoint directory, with a chat template from our registry.

    The tokenizer files come from the checkpoint (local files only); the chat template is always the registered
    one (``chat_template``), so rendering is the same whatever template the checkpoint shipped.

    Args:
        checkpoint_dir: The checkpoint directory (``tokenizer.json`` / ``tokenizer_config.json`` in it).
        chat_template: Registered template name to set (``None``: keep the checkpoint's).

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: the directory has no loadable tokenizer (from :func:`load_tokenizer`).
        ValueError: a Llama-3 chat control token (:data:`CHAT_CONTROL_TOKENS`) is not a single token of it, naming
            the token and the directory.
    """
    tokenizer = load_tokenizer(checkpoint_dir)
    for token in CHAT_CONTROL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"tokenizer in {str(checkpoint_dir)!r} encodes {token!r} as {len(ids)} tokens; the Llama-Nemotron chat "
                "templates need it as one special token (use the model's own Llama-3 tokenizer)"
            )
    if chat_template is not None:
        from nemotron_plugins.chat.catalog import get_chat_template

        tokenizer.chat_template = get_chat_template(chat_template)
    return tokenizer
