"""Drafters of another vocabulary (token-level intersection): which tokens match, the one-line refusals, and
the wrapper's drafter cache, which must always hold an encoding of exactly the committed text, also when
that text holds target tokens the drafter does not have (then it is re-encoded from text)."""

import random

import pytest
import torch

from dsi_mpi.backends.checks import check_pair, drafter_vocabulary, vocabulary_map
from dsi_mpi.backends.loading import build_runner
from dsi_mpi.backends.tli import TLIDrafter
from dsi_mpi.backends.vocab_map import MIN_SHARED, _byte_level_alphabet, build_vocab_map
from dsi_mpi.io.config import ConfigError, validate

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nclass Path:\n    pass  # naïve café, ünïcödé 中文 🙂\n",
    "    for key, value in sorted(items.items()):\n        yield key\n",
]


@pytest.fixture(scope="module")
def pair_models(tmp_path_factory):
    from tiny_vocabs import build_cross_vocab_models

    torch.set_num_threads(1)

    return build_cross_vocab_models(tmp_path_factory.mktemp("cross_vocab"))


def _cfg(target: str, drafter: str):
    models = {"kind": "hf", "target": target, "drafter": drafter, "dtype": "float32", "device": "cpu", "threads": 1}
    return validate({"models": models})


def wrapped(pair_models, name: str) -> TLIDrafter:
    runner = build_runner("drafter", _cfg(pair_models["target"], pair_models[name]))
    assert isinstance(runner, TLIDrafter)
    return runner


def test_the_byte_level_alphabet_is_the_tokenizers_one():
    from tokenizers import pre_tokenizers

    alphabet = _byte_level_alphabet()
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet()) and sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["a"] == ord("a")


def test_tokens_match_by_the_bytes_they_stand_for():
    """'Ġreturn' (byte-level) and '▁return' (SentencePiece) are one token; SentencePiece's 'a' is matched, not
    its byte-fallback twin '<0x61>'; the special end token only matches the special end token."""
    from tiny_vocabs import EOS, embedded_tokenizer, sp_drafter_tokenizer

    target, sp = embedded_tokenizer(), sp_drafter_tokenizer()
    pairs = build_vocab_map(target, sp, len(target), len(sp))
    t, d = target.get_vocab(), sp.get_vocab()
    assert pairs.to_drafter[t["Ġreturn"]] == d["\u2581return"]
    assert pairs.to_drafter[t["a"]] == d["a"] != d["<0x61>"]
    assert pairs.to_drafter[t["Ċ"]] == d["\n"]
    assert pairs.to_drafter[t[EOS]] == d[EOS]
    assert pairs.drafter.spelled[d["<0xC3>"]] == b"\xc3" and pairs.drafter.lead == b" "
    record = pairs.record()
    assert record["method"] == "tli" and record["shared"] == len(record["pairs"]) == len(pairs.drafter_ids)
    assert record["shared"] >= MIN_SHARED * min(record["target_tokens"], record["drafter_tokens"])


def test_a_pair_sharing_too_few_tokens_is_one_line_naming_the_sizes(pair_models):
    with pytest.raises(ConfigError, match=r"share 6 tokens of 306 and 2048 \(2.0% of the smaller\)") as err:
        check_pair(_cfg(pair_models["target"], pair_models["disjoint"]).models)
    assert "\n" not in str(err.value) and "at least 50%" in str(err.value)


def test_a_drafter_without_a_usable_tokenizer_is_one_line_naming_the_sizes(pair_models, tmp_path):
    with pytest.raises(ConfigError, match=r"\(700 vocabulary rows; the target has 2048\) has no usable tokenizer"):
        check_pair(_cfg(pair_models["target"], pair_models["no_tokenizer"]).models)
    from tiny_vocabs import bpe_drafter_tokenizer
    from tokenizers import decoders

    wordpiece = bpe_drafter_tokenizer()
    wordpiece.backend_tokenizer.decoder = decoders.WordPiece()
    with pytest.raises(ConfigError, match=r"drafter's tokenizer \(1281 rows\): its decoder \(WordPiece\)"):
        build_vocab_map(bpe_drafter_tokenizer(), wordpiece, 2048, 1281)


def test_hf_assisted_needs_different_vocabulary_sizes(pair_models, tmp_path):
    """Hugging Face's generate refuses a second tokenizer for models of equal vocabulary sizes."""
    from tiny_vocabs import _llama, bpe_drafter_tokenizer

    tokenizer = bpe_drafter_tokenizer()
    _llama(2048, tokenizer, seed=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    models = _cfg(pair_models["target"], str(tmp_path)).models
    check_pair(models, ["si", "dsi"])
    with pytest.raises(ConfigError, match=r"vocabulary sizes differ \(both 2048\)"):
        check_pair(models, ["si", "hf_assisted"])


def test_one_tokenizer_with_more_rows_is_an_identity_mapping(tiny_models):
    """A drafter of the target's tokenizer whose model has 7 rows more (padded vocabularies, as Qwen2.5-0.5B's
    for Qwen2.5-7B): drafted through the shared tokens, each its own id; one vocabulary: no wrapper."""
    runner = build_runner("drafter", _cfg(tiny_models["target"], tiny_models["other_vocab"]))
    assert isinstance(runner, TLIDrafter) and runner.vocab_size == 257
    assert runner.map.drafter_ids.tolist() == runner.map.target_ids.tolist() == list(range(257))
    assert vocabulary_map(tiny_models["target"], tiny_models["noisy"]) is None
    assert drafter_vocabulary(_cfg(tiny_models["target"], tiny_models["noisy"]).models, None) == {"method": "shared"}
    assert drafter_vocabulary(_cfg(tiny_models["target"], "ngram").models, None) == {"method": "shared"}
    assert drafter_vocabulary(_cfg(tiny_models["target"], tiny_models["other_vocab"]).models, None)["shared"] == 257


def _text(runner: TLIDrafter, ids) -> bytes:
    return b"".join(runner.map.text[t] for t in ids)


def assert_consistent(runner: TLIDrafter) -> None:
    """The drafter's ids spell exactly the text of the target ids fed (after the dummy space a SentencePiece
    drafter puts before a text it encodes), and every sync point likewise."""
    lead = runner.map.drafter.lead

    def spells(ids, text):
        return runner.map.drafter.spell(ids) in (text, lead + text) if ids else text == b""

    fed, text = runner._fed, _text(runner, runner.tokens)
    assert len(runner._sync) == len(runner.tokens) + 1 and runner._sync[fed] <= len(runner.inner.tokens)
    for i, n in enumerate(runner._sync[: fed + 1]):
        assert n < 0 or spells(runner.inner.tokens[:n], _text(runner, runner.tokens[:i])), i
    if _whole_characters(text) or not lead:  # then the cache holds the text and nothing more
        assert spells(runner.inner.tokens, _text(runner, runner.tokens[:fed]))
        assert runner._sync[fed] == len(runner.inner.tokens)


def _whole_characters(text: bytes) -> bool:
    """UTF-8, or UTF-8 cut inside its last character. Elsewhere (random drafts fed back) a SentencePiece
    drafter encodes the runs of whole characters apart, each after its dummy space: the cache then holds one
    space more after the first such byte, and the wrapper keeps its sync points before it."""
    try:
        text.decode()
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"
    return True


def assert_cache_holds_its_ids(runner: TLIDrafter, scores) -> None:
    """The scores equal a fresh forward over the drafter ids the cache claims to hold (to float precision:
    another shape may take another kernel)."""
    model = runner.inner.model
    with torch.no_grad():
        fresh = model(torch.tensor([runner.inner.tokens])).logits[0, -1:]
    torch.testing.assert_close(scores, fresh[:, runner._rows], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_the_prompt_is_encoded_by_the_drafters_own_tokenizer(pair_models, name):
    runner = wrapped(pair_models, name)
    target_tok, drafter_tok = runner.map.target.tokenizer, runner.map.drafter.tokenizer
    for text in TEXTS:
        runner.reset()
        runner.greedy(target_tok(text)["input_ids"], 1)
        assert runner.inner.tokens == drafter_tok(text)["input_ids"]
        assert_consistent(runner)


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_committed_tokens_outside_the_intersection_are_re_encoded_from_text(pair_models, name):
    """Target tokens the drafter lacks ('Ġyield' is none of the bpe drafter's 1,000 merges' results) reach
    the drafter as its own encoding of their text; shared ones one for one; the scores are those of its
    cache's ids."""
    runner = wrapped(pair_models, name)
    target_tok, drafter_tok = runner.map.target.tokenizer, runner.map.drafter.tokenizer
    prompt, piece = "def keys(items):\n", "    yield sorted(items)"
    rest = target_tok(piece)["input_ids"]
    unshared = [t for t in rest if runner.map.to_drafter[t] < 0]
    assert unshared, "the test needs a target token the drafter lacks"
    runner.greedy(target_tok(prompt)["input_ids"], 1)
    before, length = runner.reencoded, len(runner.inner.tokens)
    for token in rest:
        scores = super(TLIDrafter, runner).forward([token], 1)
        assert_consistent(runner)
        assert_cache_holds_its_ids(runner, scores)
    assert runner.reencoded > before
    if name == "bpe":  # re-encoded locally: its tokenizer's ids for the text of what it lacks
        assert drafter_tok.decode(runner.inner.tokens[length:]) == piece
        assert (
            drafter_tok(" yield", add_special_tokens=False)["input_ids"] == runner.inner.tokens[length + 1 : length + 3]
        )
    else:  # SentencePiece (a dummy space before each text): the whole text again, as its tokenizer writes it
        assert runner.inner.tokens == drafter_tok(prompt + piece)["input_ids"]


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_crops_and_drafts_as_the_coordinator_makes_them_keep_the_cache_consistent(pair_models, name):
    """Random crops (rejections) and feeds of committed target tokens, any target tokens and the drafter's
    own drafts: the drafter's ids always spell the text, and its cache always holds exactly those ids."""
    runner = wrapped(pair_models, name)
    target_tok = runner.map.target.tokenizer
    rng = random.Random(7)
    for text in TEXTS:
        ids = target_tok(text)["input_ids"]
        prompt, committed = ids[:4], ids[4:]
        runner.reset()
        seq = list(prompt)
        runner.greedy(prompt, 1)
        for _ in range(30):
            keep = rng.randint(len(prompt), len(seq)) if rng.random() < 0.4 else len(seq)
            runner.crop(keep)
            assert_consistent(runner)
            truth = committed[keep - len(prompt) : keep - len(prompt) + rng.randint(1, 3)]
            seq = seq[:keep] + (truth or [rng.randrange(runner.vocab_size)])  # past the text: any token
            scores = super(TLIDrafter, runner).forward(seq[len(runner.tokens) :], 1)
            assert_consistent(runner)
            assert_cache_holds_its_ids(runner, scores)
            draft = int(runner.map.target_ids[scores.argmax()])
            if rng.random() < 0.5:  # the drafter's own draft, fed back
                seq.append(draft)
                runner.greedy([draft], 1)
                assert_consistent(runner)


def test_an_interrupted_draft_leaves_a_consistent_cache(pair_models):
    """A result that arrives between the drafter's layers abandons its step (coordinator's DraftInterrupted):
    the wrapper falls back to a sync point whose ids are still cached."""
    runner = wrapped(pair_models, "sp")
    target_tok = runner.map.target.tokenizer
    ids = target_tok(TEXTS[0])["input_ids"]
    runner.greedy(ids[:6], 1)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    runner.set_layer_callback(interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.greedy(ids[6:10], 1)
    runner.set_layer_callback(None)
    assert runner.tokens == ids[:6]
    assert_consistent(runner)
    scores = super(TLIDrafter, runner).forward(ids[6:10], 1)
    assert_consistent(runner)
    assert_cache_holds_its_ids(runner, scores)


def test_drafts_are_the_drafters_best_shared_token_renormalised(pair_models):
    runner = wrapped(pair_models, "bpe")
    ids = runner.map.target.tokenizer(TEXTS[2])["input_ids"]
    full = runner.forward(ids, 1)
    with torch.no_grad():
        own = runner.inner.model(torch.tensor([runner.inner.tokens])).logits[0, -1]
    shared = torch.zeros(full.shape[-1], dtype=torch.bool)
    shared[runner._cols] = True
    assert torch.isneginf(full[0, ~shared]).all()
    q = torch.softmax(full[0], -1)[runner._cols]
    torch.testing.assert_close(q, torch.softmax(own[runner._rows], -1), rtol=1e-4, atol=1e-6)
    runner.reset()
    best = int(runner.greedy(ids, 1)[0])
    assert best == int(runner._cols[own[runner._rows].argmax()])
    assert runner.map.to_drafter[best] >= 0


def test_the_wrapper_drives_the_coordinator_rules(pair_models):
    """Greedy and sampling rules of the coordinator take target ids from it, q over the target's vocabulary."""
    import numpy as np

    from dsi_mpi.decoding.acceptance import Greedy, Sampling

    runner = wrapped(pair_models, "bpe")
    ids = runner.map.target.tokenizer(TEXTS[0])["input_ids"]
    token = Greedy().draft(runner, ids, len(ids), 0)
    assert runner.map.to_drafter[token] >= 0 and runner.tokens == ids
    rule = Sampling(seed=3, temperature=0.8, top_k=20)
    runner.reset()
    token = rule.draft(runner, ids, len(ids), 0)
    q = rule.q[len(ids)]
    assert q.shape == (2048,) and np.isclose(q.sum(), 1) and q[token] > 0
    assert q[[t for t in range(2048) if runner.map.to_drafter[t] < 0]].sum() == 0
