"""SFT data (Post-Training-Dataset schema, loss masks, packing) and synthetic tasks for the tiny recipes.

Modules (lower layer: imports only from chat and registry):

- :mod:`~nemotron_plugins.data.rows`: ``read_rows(path, *, split)`` over JSONL, ``save_to_disk`` directories,
  parquet / jsonl via ``datasets.load_dataset`` (local files only).
- :mod:`~nemotron_plugins.data.sft`: ``build_sft_examples(rows, tokenizer, *, max_seq_len, strict=False) ->
  (list[SFTExample], DataReport)``, ``load_sft_examples``, ``find_on_off_pairs``.
- :mod:`~nemotron_plugins.data.report`: ``DataReport`` (counts per skip reason with example lines), ``BadRowError``.
- :mod:`~nemotron_plugins.data.packing`: ``pack_examples(examples, seq_len) -> list[PackedSequence]`` with
  ``input_ids, labels, loss_mask, position_ids, seq_boundaries`` (+ ``cu_seqlens``, ``attention_allowed()``).
- :mod:`~nemotron_plugins.data.torch_dataset`: ``PackedSFTDataset``, ``collate_packed`` (imports torch).
- :mod:`~nemotron_plugins.data.blend`: ``data.blend`` (Nemotron-CrossThink style): weighted sources, ``mcq`` /
  ``open_ended`` templates, filtering to golds the rewards can verify, seeded sampling, a per-source report.
- :mod:`~nemotron_plugins.data.synthetic`: addition problems with digit-step ``<think>`` traces, optional
  corruption, RL prompt rows, ``extract_answer`` / ``check_answer``, ``write_synthetic_dataset``.
"""
