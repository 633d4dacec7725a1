"""Run configuration: one TOML file, validated up front so that a typo fails in a second, not after loading.

Every key is declared once, in dsi_mpi/io/config_keys.py; the typed views of each section (`cfg.decoding`)
and the README's key table are made from those declarations, so code and docs cannot drift.
Relative paths are resolved against the current working directory, as a cluster user expects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import tomllib

from dsi_mpi.io.config_keys import ALGORITHMS, BACKENDS, DIGEST_WHEN_SET, HASHED_AT_DEFAULT, KEYS, SECTIONS, Key
from dsi_mpi.io.drafter_spec import DrafterSpecError, parse_drafter


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


def _section_view(section: str) -> type:
    """A frozen dataclass with one attribute per key of `section`, made from KEYS (lists become tuples)."""
    keys = [k for k in KEYS if k.section == section]
    fields = [
        (
            k.name,
            tuple if k.type is list or get_origin(k.type) is list else k.type if isinstance(k.type, type) else Any,
            field(default=tuple(k.default) if isinstance(k.default, list) else k.default),
        )
        for k in keys
    ]
    view = dataclasses.make_dataclass(f"{section.capitalize()}Config", fields, frozen=True)
    view.__module__ = __name__
    view.__doc__ = f"[{section}] of the config, read-only:\n" + "\n".join(f"    {k.name}: {k.help}" for k in keys)
    return view


# The typed views: `cfg.decoding.lookahead` etc., the one way the package reads a config.
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
    """Resolved configuration: typed views per section (`cfg.decoding`, `cfg.runtime`, ...), read-only, made
    from `values[section][name]` (what the file and the overrides said, with defaults), plus where it came from."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"

    def replace(self, section: str, **changes) -> Config:
        """A copy with some keys of one section changed (validated like a file)."""
        return validate(self.values | {section: self.values[section] | changes}, self.source)

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
        ran, and how the target was cut into pipeline stages, does not change a prompt's tokens, so a job resumes
        with any layout; a key added later counts only when set, so files written before it still resume.)"""
        flat = {f"{s}.{n}": v for s, d in self.values.items() for n, v in d.items() if f"{s}.{n}" not in ignore}
        flat.update({name: default for name, default in HASHED_AT_DEFAULT.items() if name in flat})
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
    kinds = key.type if isinstance(key.type, tuple) else (key.type,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key.type is list or get_origin(key.type) is list:  # plain list: of strings
        element = (get_args(key.type) or (str,))[0]
        if not isinstance(value, list) or not all(isinstance(v, element) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"config key {where} must be a list of {element.__name__}s, got {value!r}")
        return value
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, key.type):
        raise ConfigError(f"config key {where} must be {_type_name(key.type)}, got {type(value).__name__} {value!r}")
    return value


def _type_name(kind) -> str:
    if get_origin(kind) is list:
        return f"list of {get_args(kind)[0].__name__}"
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


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_ranges(v: dict[str, dict[str, Any]]) -> None:
    """Values each key's type admits but the job does not, and keys that exclude each other: one line each."""
    _check_models(v["models"])
    _check_decoding(v["decoding"])
    _check_prompts_and_output(v["prompts"], v["output"])
    _check_runtime(v["runtime"])
    _check_emulation(v["emulation"], v["decoding"])
    _check_drafter(v["models"], v["decoding"])


def _check_models(m: dict[str, Any]) -> None:
    _need(m["kind"] in ("hf", "emulated"), f'models.kind must be "hf" or "emulated", got {m["kind"]!r}')
    _need(
        m["dtype"] in ("float32", "bfloat16", "float16", "auto"),
        f'models.dtype must be float32, bfloat16, float16 or "auto", got {m["dtype"]!r}',
    )
    _need(m["device"] in ("cpu", "cuda"), f'models.device must be "cpu" or "cuda", got {m["device"]!r}')
    _need(m["threads"] >= 1, f"models.threads must be >= 1, got {m['threads']}")
    _need(
        m["backend"] in BACKENDS,
        f"models.backend must be one of {', '.join(map(repr, BACKENDS))}, got {m['backend']!r}",
    )
    _need(m["compile_segments"] >= 1, f"models.compile_segments must be >= 1, got {m['compile_segments']}")
    _need(m["compile_max_bucket"] >= 1, f"models.compile_max_bucket must be >= 1, got {m['compile_max_bucket']}")
    _need(all(b >= 1 for b in m["compile_buckets"]), f"models.compile_buckets must be >= 1, got {m['compile_buckets']}")


def _check_decoding(d: dict[str, Any]) -> None:
    _need(len(d["algorithms"]) > 0, "decoding.algorithms must name at least one algorithm")
    for name in d["algorithms"]:
        _need(name in ALGORITHMS, f"decoding.algorithms: unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    _need(len(set(d["algorithms"])) == len(d["algorithms"]), "decoding.algorithms lists an algorithm twice")
    _need(
        d["lookahead"] in ("adaptive", "auto") or isinstance(d["lookahead"], int) and d["lookahead"] >= 1,
        f'decoding.lookahead must be "adaptive", "auto" or an integer >= 1, got {d["lookahead"]!r}',
    )
    _need(
        d["verifiers"] == "auto" or isinstance(d["verifiers"], int) and d["verifiers"] >= 0,
        f'decoding.verifiers must be an integer >= 0 or "auto", got {d["verifiers"]!r}',
    )
    _need(d["max_new_tokens"] >= 1, f"decoding.max_new_tokens must be >= 1, got {d['max_new_tokens']}")
    _need(d["warmup_prompts"] >= 0, "decoding.warmup_prompts must be >= 0")
    _need(d["temperature"] > 0, f"decoding.temperature must be > 0, got {d['temperature']}")
    _need(d["top_k"] >= 0, f"decoding.top_k must be >= 0, got {d['top_k']}")
    _need(0 < d["top_p"] <= 1, f"decoding.top_p must be in (0, 1], got {d['top_p']}")


def _check_prompts_and_output(p: dict[str, Any], o: dict[str, Any]) -> None:
    _need(p["limit"] >= 0, "prompts.limit must be >= 0")
    _need(
        p["shard_count"] >= 1 and 0 <= p["shard_index"] < p["shard_count"],
        f"prompts.shard_index must be in [0, shard_count), got {p['shard_index']} of {p['shard_count']}",
    )
    _need(not (o["overwrite"] and o["resume"]), "output.overwrite and output.resume exclude each other")


def _check_runtime(r: dict[str, Any]) -> None:
    _need(r["timeout_s"] > 0, "runtime.timeout_s must be > 0")
    spin = r["poll_spin_s"]
    _need(spin == "auto" or not isinstance(spin, str), f'runtime.poll_spin_s must be "auto" or seconds, got {spin!r}')
    _need(spin == "auto" or spin >= 0, f"runtime.poll_spin_s must be >= 0, got {spin}")
    _need(r["poll_max_sleep_s"] > 0, f"runtime.poll_max_sleep_s must be > 0, got {r['poll_max_sleep_s']}")
    _need(
        r["keep_warm"] in ("auto", True, False),
        f'runtime.keep_warm must be "auto", true or false, got {r["keep_warm"]!r}',
    )
    _need(r["max_blocks_ahead"] >= 0, "runtime.max_blocks_ahead must be >= 0")
    _need(r["instances"] >= 1, f"runtime.instances must be >= 1, got {r['instances']}")
    _need(r["pipeline_stages"] >= 1, f"runtime.pipeline_stages must be >= 1, got {r['pipeline_stages']}")
    _need(r["pipeline_groups"] >= 0, f"runtime.pipeline_groups must be >= 0, got {r['pipeline_groups']}")


def _check_emulation(e: dict[str, Any], d: dict[str, Any]) -> None:
    _need(e["forwards"] in ("sleep", "model"), f'emulation.forwards must be "sleep" or "model", got {e["forwards"]!r}')
    _need(e["hidden_size"] >= 1, f"emulation.hidden_size must be >= 1, got {e['hidden_size']}")
    _need(
        0 <= e["min_new_tokens"] <= d["max_new_tokens"],
        f"emulation.min_new_tokens must be in [0, decoding.max_new_tokens], got {e['min_new_tokens']}",
    )
    _need(0.0 <= e["acceptance"] <= 1.0, f"emulation.acceptance must be in [0, 1], got {e['acceptance']}")
    _need(e["vocab_size"] >= 2 and e["prompt_tokens"] >= 1, "emulation.vocab_size >= 2 and prompt_tokens >= 1")
    for name in ("target_ttft_s", "target_tpot_s", "drafter_ttft_s", "drafter_tpot_s"):
        _need(e[name] >= 0, f"emulation.{name} must be >= 0")


def _check_drafter(m: dict[str, Any], d: dict[str, Any]) -> None:
    """models.drafter parses, and fits the algorithms and models.kind."""
    try:
        drafter = parse_drafter(m["drafter"])
    except DrafterSpecError as err:
        raise ConfigError(str(err)) from None
    _need(
        "hf_assisted" not in d["algorithms"] or drafter.needs_weights,
        'hf_assisted needs a drafter model (models.drafter is "ngram": use hf_prompt_lookup, HF\'s own prompt lookup)',
    )
    _need(
        m["drafter_dtype"] in ("same", "int8", "int4"),
        f'models.drafter_dtype must be "same", "int8" or "int4", got {m["drafter_dtype"]!r}',
    )
    _need(
        m["drafter_dtype"] == "same" or drafter.needs_weights,
        f"models.drafter_dtype {m['drafter_dtype']!r} needs a drafter with weights (models.drafter is {m['drafter']!r})",
    )
    _need(
        m["drafter_dtype"] == "same" or drafter.kind != "quantized",
        f'models.drafter {m["drafter"]!r} sets its own dtype ("quantized:bits=8" or "quantized:bits=4"): '
        'leave models.drafter_dtype "same"',
    )
    if m["kind"] == "emulated":
        _need(drafter.kind == "model", "LATENCY EMULATION emulates a model drafter: models.drafter must stay a model")
        for name in ("hf_assisted", "hf_prompt_lookup"):
            _need(name not in d["algorithms"], f'{name} needs real models (models.kind = "hf")')
        _need(
            not d["do_sample"],
            'sampling needs real models: LATENCY EMULATION draws acceptance i.i.d. (models.kind = "hf")',
        )


def write_config(path: str | Path, sections: dict[str, dict[str, Any]], check: bool = True) -> Path:
    """A TOML config file of `sections` ({section: {key: value}}), validated first so that a typo fails here, not
    in the job (check=False: written as it is, for tests of what the job says about a bad config): how tests and
    analysis scripts write the jobs they start."""
    if check:
        validate(sections)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in values.items()]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def keys_markdown() -> str:
    """The README's table of config keys."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for k in KEYS:
        rows.append(f"| `{k.section}.{k.name}` | {_type_name(k.type)} | `{_toml_value(k.default)}` | {k.help} |")
    return "\n".join(rows)
