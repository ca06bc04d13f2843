"""Reasoning toggle and chat formatting for Llama-Nemotron models.

Modules (lower layer: imports nothing from rl/sft/recipes/cli):

- ``templates/*.jinja``: the shipped chat templates (package data), registered in ``CHAT_TEMPLATES`` by
  :mod:`nemotron_plugins.chat.plugins`: ``llama-nemotron-super`` and ``llama-nemotron-nano``.
- :mod:`~nemotron_plugins.chat.catalog`: ``ChatTemplate``, ``get_template(name)``, ``get_chat_template(name) -> str``.
- :mod:`~nemotron_plugins.chat.render`: ``render_chat(messages, *, template, add_generation_prompt, bos_token,
  tools) -> str`` (byte-identical to ``tokenizer.apply_chat_template(..., tokenize=False)``).
- :mod:`~nemotron_plugins.chat.toggle`: ``set_reasoning``, ``get_reasoning``, ``sampling_preset``,
  ``format_response``, ``parse_response -> ParsedResponse(reasoning, answer, errors)``.
- :mod:`~nemotron_plugins.chat.tokenizer`: ``build_tiny_tokenizer()`` (character level, Llama-3 specials),
  ``load_tokenizer(path_or_name)`` (local files only).
"""
