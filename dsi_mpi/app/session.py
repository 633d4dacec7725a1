"""Rank 0's side of a job: check the inputs, run every algorithm on every prompt, record everything."""

from __future__ import annotations

import dataclasses

import numpy as np

from dsi_mpi.decoding.acceptance import rule_from_config
from dsi_mpi.decoding.baselines import run_baseline
from dsi_mpi.decoding.settings import RunSettings
from dsi_mpi.io import log
from dsi_mpi.io.config import ConfigError
from dsi_mpi.io.drafter_spec import parse_drafter
from dsi_mpi.io.prompts import load_prompts
from dsi_mpi.io.records import RunRecord
from dsi_mpi.io.results import ResultsWriter
from dsi_mpi.mpi.faults import FaultPlan

logger = log.get("session")


class Session:
    def __init__(self, cfg, prompts, prompt_tokens, eos_ids, writer):
        self.cfg = cfg
        self.prompts = prompts
        self.prompt_tokens = prompt_tokens
        self.eos_ids = eos_ids
        self.writer = writer

    @classmethod
    def prepare(cls, cfg) -> Session:
        """Everything that can fail on user input, before any model weights are loaded."""
        p, out = cfg.prompts, cfg.output
        prompts = load_prompts(p.path, p.limit, p.shard_count, p.shard_index)
        if cfg.models.kind == "emulated":
            from dsi_mpi.backends.emulated import emulated_prompt

            emu = cfg.emulation
            tokens = {
                p.index: emulated_prompt(cfg.decoding.seed, p.index, emu.prompt_tokens, emu.vocab_size) for p in prompts
            }
            eos_ids: tuple = ()
        else:
            tokens, eos_ids = _tokenize_for_target(cfg, prompts)
        writer = ResultsWriter(out.path, cfg, out.overwrite, out.resume)
        return cls(cfg, prompts, tokens, eos_ids, writer)

    def run(self, channel, drafter, feed, clock_offsets_us: dict[int, int], fault_rank: int = 0, layout=None) -> None:
        """Every algorithm on every prompt the feed hands out (dsi_mpi/app/feeds.py: this rank's own list with
        one instance, the scheduler's queue with several), each prompt's records back to the feed. layout:
        the verifiers, plain ranks or tuples of pipeline stage ranks (default: every rank plain)."""
        from dsi_mpi.decoding.coordinator import SpeculativeDecoder
        from dsi_mpi.decoding.slots import plain_verifier

        comm_size = channel.comm.Get_size()
        decoding = self.cfg.decoding
        layout = layout or list(range(1, comm_size))
        self.baseline_rank = plain_verifier([(v,) if isinstance(v, int) else tuple(v) for v in layout])
        rule = rule_from_config(decoding)
        self.decoder = SpeculativeDecoder(
            channel, drafter, layout, eos_ids=self.eos_ids, clock_offsets_us=clock_offsets_us, rule=rule
        )
        self.channel, self.feed = channel, feed
        self.faults = FaultPlan(fault_rank)
        self.settings = self._settings(len(self.decoder.verifiers))
        algorithms = list(decoding.algorithms)
        if comm_size > 2 and "dsi" not in algorithms:
            logger.warning(f"{comm_size - 2} verifier rank(s) will stay idle: only dsi uses more than one")
        for i in range(decoding.warmup_prompts):
            prompt = self.prompts[i % len(self.prompts)]
            for algorithm in algorithms:
                self._run_one(algorithm, prompt, self.prompt_tokens[prompt.index])
        completed = False
        try:
            while (item := feed.next_prompt()) is not None:
                prompt, tokens = item
                shift = prompt.index % len(algorithms)
                records = []
                for algorithm in algorithms[shift:] + algorithms[:shift]:
                    records.append(self._run_one(algorithm, prompt, tokens))
                    feed.record(prompt, tokens, records[-1])
                feed.finish(prompt, records)
                self.faults.tick()
            completed = True
        finally:
            feed.close(completed)

    def _settings(self, verifier_budget: int) -> dict:
        """Lookahead per algorithm (0: adaptive) and dsi's verifier count: as configured, or planned ("auto")."""
        decoding = self.cfg.decoding
        k, v = decoding.lookahead, decoding.verifiers
        k = 0 if k == "adaptive" else k
        if "auto" not in (k, v):
            return {
                "si": k,
                "dsi": k,
                "hf_assisted": k,
                "hf_prompt_lookup": k,
                "verifiers": min(v, verifier_budget) or verifier_budget,
            }
        from dsi_mpi.timemodel.planner import plan

        first = self.prompts[0]
        measured = calibrate(self.decoder, self._baseline, self.prompt_tokens[first.index], decoding.stop_at_eos)
        capacity = self.decoder.ledger.slots.capacity(self.decoder.verifiers[:1])  # tasks one verifier takes at once
        choice = plan(measured, verifier_budget, decoding.max_new_tokens, k, v, self.cfg.runtime.nonsi_thread, capacity)
        self.feed.add_metadata({"planner": choice})
        logger.info(
            f"planner: lookahead si {choice['si']}, dsi {choice['dsi']}, dsi verifiers "
            f"{choice['verifiers']} (measured c = {measured['c']:.2f}, "
            f"acceptance {measured['acceptance']:.2f})"
        )
        return choice

    def _run_one(self, algorithm: str, prompt, tokens: list[int]) -> RunRecord:
        k = self.settings.get(algorithm, 0)
        verifiers = self.settings["verifiers"] if algorithm == "dsi" else 1
        record = RunRecord(algorithm, prompt.index, prompt.id, lookahead=k, verifiers=verifiers)
        drafter = parse_drafter(self.cfg.models.drafter)
        run = RunSettings.from_config(
            self.cfg.decoding,
            self.cfg.runtime,
            lookahead=k,
            verifiers=verifiers,
            key=prompt.index,
            ngram=drafter.params["n"] if drafter.kind == "ngram" else 0,
        )
        emu = self.cfg.emulation
        if self.cfg.models.kind == "emulated" and emu.min_new_tokens:
            length = emulated_length(self.cfg.decoding.seed, prompt.index, emu.min_new_tokens, run.max_new_tokens)
            run = dataclasses.replace(run, max_new_tokens=length)
        if algorithm in ("nonsi", "hf_assisted", "hf_prompt_lookup"):
            return self._baseline(algorithm, tokens, record, run)
        return self.decoder.generate(algorithm, tokens, record, run)

    def _baseline(self, algorithm: str, tokens: list[int], record: RunRecord, run: RunSettings) -> RunRecord:
        """On the first rank with the whole target; nonsi through the first pipeline group if there is none."""
        if self.baseline_rank is not None:
            return run_baseline(self.channel, self.baseline_rank, algorithm, tokens, record, run)
        from dsi_mpi.decoding.group_baseline import nonsi_on_group

        decoder = self.decoder
        return nonsi_on_group(decoder.ledger, decoder.rule, decoder.eos_ids, decoder.verifiers[0], tokens, record, run)


CALIBRATION_TOKENS = 32
CALIBRATION_LOOKAHEAD = 4


def calibrate(decoder, baseline, prompt: list[int], stop_at_eos: bool) -> dict:
    """The planner's measurements of the pair (`lookahead` or `verifiers` "auto"), on the job's own ranks,
    models and first prompt, after one untimed pass: plain decoding where the job runs its baselines gives the
    target's prefill and per-token latency; a short si run the drafter's per-token latency, the verification
    forward time and the acceptance rate, each measured by the one estimator of
    dsi_mpi.reporting.time_model.time_model_inputs. baseline(algorithm, prompt, record, run) runs nonsi."""
    from dsi_mpi.reporting.time_model import time_model_inputs

    run = RunSettings(max_new_tokens=CALIBRATION_TOKENS, lookahead=CALIBRATION_LOOKAHEAD, stop_at_eos=stop_at_eos)
    for _ in range(2):  # the first pass warms every shape up; the second is measured
        plain = baseline("nonsi", prompt, RunRecord("nonsi", -1, "calibration"), run)
        si = decoder.generate("si", prompt, RunRecord("si", -1, "calibration"), run)
    measured = time_model_inputs({"nonsi": [plain.as_dict()], "si": [si.as_dict()]})
    if measured is None:
        raise RuntimeError("planner: the calibration run measured no usable latencies (too few tokens?)")
    return measured | {"tokens": CALIBRATION_TOKENS}


def emulated_length(seed: int, prompt_index: int, low: int, high: int) -> int:
    """LATENCY EMULATION (emulation.min_new_tokens): the prompt's generation length, as if its text ended
    there; keyed by (seed, prompt index), so every algorithm and every instance stops at the same token."""
    return int(np.random.default_rng([seed, 11, prompt_index]).integers(low, high + 1))


def _tokenize_for_target(cfg, prompts):
    from transformers import AutoConfig, GenerationConfig

    from dsi_mpi.backends.checks import check_pair, check_transformers_version, load_tokenizer, resolve_model_path

    models = cfg.models
    check_transformers_version()
    check_pair(models, cfg.decoding.algorithms)
    tokenizer = load_tokenizer(models.target, "target")
    target_path = resolve_model_path(models.target, "target")
    limit = getattr(AutoConfig.from_pretrained(target_path), "max_position_embeddings", None)
    tokens = {}
    for p in prompts:
        ids = [int(t) for t in tokenizer(p.text)["input_ids"]]
        k = cfg.decoding.lookahead
        if limit and len(ids) + cfg.decoding.max_new_tokens + (k if isinstance(k, int) else 20) + 1 > limit:
            raise ConfigError(
                f"prompt {p.id!r} has {len(ids)} tokens: with max_new_tokens and lookahead it exceeds "
                f"the target's context of {limit} positions"
            )
        tokens[p.index] = ids
    try:
        eos = GenerationConfig.from_pretrained(target_path).eos_token_id
    except OSError:
        eos = AutoConfig.from_pretrained(target_path).eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    return tokens, eos_ids
