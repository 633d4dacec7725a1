"""Run configuration: one TOML file, validated up front so that a typo fails in a second, not after loading.

Every key is declared once below (section, name, type, default, help); the README's key table is
generated from the same declarations (`python -m dsi_mpi config-keys`), so code and docs cannot drift.
Relative paths are resolved against the current working directory, as a cluster user expects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from dsi_mpi.io.drafter_spec import DrafterSpecError, parse_drafter

ALGORITHMS = ("nonsi", "si", "dsi", "hf_assisted", "hf_prompt_lookup")


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


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
            'drafter: a hub id or local folder of a model with the target\'s vocabulary; "ngram" or '
            '"ngram:n=N" (prompt lookup over the last N..1 tokens, default 3, no model); or '
            '"truncated:layers=L" (the target\'s first L layers with its norm and head)',
        ),
        ("dtype", str, "float32", "float32, bfloat16 or float16"),
        ("device", str, "cpu", '"cpu", or "cuda" (one GPU per rank, chosen by the node-local rank)'),
        ("threads", int, 1, "torch threads per rank (1 is right when ranks share cores)"),
        (
            "backend",
            str,
            "eager",
            '"eager" (Hugging Face eager, dynamic KV cache) or "compiled" (static KV cache, torch.compile; CUDA '
            "graphs on a GPU; compiled and warmed up at load, never timed; a model it cannot compile falls back to "
            "eager, recorded)",
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
            'acceptance and latencies, down to 0 = plain decoding; README "Adaptive speculation"), a fixed k >= 1 '
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
        ("poll_spin_s", float, 5e-05, "a waiting rank spins on MPI tests this long before it starts to sleep"),
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
            "dsi with 2+ verifiers: after a rejection, send the target a block of no drafts at once (the "
            "paper's non-SI thread) instead of waiting for k new drafts",
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
            "with pipeline_stages > 1: how many verifier groups to form (0: all N-1 verifier ranks, which must "
            "divide by pipeline_stages); the verifier ranks left over hold the whole target",
        ),
        (
            "instances",
            int,
            1,
            "independent DSI instances in the job (G); G >= 2: rank 0 hands out prompts and writes the results, "
            "ranks 1..N-1 form G instances of (N-1)/G ranks each, node-local where they fit (README: Many instances)",
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
DIGEST_WHEN_SET = {"emulation.min_new_tokens": 0}  # keys added after results files existed: hashed only when set


def _section_view(section: str) -> type:
    """A frozen dataclass with one attribute per key of `section`, made from KEYS (lists become tuples)."""
    keys = [k for k in KEYS if k.section == section]
    fields = [
        (
            k.name,
            tuple if k.type is list else k.type if isinstance(k.type, type) else Any,
            field(default=tuple(k.default) if isinstance(k.default, list) else k.default),
        )
        for k in keys
    ]
    view = dataclasses.make_dataclass(f"{section.capitalize()}Config", fields, frozen=True)
    view.__module__ = __name__
    view.__doc__ = f"[{section}] of the config, read-only:\n" + "\n".join(f"    {k.name}: {k.help}" for k in keys)
    return view


# The typed views: `cfg.decoding.lookahead` etc. (new code uses these; `cfg["decoding"]["lookahead"]` still works).
ModelsConfig, DecodingConfig, PromptsConfig, OutputConfig, RuntimeConfig, EmulationConfig = (
    _section_view(s) for s in ("models", "decoding", "prompts", "output", "runtime", "emulation")
)
VIEWS = {
    "models": ModelsConfig,
    "decoding": DecodingConfig,
    "prompts": PromptsConfig,
    "output": OutputConfig,
    "runtime": RuntimeConfig,
    "emulation": EmulationConfig,
}
assert tuple(VIEWS) == SECTIONS, "a section of KEYS has no typed view"


@dataclass
class Config:
    """Resolved configuration: `values[section][name]` (also `cfg[section][name]`), typed views per section
    (`cfg.decoding`, `cfg.runtime`, ...), plus where it came from."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    def view(self, section: str):
        values = {n: tuple(v) if isinstance(v, list) else v for n, v in self.values[section].items()}
        return VIEWS[section](**values)

    if TYPE_CHECKING:  # what __getattr__ returns, for readers and type checkers
        models: ModelsConfig
        decoding: DecodingConfig
        prompts: PromptsConfig
        output: OutputConfig
        runtime: RuntimeConfig
        emulation: EmulationConfig

    def __getattr__(self, name: str):
        if name in VIEWS:
            return self.view(name)
        raise AttributeError(name)

    def to_toml(self) -> str:
        """Canonical TOML text of the resolved config (stored in every results file)."""
        lines = []
        for section in SECTIONS:
            lines.append(f"[{section}]")
            for name, value in self.values[section].items():
                lines.append(f"{name} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def digest(
        self,
        ignore: tuple[str, ...] = (
            "output.path",
            "output.overwrite",
            "output.resume",
            "prompts.limit",
            "prompts.shard_count",
            "prompts.shard_index",
            "runtime.instances",
        ),
    ) -> str:
        """Hash of what determines results, so files from different configs are never mixed. (How many instances
        ran does not change a prompt's tokens, so a job resumes with any number; a key added later counts only
        when set, so files written before it still resume.)"""
        flat = {f"{s}.{n}": v for s, d in self.values.items() for n, v in d.items() if f"{s}.{n}" not in ignore}
        for name, default in DIGEST_WHEN_SET.items():
            if flat.get(name) == default:
                del flat[name]
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def _check_type(key: Key, value: Any) -> Any:
    where = f"{key.section}.{key.name}"
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key.type is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {where} must be a list of strings, got {value!r}")
        return value
    if isinstance(value, bool) and key.type is not bool or not isinstance(value, key.type):
        raise ConfigError(f"config key {where} must be {_type_name(key.type)}, got {type(value).__name__} {value!r}")
    return value


def _type_name(kind) -> str:
    return " or ".join(t.__name__ for t in kind) if isinstance(kind, tuple) else kind.__name__


def _parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value`, with value read as TOML (so 5, true, "x", [..]) or else as a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    dotted, raw = text.split("=", 1)
    section, name = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, name, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read, merge overrides into, and validate a config; raise ConfigError naming the first problem."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    for text in overrides:
        section, name, value = _parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"config section [{section}] is not a table")
        raw[section][name] = value
    return validate(raw, source)


def validate(raw: dict[str, Any], source: str = "<dict>") -> Config:
    known = {(k.section, k.name): k for k in KEYS}
    values = {s: {} for s in SECTIONS}
    for section, table in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config section [{section}] must be a table")
        for name, value in table.items():
            if (section, name) not in known:
                names = ", ".join(k.name for k in KEYS if k.section == section)
                raise ConfigError(f"unknown config key {section}.{name} (known in [{section}]: {names})")
            values[section][name] = _check_type(known[(section, name)], value)
    for key in KEYS:
        values[key.section].setdefault(key.name, dataclasses.replace(key).default)
        if isinstance(values[key.section][key.name], list):
            values[key.section][key.name] = list(values[key.section][key.name])
    _check_ranges(values)
    return Config(values, source)


def _check_ranges(v: dict[str, dict[str, Any]]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    m, d, e, r = v["models"], v["decoding"], v["emulation"], v["runtime"]
    need(m["kind"] in ("hf", "emulated"), f'models.kind must be "hf" or "emulated", got {m["kind"]!r}')
    need(
        m["dtype"] in ("float32", "bfloat16", "float16"),
        f"models.dtype must be float32, bfloat16 or float16, got {m['dtype']!r}",
    )
    need(m["device"] in ("cpu", "cuda"), f'models.device must be "cpu" or "cuda", got {m["device"]!r}')
    need(m["threads"] >= 1, f"models.threads must be >= 1, got {m['threads']}")
    need(len(d["algorithms"]) > 0, "decoding.algorithms must name at least one algorithm")
    for name in d["algorithms"]:
        need(name in ALGORITHMS, f"decoding.algorithms: unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    need(len(set(d["algorithms"])) == len(d["algorithms"]), "decoding.algorithms lists an algorithm twice")
    need(
        d["lookahead"] in ("adaptive", "auto") or isinstance(d["lookahead"], int) and d["lookahead"] >= 1,
        f'decoding.lookahead must be "adaptive", "auto" or an integer >= 1, got {d["lookahead"]!r}',
    )
    need(
        d["verifiers"] == "auto" or isinstance(d["verifiers"], int) and d["verifiers"] >= 0,
        f'decoding.verifiers must be an integer >= 0 or "auto", got {d["verifiers"]!r}',
    )
    need(d["max_new_tokens"] >= 1, f"decoding.max_new_tokens must be >= 1, got {d['max_new_tokens']}")
    need(d["warmup_prompts"] >= 0, "decoding.warmup_prompts must be >= 0")
    need(d["temperature"] > 0, f"decoding.temperature must be > 0, got {d['temperature']}")
    need(d["top_k"] >= 0, f"decoding.top_k must be >= 0, got {d['top_k']}")
    need(0 < d["top_p"] <= 1, f"decoding.top_p must be in (0, 1], got {d['top_p']}")
    p = v["prompts"]
    need(p["limit"] >= 0, "prompts.limit must be >= 0")
    need(
        p["shard_count"] >= 1 and 0 <= p["shard_index"] < p["shard_count"],
        f"prompts.shard_index must be in [0, shard_count), got {p['shard_index']} of {p['shard_count']}",
    )
    need(
        not (v["output"]["overwrite"] and v["output"]["resume"]),
        "output.overwrite and output.resume exclude each other",
    )
    need(r["timeout_s"] > 0, "runtime.timeout_s must be > 0")
    need(r["poll_spin_s"] >= 0 and r["poll_max_sleep_s"] > 0, "runtime.poll_* must be positive")
    need(r["max_blocks_ahead"] >= 0, "runtime.max_blocks_ahead must be >= 0")
    need(m["backend"] in ("eager", "compiled"), f'models.backend must be "eager" or "compiled", got {m["backend"]!r}')
    need(m["compile_segments"] >= 1, f"models.compile_segments must be >= 1, got {m['compile_segments']}")
    need(m["compile_max_bucket"] >= 1, f"models.compile_max_bucket must be >= 1, got {m['compile_max_bucket']}")
    need(e["forwards"] in ("sleep", "model"), f'emulation.forwards must be "sleep" or "model", got {e["forwards"]!r}')
    need(r["instances"] >= 1, f"runtime.instances must be >= 1, got {r['instances']}")
    need(
        r["instances"] == 1 or r["pipeline_stages"] == 1,
        "runtime.pipeline_stages > 1 with runtime.instances > 1 is not supported yet: run pipelined groups in a "
        "one-instance job",
    )
    need(r["pipeline_stages"] >= 1, f"runtime.pipeline_stages must be >= 1, got {r['pipeline_stages']}")
    need(r["pipeline_groups"] >= 0, f"runtime.pipeline_groups must be >= 0, got {r['pipeline_groups']}")
    need(e["hidden_size"] >= 1, f"emulation.hidden_size must be >= 1, got {e['hidden_size']}")
    need(
        0 <= e["min_new_tokens"] <= d["max_new_tokens"],
        f"emulation.min_new_tokens must be in [0, decoding.max_new_tokens], got {e['min_new_tokens']}",
    )
    need(0.0 <= e["acceptance"] <= 1.0, f"emulation.acceptance must be in [0, 1], got {e['acceptance']}")
    need(e["vocab_size"] >= 2 and e["prompt_tokens"] >= 1, "emulation.vocab_size >= 2 and prompt_tokens >= 1")
    for name in ("target_ttft_s", "target_tpot_s", "drafter_ttft_s", "drafter_tpot_s"):
        need(e[name] >= 0, f"emulation.{name} must be >= 0")
    try:
        drafter = parse_drafter(m["drafter"])
    except DrafterSpecError as err:
        raise ConfigError(str(err)) from None
    need(
        "hf_assisted" not in d["algorithms"] or drafter.needs_weights,
        'hf_assisted needs a drafter model (models.drafter is "ngram": use hf_prompt_lookup, HF\'s own prompt lookup)',
    )
    if m["kind"] == "emulated":
        need(drafter.kind == "model", "LATENCY EMULATION emulates a model drafter: models.drafter must stay a model")
        for name in ("hf_assisted", "hf_prompt_lookup"):
            need(name not in d["algorithms"], f'{name} needs real models (models.kind = "hf")')
        need(
            not d["do_sample"],
            'sampling needs real models: LATENCY EMULATION draws acceptance i.i.d. (models.kind = "hf")',
        )


def keys_markdown() -> str:
    """The README's table of config keys."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for k in KEYS:
        rows.append(f"| `{k.section}.{k.name}` | {_type_name(k.type)} | `{_toml_value(k.default)}` | {k.help} |")
    return "\n".join(rows)
