"""The embedded Megatron rollout engine: cached decoding vs a full forward, sampling rules, stop handling."""

from __future__ import annotations

import warnings

import pytest
import torch

from nemotron_plugins.curriculum.pass_rate import CompletionGenerator
from nemotron_plugins.registry import ROLLOUT_ENGINES
from nemotron_plugins.rl.engines.base import SamplingSettings
from nemotron_plugins.rl.engines.megatron_engine import MegatronEngineConfig, MegatronRolloutEngine, sample_tokens
from nemotron_plugins.rl.logprobs import token_logprobs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

# The same tests on either device: megatron-core (and so the model) runs on CUDA wherever it is present.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def dist():
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed_context() as ctx:
            yield ctx


@pytest.fixture(scope="module")
def tokenizer():
    from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


def _gpt_model(vocab_size: int, *, max_len: int = 96, seed: int = 0):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(seed)
    cfg = TransformerConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=64,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        use_cpu_initialization=True,  # seeded CPU init, then moved: the same weights on CPU and on CUDA
        params_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=vocab_size,
        max_sequence_length=max_len,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    # Sharpen the output layer so sampled text is not uniform noise and eos / stop strings actually occur.
    with torch.no_grad():
        model.output_layer.weight.mul_(8.0)
    return model.to(DEVICE)


class Biased(torch.nn.Module):
    """A model wrapper adding a fixed bias to the logits (steers sampling towards chosen tokens)."""

    def __init__(self, inner, bias):
        super().__init__()
        self.inner = inner
        self.bias = bias
        self.max_sequence_length = inner.max_sequence_length

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs) + self.bias


@pytest.fixture(scope="module")
def model(dist, tokenizer):
    return _gpt_model(len(tokenizer))


def _full_forward_logprobs(model, prompt_ids, completion_ids, temperature, vocab_size):
    ids = torch.tensor([prompt_ids + completion_ids], device=DEVICE)
    with torch.no_grad():
        model.eval()
        logits = model(ids, torch.arange(ids.shape[1], device=DEVICE).unsqueeze(0), None)
    p = len(prompt_ids)
    return token_logprobs(logits[0, p - 1 : -1], ids[0, p:], temperature=temperature, vocab_size=vocab_size).cpu()


def _worst_logprob_error(model, tokenizer, groups, temperature):
    worst = 0.0
    for g in groups:
        for r in g.rollouts:
            assert r.prompt_ids == tokenizer.encode(g.prompt, add_special_tokens=False)
            assert r.completion_ids and len(r.logprobs) == len(r.completion_ids)
            assert max(r.completion_ids) < len(tokenizer)  # padded-vocabulary ids are never sampled
            ref = _full_forward_logprobs(model, r.prompt_ids, r.completion_ids, temperature, len(tokenizer))
            worst = max(worst, (ref - torch.tensor(r.logprobs)).abs().max().item())
    return worst


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_cached_logprobs_match_full_forward(model, tokenizer, temperature, top_p):
    prompts = ["12+34=", "7+5=", "<think>"]  # different lengths in one lockstep batch
    engine = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=4))
    groups = engine.rollout(prompts, n=3, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    assert [g.prompt_index for g in groups] == [0, 1, 2] and all(len(g.rollouts) == 3 for g in groups)
    assert all(len(r.completion_ids) <= 12 for g in groups for r in g.rollouts)
    worst = _worst_logprob_error(model, tokenizer, groups, temperature)
    assert worst < 1e-4, worst


def test_puzzle_model_cached_logprobs_match_full_forward(dist, tokenizer):
    """The heterogeneous tiny Puzzle model (GQA 4/2 KV heads, linear and no-op attention, padded vocabulary)."""
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    torch.manual_seed(0)
    model = build_puzzle_model(tiny_puzzle_config(len(tokenizer), max_position_embeddings=128))
    assert model.vocab_size > len(tokenizer)  # megatron pads the vocabulary: the engine must not sample padding
    engine = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=8))
    assert engine._left_pads()  # SDPA core attention: prompts of different lengths are left-padded
    groups = engine.rollout(["12+34=", "<think>7"], n=4, temperature=0.8, max_new_tokens=16, seed=0)
    worst = _worst_logprob_error(model, tokenizer, groups, 0.8)
    assert worst < 1e-4, worst
    # ... and decode greedily what the lockstep path (prefill to the shortest prompt, then one token a step) does
    lockstep = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=8))
    lockstep._left_padding = False
    prompts = ["12+34=", "<think>7", "9+1="]
    want = lockstep.rollout(prompts, n=2, temperature=0.0, max_new_tokens=16, seed=0)
    got = engine.rollout(prompts, n=2, temperature=0.0, max_new_tokens=16, seed=0)
    for g, w in zip(got, want, strict=True):
        for r, ref in zip(g.rollouts, w.rollouts, strict=True):
            assert r.completion_ids == ref.completion_ids
            assert r.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


def test_kv_cache_and_recompute_paths_agree(model, tokenizer):
    kw = dict(n=2, temperature=1.0, max_new_tokens=8, seed=11)
    cached = MegatronRolloutEngine(model, tokenizer).rollout(["3+4=", "10+20="], **kw)
    slow = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(use_kv_cache=False)).rollout(
        ["3+4=", "10+20="], **kw
    )
    for a, b in zip(cached, slow, strict=True):
        for x, y in zip(a.rollouts, b.rollouts, strict=True):
            assert x.completion_ids == y.completion_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)


def test_seed_determinism_and_batch_split(model, tokenizer):
    one = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=64))
    a = one.rollout(["1+1="], n=4, max_new_tokens=6, seed=5)
    b = one.rollout(["1+1="], n=4, max_new_tokens=6, seed=5)
    c = one.rollout(["1+1="], n=4, max_new_tokens=6, seed=6)
    ids = lambda g: [r.completion_ids for r in g[0].rollouts]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({tuple(x) for x in ids(a)}) > 1  # samples of a group differ


def test_eos_and_length_and_text(model, tokenizer):
    eos = tokenizer.eos_token_id
    bias = torch.zeros(len(tokenizer), device=DEVICE)
    # eos likely enough that some completions stop and some run to the length limit: with this model about 40 % of
    # completions stop (seeds 0-5 on CPU: 3 to 9 of 16), so 32 samples hold both kinds whatever the device's RNG
    # stream (at +4 about 95 % stopped, and CUDA's stream could stop all 16).
    bias[eos] = 2.0
    engine = MegatronRolloutEngine(Biased(model, bias), tokenizer)
    groups = engine.rollout(["9+9="], n=32, max_new_tokens=10, seed=0)
    reasons = set()
    for r in groups[0].rollouts:
        reasons.add(r.finish_reason)
        if r.finish_reason == "stop":
            assert r.completion_ids[-1] == eos and eos not in r.completion_ids[:-1]
            assert r.completion_text == tokenizer.decode(r.completion_ids[:-1])
        else:
            assert len(r.completion_ids) == 10 and eos not in r.completion_ids
            assert r.completion_text == tokenizer.decode(r.completion_ids)
    assert reasons == {"stop", "length"}, reasons


class Recording(Biased):
    """:class:`Biased` that records the batch size of every forward call."""

    def __init__(self, inner, bias):
        super().__init__(inner, bias)
        self.batch_sizes = []

    def forward(self, *args, **kwargs):
        self.batch_sizes.append(args[0].shape[0])
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("kind", ["gpt_lockstep", "puzzle_left_padded"])
def test_finished_rows_leave_the_decoding_batch_without_changing_any_completion(model, tokenizer, kind, monkeypatch):
    if kind == "puzzle_left_padded":
        from nemotron_plugins.puzzle.model import build_puzzle_model
        from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

        torch.manual_seed(0)
        model = build_puzzle_model(tiny_puzzle_config(len(tokenizer), max_position_embeddings=128))
        with torch.no_grad():
            model.output_layer.weight.mul_(8.0)
    eos = tokenizer.eos_token_id
    bias = torch.zeros(model.vocab_size, device=DEVICE)  # the Puzzle model's vocabulary is padded
    bias[eos] = 2.0  # about 40 % of the replies stop early (test above)
    cached = Recording(model, bias)
    kw = dict(n=16, temperature=1.0, max_new_tokens=12, seed=3)
    engine = MegatronRolloutEngine(cached, tokenizer)
    assert engine._left_pads() == (kind == "puzzle_left_padded")
    got = engine.rollout(["9+9=", "12+1="], **kw)
    # The lockstep path compared with the no-cache path (the whole batch at every step); the left-padded one (whose
    # decoding starts after the longest prompt) with itself, never compacting.
    if kind == "gpt_lockstep":
        recompute = MegatronEngineConfig(use_kv_cache=False)
        want = MegatronRolloutEngine(Biased(model, bias), tokenizer, config=recompute).rollout(["9+9=", "12+1="], **kw)
    else:
        from nemotron_plugins.rl.engines import megatron_engine

        monkeypatch.setattr(megatron_engine, "COMPACT_AT_RUNNING_SHARE", 0.0)
        whole = Recording(model, bias)
        want = MegatronRolloutEngine(whole, tokenizer).rollout(["9+9=", "12+1="], **kw)
        assert min(whole.batch_sizes[1:]) == 32
    lengths = []
    for g, w in zip(got, want, strict=True):
        for r, ref in zip(g.rollouts, w.rollouts, strict=True):
            assert (r.completion_ids, r.finish_reason) == (ref.completion_ids, ref.finish_reason)
            assert r.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
            lengths.append(len(r.completion_ids))
    assert min(lengths) < max(lengths) == 12
    # The KV-cache path decoded fewer rows once some had stopped; the recompute path kept all 32.
    assert cached.batch_sizes[0] < 32  # one shared prefill per distinct prompt
    assert max(cached.batch_sizes[1:]) <= 32 and min(cached.batch_sizes[1:]) < 32 * 0.75
    assert _worst_logprob_error(Biased(model, bias), tokenizer, got, 1.0) < 1e-4


def test_forced_eos_and_stop_strings(dist, tokenizer):
    model = _gpt_model(len(tokenizer), seed=1)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        model.output_layer.weight.zero_()
        model.output_layer.weight[eos] = 0.0
        # favour "a" strongly, then stop at "aa"
        a = tokenizer.convert_tokens_to_ids("a")
        model.output_layer.weight[a].fill_(0.0)
    with torch.no_grad():
        bias_logits = torch.zeros(len(tokenizer), device=DEVICE)
        bias_logits[a] = 50.0

    engine = MegatronRolloutEngine(Biased(model, bias_logits), tokenizer)
    r = engine.rollout(["x"], n=1, max_new_tokens=10, stop=["aa"], seed=0)[0].rollouts[0]
    assert r.completion_text == "aa" and r.finish_reason == "stop" and len(r.completion_ids) == 2
    bias_logits.zero_()
    bias_logits[eos] = 50.0
    r = engine.rollout([[tokenizer.bos_token_id, a]], n=1, max_new_tokens=10, seed=0)[0].rollouts[0]
    assert r.completion_ids == [eos] and r.completion_text == "" and r.finish_reason == "stop"


def test_top_p_and_sampling_rules():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        tok, lp = sample_tokens(logits, temperature=1.0, top_p=0.75, generator=g)
        seen.add(tok.item())
        assert lp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, tok.item()].item())
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.75; tokens 2 and 3 are cut
    tok, _ = sample_tokens(logits, temperature=1.0, top_p=0.4, generator=g)
    assert tok.item() == 0  # the most likely token is always kept


def test_curriculum_adapter_and_errors(model, tokenizer):
    engine = MegatronRolloutEngine(model, tokenizer, default_sampling=SamplingSettings(max_new_tokens=3, seed=1))
    assert isinstance(engine, CompletionGenerator)
    texts = engine.generate([[{"role": "user", "content": "2+2?"}], "1+2="], 2)
    assert len(texts) == 2 and all(len(t) == 2 and all(isinstance(x, str) for x in t) for t in texts)
    with pytest.raises(ValueError, match="prompt 0 has 200 tokens"):
        engine.rollout([[5] * 200], n=1)
    with pytest.raises(ValueError, match="prompt 1 must be"):
        engine.rollout(["ok", []], n=1)
    with pytest.raises(ValueError, match="top_p"):
        engine.rollout(["ok"], n=1, top_p=0.0)
    assert ROLLOUT_ENGINES.get("megatron") is MegatronRolloutEngine


def test_temperature_zero_is_greedy(model, tokenizer):
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]))
    tok, lp = sample_tokens(logits, temperature=0.0, top_p=1.0, generator=None)
    assert tok.tolist() == [1, 0]
    assert lp.tolist() == pytest.approx(torch.log(torch.tensor([0.5, 0.6])).tolist())
    engine = MegatronRolloutEngine(model, tokenizer)
    groups = engine.rollout(["12+34=", "7+5="], n=3, temperature=0.0, max_new_tokens=8, seed=1)
    other = engine.rollout(["12+34=", "7+5="], n=1, temperature=0.0, max_new_tokens=8, seed=99)
    for g, o in zip(groups, other, strict=True):
        ids = [r.completion_ids for r in g.rollouts]
        assert ids[0] == ids[1] == ids[2] == o.rollouts[0].completion_ids  # arg-max: no seed, no spread
        # Each token is the arg-max of the full forward's next-token logits.
        full = torch.tensor([g.rollouts[0].prompt_ids + ids[0]], device=DEVICE)
        with torch.no_grad():
            positions = torch.arange(full.shape[1], device=DEVICE).unsqueeze(0)
            logits_full = model(full, positions, None)[0, :, : len(tokenizer)]
        p = len(g.rollouts[0].prompt_ids)
        assert logits_full[p - 1 : -1].argmax(-1).tolist() == ids[0]
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        engine.rollout(["ok"], n=1, temperature=-1.0)


def test_shared_prefill_gives_the_rollouts_of_one_prefill_per_sequence(dist, tokenizer, monkeypatch):
    """The n samples of a prompt share one prefill (KV cache rows copied): same tokens, log-probs to 1e-5, as when
    every sequence is prefilled on its own row."""
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.engines import megatron_engine

    assert megatron_engine.shared_prefixes([[1, 2, 3], [1, 2, 4], [5, 6]], 2) == ([0, 0, 1], [0, 2])
    torch.manual_seed(0)
    model = build_puzzle_model(tiny_puzzle_config(len(tokenizer), max_position_embeddings=128))
    engine = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=16))
    prompts = ["12+34=", "12+35=", "<think>7"]  # the first two share their first (shortest-prompt) tokens too
    kw = dict(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    calls = []
    real = megatron_engine.shared_prefixes
    monkeypatch.setattr(megatron_engine, "shared_prefixes", lambda p, n: calls.append(real(p, n)) or calls[-1])
    shared = engine.rollout(prompts, **kw)
    assert len(calls[-1][1]) < 12  # the shared path ran: fewer prefill rows than sequences
    monkeypatch.setattr(megatron_engine, "shared_prefixes", lambda p, n: (list(range(len(p))), list(range(len(p)))))
    alone = engine.rollout(prompts, **kw)
    for a, b in zip(shared, alone, strict=True):
        for x, y in zip(a.rollouts, b.rollouts, strict=True):
            assert x.completion_ids == y.completion_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
    assert _worst_logprob_error(model, tokenizer, shared, 1.0) < 1e-4


def test_rotated_key_cache_decodes_as_megatrons_own_static_cache(dist, tokenizer):
    """The Puzzle layers' SelfAttention stores keys already rotated (RoPE once per position, not over the whole cache
    every step): the rollouts equal those of megatron's own SelfAttention (un-rotated cache) token for token."""
    from megatron.core.transformer.attention import SelfAttention

    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    torch.manual_seed(0)
    model = build_puzzle_model(tiny_puzzle_config(len(tokenizer), max_position_embeddings=128))
    rotated = [
        layer.self_attention for layer in model.decoder.layers if isinstance(layer.self_attention, SelfAttention)
    ]
    assert rotated and all(type(a).__name__ == "RotatedCacheSelfAttention" for a in rotated)
    engine = MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(max_batch_size=16))
    kw = dict(n=3, temperature=1.0, max_new_tokens=20, seed=5)
    ours = engine.rollout(["12+34=", "<think>7"], **kw)
    subclass = type(rotated[0])
    for attention in rotated:
        attention.__class__ = SelfAttention
    try:
        megatrons = engine.rollout(["12+34=", "<think>7"], **kw)
    finally:
        for attention in rotated:
            attention.__class__ = subclass
    for a, b in zip(ours, megatrons, strict=True):
        for x, y in zip(a.rollouts, b.rollouts, strict=True):
            assert x.completion_ids == y.completion_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
