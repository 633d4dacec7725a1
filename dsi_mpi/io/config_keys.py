"""Every config key, declared once: (section, name, type, default, help). The config loader, the typed views
and the README's key table (`python -m dsi_mpi config-keys`) are all made from this table, so code and docs
cannot drift; adding a key means adding one row here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALGORITHMS = ("nonsi", "si", "dsi", "hf_assisted", "hf_prompt_lookup")
BACKENDS = ("auto", "packed", "eager", "compiled")


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    type: type | tuple
    default: Any
    help: str


def _section(section: str, *rows: tuple) -> tuple[Key, ...]:
    """The keys of one section: (name, type, default, help) each."""
    return tuple(Key(section, *row) for row in rows)


KEYS: tuple[Key, ...] = (
    *_section(
        "models",
        (
            "kind",
            str,
            "hf",
            'model backend: "hf" (real Hugging Face models) or "emulated" (LATENCY EMULATION: sleeps instead '
            "of forwards, see [emulation])",
        ),
        ("target", str, "inputs/models/target", "target model: Hugging Face hub id or local folder"),
        (
            "drafter",
            str,
            "inputs/models/drafter",
            "drafter: a hub id or local folder of a model with the target's vocabulary or, with its own tokenizer, "
            "another one that shares at least half the smaller vocabulary (drafting the shared tokens: "
            "docs/drafters.md); a `draft_vocab.json` "
            "in the folder gives it a frequency-ranked head (only those token ids are scored, "
            '`dsi_mpi/backends/draft_vocab.py`); "ngram" or '
            '"ngram:n=N" (prompt lookup over the last N..1 tokens, default 3, no model); '
            '"truncated:layers=L" (the target\'s first L layers with its norm and head); or "quantized" (the '
            "target itself with its products' weights in int8, a scale per row: no training, nearly always the "
            'target\'s token, half the bytes of bf16; `dsi_mpi/backends/quantize.py`; "quantized:bits=4": int4, a scale '
            "per row and 32 inputs, a quarter of bf16's bytes, a less faithful copy)",
        ),
        (
            "drafter_dtype",
            str,
            "same",
            '"same": the drafter model runs in models.dtype, as the target does; "int8": its products\' weights '
            "(decoder layers and head) in int8 with one scale per row, half the bytes of bf16 (the packed "
            'backend\'s int8 kernel; eager holds q * s in models.dtype; `dsi_mpi/backends/quantize.py`); "int4": '
            "in int4 with one scale per row and 32 inputs (a folder made by inputs/models/build_int4_drafter.py "
            "holds weights already on calibrated int4 levels: run it in int4). A "
            'drafter\'s dtype changes its speed and acceptance, never the output. "quantized" is int8 already',
        ),
        (
            "dtype",
            str,
            "float32",
            'float32, bfloat16, float16, or "auto": bfloat16 where products in it are fast (the packed backend\'s '
            "own kernels, on any CPU; a CPU with avx512_bf16 or amx_bf16; a GPU that supports it), else float32 "
            "(the dtype run is recorded in `backends`; docs/lossless.md: Lossless in bf16)",
        ),
        ("device", str, "cpu", '"cpu", or "cuda" (one GPU per rank, chosen by the node-local rank)'),
        ("threads", int, 1, "torch threads per rank (1 is right when ranks share cores)"),
        (
            "backend",
            str,
            "auto",
            '"packed" (CPU: a lean forward of Llama-family models, weights packed once for oneDNN, static KV '
            'cache; `dsi_mpi/backends/packed.py`), "eager" (Hugging Face eager, dynamic KV cache), "compiled" '
            "(static KV cache, torch.compile; CUDA graphs on a GPU; compiled and warmed up at load, never timed), "
            'or "auto": packed on a CPU where the model allows it, else eager. A model a backend cannot run falls '
            "back to eager, recorded with the reason",
        ),
        (
            "compile_segments",
            int,
            2,
            "compiled backend: groups of layers compiled apart, with the cancel check between them (1: one per "
            "forward, the number of layers: before every layer)",
        ),
        (
            "compile_max_bucket",
            int,
            16,
            "compiled backend: inputs are padded to 1, 2, 4, .. up to this many tokens; longer ones run in chunks of it",
        ),
        (
            "compile_buckets",
            list[int],
            [],
            "compiled backend: the padded input lengths to compile instead, e.g. [1, 8] (each costs a compile at load; "
            "an input takes the shortest that holds it, longer ones run in chunks of the longest); [] = 1, 2, 4, .. "
            "compile_max_bucket",
        ),
    ),
    *_section(
        "decoding",
        (
            "algorithms",
            list,
            ["nonsi", "si", "dsi"],
            f"algorithms to run on every prompt, any of {list(ALGORITHMS)}",
        ),
        (
            "lookahead",
            (int, str),
            "adaptive",
            'draft tokens per verification task: "adaptive" (k chosen before each block from the measured '
            "acceptance and latencies, down to 0 = plain decoding; docs/adaptive.md), a fixed k >= 1 "
            '(for experiments), or "auto": the planner fixes each algorithm\'s best k from a short calibration',
        ),
        (
            "verifiers",
            (int, str),
            0,
            'verifier ranks dsi uses (0: all N-1), or "auto": the planner picks the best number within the '
            "N-1 launched",
        ),
        ("max_new_tokens", int, 64, "tokens to generate per prompt"),
        ("stop_at_eos", bool, True, "stop a prompt when the target emits its end-of-sequence token"),
        ("seed", int, 0, "seed for torch and every random stream"),
        (
            "do_sample",
            bool,
            False,
            "sample instead of greedy decoding (si and dsi keep the target's distribution exactly)",
        ),
        ("temperature", float, 1.0, "sampling temperature (as in Hugging Face generate)"),
        ("top_k", int, 0, "sample among the k most likely tokens only (0: off)"),
        ("top_p", float, 1.0, "sample from the smallest set of tokens with probability >= top_p (1: off)"),
        ("warmup_prompts", int, 1, "untimed runs of each algorithm before timing (warms shapes, caches)"),
    ),
    *_section(
        "prompts",
        ("path", str, "inputs/prompts/default.jsonl", 'JSONL prompt set: one {"id": str, "prompt": str} per line'),
        ("limit", int, 0, "use only the first N prompts of the file (0: all)"),
        ("shard_count", int, 1, "split the prompt set into this many shards (e.g. one per SLURM array task)"),
        ("shard_index", int, 0, "run only prompts whose index % shard_count == shard_index"),
    ),
    *_section(
        "output",
        ("path", str, "results/default.h5", "HDF5 results file written by rank 0"),
        ("overwrite", bool, False, "replace an existing results file"),
        ("resume", bool, False, "continue an existing results file of the same config: skip prompts already complete"),
    ),
    *_section(
        "runtime",
        (
            "timeout_s",
            float,
            300.0,
            "watchdog: a wait for any rank longer than this aborts the job with an error naming the rank",
        ),
        (
            "poll_spin_s",
            (float, str),
            "auto",
            'a waiting rank spins on MPI tests this long before it starts to sleep; "auto": 0.02 where the '
            "node has a core for every torch thread of its ranks (the union of their CPU affinities), else 5e-05",
        ),
        (
            "keep_warm",
            (bool, str),
            "auto",
            "a verifier on the packed CPU backend runs throwaway one-token forwards while it waits for a task, "
            "stopped at the next layer once a message lands, so that a verification finds the core as plain "
            'decoding leaves it; "auto": where every rank has a core of its own and the target\'s weights fit '
            "the node's last-level cache (a model streamed from memory has no such state to lose, and its "
            "throwaway forwards would take the memory bandwidth the drafter needs; docs/backends.md)",
        ),
        (
            "poll_max_sleep_s",
            float,
            0.00025,
            "longest sleep between MPI tests while waiting (the back-off cap; a message waits about this long"
            " plus the sleep's own overshoot before it is seen)",
        ),
        (
            "nonsi_thread",
            bool,
            True,
            "dsi with 2+ verifiers: whenever no block will yield the target's token at the committed position, "
            "the target decodes from there on a spare verifier (the paper's non-SI thread, docs/adaptive.md; "
            "greedy: a run that streams its tokens back as it goes): the text never waits for drafts",
        ),
        ("max_blocks_ahead", int, 0, "dsi: unresolved blocks allowed ahead of the committed text (0: verifiers + 1)"),
        (
            "pipeline_stages",
            int,
            1,
            "ranks per pipelined verifier group: each holds a contiguous range of the target's decoder layers, "
            "and a group of P verifies up to P blocks at once (1: every verifier rank holds the whole target)",
        ),
        (
            "pipeline_groups",
            int,
            0,
            "with pipeline_stages > 1: how many verifier groups to form, per instance with runtime.instances > 1 "
            "(0: all verifier ranks, whose count must divide by pipeline_stages); the verifier ranks left over "
            "hold the whole target",
        ),
        (
            "instances",
            int,
            1,
            "independent DSI instances in the job (G); G >= 2: rank 0 hands out prompts and writes the results, "
            "ranks 1..N-1 form G instances of (N-1)/G ranks each (a drafter and its verifiers or pipeline groups, "
            "every group on one node), node-local where they fit (docs/pipelines.md)",
        ),
    ),
    *_section(
        "emulation",
        ("target_ttft_s", float, 0.05, "LATENCY EMULATION: target prefill seconds"),
        ("target_tpot_s", float, 0.03, "LATENCY EMULATION: target seconds per forward (any block size)"),
        ("drafter_ttft_s", float, 0.01, "LATENCY EMULATION: drafter prefill seconds"),
        ("drafter_tpot_s", float, 0.006, "LATENCY EMULATION: drafter seconds per token"),
        ("acceptance", float, 0.6, "LATENCY EMULATION: i.i.d. chance that a draft equals the target token"),
        (
            "forwards",
            str,
            "sleep",
            '"sleep" (LATENCY EMULATION) or "model": EMULATED ACCEPTANCE, real forwards of models.target and '
            "models.drafter built with random weights from their config.json, tokens and acceptance still emulated",
        ),
        (
            "hidden_size",
            int,
            1024,
            "LATENCY EMULATION: floats per token in an activation message between pipeline stages",
        ),
        ("vocab_size", int, 1000, "LATENCY EMULATION: size of the emulated vocabulary"),
        ("prompt_tokens", int, 64, "LATENCY EMULATION: tokens per emulated prompt (prompt text is ignored)"),
        (
            "min_new_tokens",
            int,
            0,
            "LATENCY EMULATION: > 0: each prompt generates a length drawn uniformly from [min_new_tokens, "
            "decoding.max_new_tokens], keyed by (seed, prompt index), as if its text ended there (0: always the "
            "maximum)",
        ),
    ),
)

SECTIONS = tuple(dict.fromkeys(k.section for k in KEYS))
DIGEST_WHEN_SET = {
    "models.drafter_dtype": "same",
    "emulation.min_new_tokens": 0,
    "models.compile_buckets": [],
}  # keys added after results files existed: hashed only when set
# layout keys that do not change a prompt's tokens: hashed at their defaults whatever their values (a job resumes
# with another layout), not dropped (older files keep their digest)
HASHED_AT_DEFAULT = {"runtime.pipeline_stages": 1, "runtime.pipeline_groups": 0}
