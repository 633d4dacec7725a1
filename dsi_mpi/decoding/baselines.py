"""Baselines that run on one verifier rank, driven and timed by rank 0 like SI and DSI.

- nonsi: plain decoding with the target and its KV cache, one token per forward (greedy, or sampling
  with the position-keyed random streams of dsi_mpi/decoding/acceptance.py).
- hf_assisted: Hugging Face's own assisted generation (`generate(assistant_model=...)`) on the same pair,
  with the same fixed lookahead (constant schedule, no confidence early stop), what users would
  otherwise pick; when dsi-mpi's lookahead is adaptive, HF's own adaptive one: the "heuristic" schedule
  (from k = 4) and its default confidence threshold. The drafter is loaded on that verifier only when this algorithm runs.
  A drafter of another vocabulary runs as Hugging Face's Universal Assisted Generation (`tokenizer=`,
  `assistant_tokenizer=`: greedy re-tokenises text, sampling uses HF's own token-level intersection).
- hf_prompt_lookup: Hugging Face's own prompt-lookup decoding (`generate(prompt_lookup_num_tokens=k)`,
  k = PROMPT_LOOKUP_TOKENS when dsi-mpi's lookahead is adaptive,
  with `max_matching_ngram_size` = the n-gram drafter's n when that is the drafter, else HF's default):
  the baseline for the n-gram drafter.
The verifier streams every token to rank 0 the moment it exists; rank 0 timestamps arrivals with the
same clock it uses for SI and DSI commits, so TTFT and per-token times are comparable.
"""

from __future__ import annotations

import copy
import time

from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.channel import Channel

PROMPT_LOOKUP_TOKENS = 10  # HF's documented example value for prompt_lookup_num_tokens
HEURISTIC_START = 4  # the heuristic schedule's first k


def run_baseline(
    channel: Channel, verifier: int, algorithm: str, prompt: list[int], record: RunRecord, run: RunSettings
) -> RunRecord:
    """Rank 0: ask `verifier` to run a baseline and time the tokens as they arrive (hf_assisted drafts
    run.lookahead tokens per step, 0: adaptively; nonsi ignores the lookahead)."""
    t0 = time.perf_counter()
    channel.send(
        verifier,
        protocol.BASELINE,
        prompt,
        algorithm=protocol.BASELINE_ALGORITHMS[algorithm],
        max_new_tokens=run.max_new_tokens,
        stop_at_eos=int(run.stop_at_eos),
        lookahead=run.lookahead,
        key=run.key,
        ngram=run.ngram,
    )
    while True:
        _, msg = channel.receive(f"{algorithm} tokens from rank {verifier}", source=verifier, tag=protocol.TOKENS)
        now = time.perf_counter() - t0
        if msg.first_index != len(record.tokens):
            raise protocol.ProtocolError(f"rank {verifier} sent token {msg.first_index}, expected {len(record.tokens)}")
        record.tokens.extend(int(t) for t in msg.payload)
        record.commit_times.extend([now] * len(msg.payload))
        if msg.done:
            break
    record.wall_s = record.commit_times[-1] if record.commit_times else time.perf_counter() - t0
    record.ttft_s = record.commit_times[0] if record.commit_times else float("nan")
    return record


def serve_baseline(channel: Channel, target, msg, assistant_factory, rule) -> None:
    """Verifier side of `run_baseline`."""
    prompt = [int(t) for t in msg.payload]
    eos = set(target.eos_token_ids) if msg.stop_at_eos else set()
    if msg.algorithm == protocol.BASELINE_ALGORITHMS["nonsi"]:
        _plain_decode(channel, target, prompt, msg.max_new_tokens, eos, rule, msg.key)
    elif msg.algorithm == protocol.BASELINE_ALGORITHMS["hf_assisted"]:
        if assistant_factory is None:
            raise protocol.ProtocolError("hf_assisted asked of a rank without real models")
        drafter = assistant_factory()  # a runner; one of another vocabulary brings the pair's tokenizers (UAG)
        assistant = _schedule(drafter.model, msg.lookahead)
        _hf_generate(channel, target, prompt, msg, rule, assistant, **getattr(drafter, "assistant_kwargs", {}))
    elif msg.algorithm == protocol.BASELINE_ALGORITHMS["hf_prompt_lookup"]:
        lookup = {"prompt_lookup_num_tokens": msg.lookahead or PROMPT_LOOKUP_TOKENS}
        if msg.ngram:
            lookup["max_matching_ngram_size"] = msg.ngram
        _hf_generate(channel, target, prompt, msg, rule, **lookup)
    else:
        raise protocol.ProtocolError(f"unknown baseline algorithm code {msg.algorithm}")


def _plain_decode(channel: Channel, target, prompt: list[int], max_new_tokens: int, eos: set, rule, key: int) -> None:
    target.reset()
    token = rule.next_token(target, prompt, len(prompt), key)
    for i in range(max_new_tokens):
        done = i + 1 == max_new_tokens or token in eos
        channel.send(0, protocol.TOKENS, [token], first_index=i, done=int(done))
        if done:
            break
        token = rule.next_token(target, [token], len(prompt) + i + 1, key)
    target.reset()


class _TokenStreamer:
    """Hugging Face streamer interface: the first put() is the prompt, later ones are new tokens."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.sent = 0
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        tokens = [int(t) for t in value.reshape(-1).tolist()]
        self.channel.send(0, protocol.TOKENS, tokens, first_index=self.sent, done=0)
        self.sent += len(tokens)

    def end(self) -> None:
        self.channel.send(0, protocol.TOKENS, [], first_index=self.sent, done=1)


def _schedule(assistant, lookahead: int):
    """lookahead k >= 1: the assistant drafts exactly k tokens per round, as si does (no heuristic, no early
    stop). 0: HF's adaptive choice, the heuristic schedule from HEURISTIC_START with its default threshold."""
    assistant.generation_config = copy.deepcopy(assistant.generation_config)
    config = assistant.generation_config
    config.num_assistant_tokens = lookahead or HEURISTIC_START
    config.num_assistant_tokens_schedule = "constant" if lookahead else "heuristic"
    if lookahead:
        config.assistant_confidence_threshold = 0.0
    return assistant


def _hf_generate(channel: Channel, target, prompt: list[int], msg, rule, assistant=None, **speculation) -> None:
    """Hugging Face's own `generate` with one of its speculative modes, streaming tokens to rank 0."""
    import torch

    model = target.model
    config = copy.deepcopy(model.generation_config)
    config.do_sample = rule.sampled
    if rule.sampled:  # Hugging Face draws with torch's generator: seeded per prompt, not per position
        config.temperature, config.top_k, config.top_p = rule.temperature, rule.top_k or None, rule.top_p
        torch.manual_seed(rule.seed * 1_000_003 + msg.key)
    if not msg.stop_at_eos:
        config.eos_token_id = None
    ids = torch.tensor([prompt], dtype=torch.long, device=target.device)
    try:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                assistant_model=assistant,
                generation_config=config,
                max_new_tokens=msg.max_new_tokens,
                streamer=_TokenStreamer(channel),
                **speculation,
            )
    except (RuntimeError, ValueError, IndexError) as err:
        if "assistant_tokenizer" not in speculation:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(
            f"hf_assisted: Hugging Face's Universal Assisted Generation failed ({type(err).__name__}: {first}); "
            "it loses track of the drafter's cache with some pairs (docs/drafters.md): "
            "leave hf_assisted out of decoding.algorithms for this pair"
        ) from None
