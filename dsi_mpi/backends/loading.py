"""Build runners from the config: real models through `from_pretrained`, or the emulation backend.

All checks that can fail on user input (missing folders, vocabularies that differ) happen here, on
configs and tokenizers only, before any rank spends time loading weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import dsi_mpi.log as log
from dsi_mpi.backends.cpu import cpu_facts, resolve_dtype
from dsi_mpi.io.config import ConfigError
from dsi_mpi.io.drafter_spec import parse_drafter

logger = log.get("loading")


def _looks_local(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def resolve_model_path(name: str, what: str) -> str:
    """A local folder must exist; anything else is passed to the hub machinery as an id."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            raise ConfigError(
                f"{what} model path {name} is a GGUF file: convert it into a Hugging Face model folder first "
                "(inputs/models/fetch_smollm2.py does this for SmolLM2)"
            )
        if not path.is_dir():
            raise ConfigError(f"{what} model path {name} is a file, expected a model folder")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"{what} model folder {name} is not readable")
        return str(path)
    if _looks_local(name):
        raise ConfigError(f"{what} model folder not found: {name}")
    return name


def _load_or_explain(loader, name: str, what: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load {what} model {name!r}: {first}") from None


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


def check_weights(name: str, what: str) -> None:
    """A local model folder must hold weights (a folder with only config and tokenizer would fail on
    every rank at load time, after the ranks have started)."""
    path = Path(resolve_model_path(name, what))
    if path.is_dir() and not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{what} model folder {name} has no weights (no *.safetensors or *.bin file)")


def load_tokenizer(name: str, what: str = "target"):
    from transformers import AutoTokenizer

    return _load_or_explain(AutoTokenizer.from_pretrained, resolve_model_path(name, what), what)


def check_pair(models: dict, algorithms=()) -> None:
    """Refuse a drafter the target cannot use. A drafter of another vocabulary drafts the tokens the two
    share (token-level intersection, backends/tli.py): refused when they share too few or its tokenizer
    cannot be read (backends/vocab_map.py). Drafters built from the target itself (n-gram, truncated) share
    its vocabulary by construction."""
    from transformers import AutoConfig

    target_cfg = _load_or_explain(AutoConfig.from_pretrained, resolve_model_path(models["target"], "target"), "target")
    check_weights(models["target"], "target")
    spec = parse_drafter(models["drafter"])
    if spec.kind == "truncated" and spec.params["layers"] > _layer_count(target_cfg):
        raise ConfigError(
            f"models.drafter {models['drafter']!r}: the target has only {_layer_count(target_cfg)} decoder layers"
        )
    if spec.kind != "model":
        return
    _load_or_explain(AutoConfig.from_pretrained, resolve_model_path(spec.model, "drafter"), "drafter")
    check_weights(spec.model, "drafter")
    vocab_map = vocabulary_map(models["target"], spec.model)
    if vocab_map is not None and "hf_assisted" in algorithms and vocab_map.target_rows == vocab_map.drafter_rows:
        raise ConfigError(
            "hf_assisted: Hugging Face's generate takes a drafter of another tokenizer only when the two models' "
            f"vocabulary sizes differ (both {vocab_map.target_rows}): leave hf_assisted out for this pair"
        )


def _vocab_rows(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.vocab_size)


def vocabulary_map(target: str, drafter: str):
    """None where the drafter shares the target's tokenizer; else the tokens the two share
    (backends/vocab_map.py), or a one-line ConfigError naming the sizes and why they cannot be used."""
    from transformers import AutoConfig

    from dsi_mpi.backends.draft_vocab import read_token_ids
    from dsi_mpi.backends.vocab_map import build_vocab_map

    target_rows, drafter_rows = (
        _vocab_rows(_load_or_explain(AutoConfig.from_pretrained, resolve_model_path(name, role), role))
        for name, role in ((target, "target"), (drafter, "drafter"))
    )
    target_tokenizer = load_tokenizer(target, "target")
    try:
        drafter_tokenizer = load_tokenizer(drafter, "drafter")
    except ConfigError as err:
        raise ConfigError(
            f"drafter {drafter!r} ({drafter_rows} vocabulary rows; the target has {target_rows}) has no usable "
            f"tokenizer, by which its tokens are compared with the target's: {err}"
        ) from None
    if target_rows == drafter_rows and target_tokenizer.get_vocab() == drafter_tokenizer.get_vocab():
        return None
    try:
        head = read_token_ids(resolve_model_path(drafter, "drafter"), drafter_rows)
    except ValueError as err:
        raise ConfigError(f"drafter {drafter!r}: {err}") from None
    return build_vocab_map(target_tokenizer, drafter_tokenizer, target_rows, drafter_rows, head)


def drafter_vocabulary(cfg, runner) -> dict:
    """The results file's record of how drafts become target ids: "shared" (one vocabulary), or token-level
    intersection with its sizes and mapping (backends/vocab_map.py: VocabMap.record). The scheduler rank of a
    many-instance job holds no drafter: it reads the pair itself."""
    models = cfg["models"]
    if runner is not None or models["kind"] != "hf" or parse_drafter(models["drafter"]).kind != "model":
        return getattr(runner, "vocabulary", None) or {"method": "shared"}
    vocab_map = vocabulary_map(models["target"], models["drafter"])
    return {"method": "shared"} if vocab_map is None else vocab_map.record()


def _layer_count(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ConfigError(f"cannot tell how many decoder layers a {type(config).__name__} model has")


def truncate_layers(model, layers: int):
    """Keep the first `layers` decoder blocks (the final norm and the head stay): a self-drafter."""
    from dsi_mpi.backends.hf import decoder_layers

    blocks = decoder_layers(model)
    del blocks[layers:]
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    return model


def pick_device(device: str, local_rank: int):
    """The CPU, or GPU `local_rank` modulo the GPUs this rank sees, made the current one (so that whatever is
    allocated without an index lands there too). More ranks than GPUs share them by turns: the job's start-up
    says so and labels si and dsi a functional check, from each rank's `gpu_identity`."""
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError('models.device = "cuda" but torch sees no GPU on this node')
    picked = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(picked)
    return picked


def gpu_identity(device) -> str:
    """The physical GPU behind `device` ("" off CUDA): its name and UUID. Ranks given one GPU each by
    CUDA_VISIBLE_DEVICES all call theirs cuda:0, so only this tells whether two ranks share one."""
    if getattr(device, "type", None) != "cuda":
        return ""
    import torch

    props = torch.cuda.get_device_properties(device)
    return f"{props.name} {getattr(props, 'uuid', '') or f'index {device.index}'}"


def check_transformers_version(version: str | None = None) -> None:
    """Refuse a transformers release outside the tested range: the cache API moves between releases, and a
    mismatch there gives wrong tokens, not an error."""
    from packaging.version import Version

    from dsi_mpi.backends.hf import SUPPORTED_TRANSFORMERS

    if version is None:
        import transformers

        version = transformers.__version__
    oldest, excluded = SUPPORTED_TRANSFORMERS
    if not Version(oldest) <= Version(version) < Version(excluded):
        raise ConfigError(
            f"transformers {version} is not supported: dsi-mpi is tested with >={oldest},<{excluded} "
            f"(pip install 'transformers>={oldest},<{excluded}')"
        )


MOST_DRAFTS = 20  # a block's drafts at most when k is not fixed (adaptive: decoding/adaptive.py's 12; "auto": 20)


def cache_capacity(cfg, longest_prompt: int) -> int:
    """Positions a static cache needs: the longest prompt, the new tokens, one block of drafts and its bonus."""
    try:
        decoding = cfg["decoding"]
    except KeyError:  # a bare {"models": ...} (tests)
        decoding = {}
    k = decoding.get("lookahead", "adaptive")
    return longest_prompt + decoding.get("max_new_tokens", 64) + (k if isinstance(k, int) else MOST_DRAFTS) + 2


def build_runner(role: str, cfg, local_rank: int = 0, longest_prompt: int = 256, stage: tuple[int, int] | None = None):
    """The runner for `role` ("target" or "drafter") on this rank; `longest_prompt` (tokens) sizes a static cache;
    stage = (index, stages): only that pipeline stage of the target."""
    if cfg["models"]["kind"] == "emulated":
        from dsi_mpi.backends.emulated import EmulatedAcceptanceRunner, EmulatedRunner, EmulatedStage

        emulation = cfg["emulation"]
        if stage is not None:
            return EmulatedStage(emulation, cfg["decoding"]["seed"], stage[1], stage[0])
        if emulation.get("forwards", "sleep") == "sleep":
            return EmulatedRunner(role, emulation, cfg["decoding"]["seed"])
        name = cfg["models"]["target" if role == "target" else "drafter"]
        capacity = cache_capacity(cfg, emulation["prompt_tokens"])
        inner = _hf_runner(name, role, cfg["models"], local_rank, capacity=capacity, random_weights=True)
        if emulation["vocab_size"] > inner.vocab_size:
            raise ConfigError(
                f"emulation.vocab_size {emulation['vocab_size']} exceeds the {role} model's vocabulary "
                f"({inner.vocab_size}): emulated token ids must be valid inputs"
            )
        return EmulatedAcceptanceRunner(role, emulation, cfg["decoding"]["seed"], inner)
    check_transformers_version()
    models = cfg["models"]
    if role == "target" and stage is not None:
        return _stage_runner(models, local_rank, *stage)
    capacity = cache_capacity(cfg, longest_prompt)
    if role == "target":
        return _hf_runner(models["target"], "target", models, local_rank, capacity=capacity)
    spec = parse_drafter(models["drafter"])
    if spec.kind == "ngram":
        from transformers import AutoConfig

        from dsi_mpi.backends.ngram import NGramDrafter

        target_cfg = AutoConfig.from_pretrained(resolve_model_path(models["target"], "target"))
        return NGramDrafter(spec.params["n"], int(target_cfg.get_text_config().vocab_size))
    if spec.kind == "truncated":
        return _hf_runner(
            models["target"], "drafter", models, local_rank, truncate=spec.params["layers"], capacity=capacity
        )
    return _drafter_runner(spec.model, models, local_rank, capacity)


TEXT_GROWTH = 4  # a drafter of another vocabulary: its static cache holds this many positions per target position


def _drafter_runner(name: str, models: dict, local_rank: int, capacity: int):
    """The drafter model's runner; one of another vocabulary wrapped to take and propose target ids (TLI)."""
    vocab_map = vocabulary_map(models["target"], name)
    if vocab_map is None:
        return _hf_runner(name, "drafter", models, local_rank, capacity=capacity)
    from dsi_mpi.backends.tli import TLIDrafter

    return TLIDrafter(_hf_runner(name, "drafter", models, local_rank, capacity=capacity * TEXT_GROWTH), vocab_map)


def _load_model(name: str, role: str, dtype_name: str, device, random_weights: bool):
    """from_pretrained; or, for EMULATED ACCEPTANCE (weights do not matter), the config's architecture with
    random weights, built on the device (a 7B model needs no weights file and no host copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    if not random_weights:
        model = _load_or_explain(AutoModelForCausalLM.from_pretrained, name, role, dtype=dtype)
        return model
    config = _load_or_explain(AutoConfig.from_pretrained, name, role)
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _hf_runner(
    name: str, role: str, models: dict, local_rank: int, truncate: int = 0, capacity: int = 512, random_weights=False
):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name = resolve_model_path(name, role)
    device = pick_device(models["device"], local_rank)
    backend = _backend_for(models.get("backend", "auto"), device)
    deferred = models["dtype"] == "auto" and backend == "packed"  # decided on the loaded model (_auto_dtype)
    model = _load_model(
        name, role, "float32" if deferred else resolve_dtype(models["dtype"], device.type), device, random_weights
    )
    if truncate:
        truncate_layers(model, truncate)
    head_tokens = restrict_drafter_head(model, name) if role == "drafter" and not random_weights else None
    if deferred:
        import torch

        model.to(getattr(torch, _auto_dtype(model, device)))
    model.to(device)
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    runner = _runner_or_eager(model, eos_ids, capacity, role, name, models)
    runner.compile_info.update(dtype=str(model.dtype).removeprefix("torch."), requested=models.get("backend", "auto"))
    runner.compile_info.setdefault("cpu", cpu_facts())
    runner.head_tokens = head_tokens
    return runner


def _runner_or_eager(model, eos_ids, capacity: int, role: str, name: str, models: dict):
    """The runner of models.backend; a model that backend cannot run runs eager, the reason recorded (running
    out of memory is the machine's problem, not the model's: raised)."""
    from dsi_mpi.backends.hf import HFRunner, UnsupportedModel, out_of_memory

    backend, fallback = _backend_for(models.get("backend", "auto"), model.device), None
    try:
        runner = _fast_runner(backend, model, eos_ids, capacity, role, models)
        if runner is not None:
            return runner
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - a model this backend cannot run: eager, and say so in the results
        if out_of_memory(err):
            raise
        fallback = f"{backend}: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
        log_fallback = logger.info if models.get("backend", "auto") == "auto" else logger.warning
        log_fallback(f"{role} model {name!r}: {fallback}; running eager")
    try:
        runner = HFRunner(model, eos_token_ids=eos_ids)
    except UnsupportedModel as err:
        raise ConfigError(f"{role} model {name!r} is not supported: {err}") from None
    runner.compile_info = {"backend": "eager", "fallback": fallback} if fallback else {"backend": "eager"}
    return runner


def _auto_dtype(model, device) -> str:
    """models.dtype = "auto" on the packed backend: bf16 where its own kernels will run the model (they widen bf16
    weights in registers, so the halved bytes pay on any CPU: SmolLM2-135M 1.6x faster than fp32 on a core
    without native bf16, analysis/forward_cost.py), else as cpu.resolve_dtype says."""
    import torch

    from dsi_mpi.backends import native
    from dsi_mpi.backends.packed import packable

    own = packable(model) is None and torch.get_num_threads() == 1 and native.load()[0] is not None
    return resolve_dtype("auto", device.type, own_kernels=own)


def _backend_for(requested: str, device) -> str:
    """models.backend as run: "auto" is packed on a CPU (where the model allows it) and eager on a GPU."""
    if requested == "auto":
        return "packed" if device.type == "cpu" else "eager"
    return requested


def _fast_runner(backend: str, model, eos_ids, capacity: int, role: str, models: dict):
    """The packed or compiled runner (None for eager); raises where the backend cannot run the model."""
    if backend == "packed":
        from dsi_mpi.backends.packed import PackedRunner

        return PackedRunner(model, eos_ids, capacity)
    if backend == "compiled":
        from dsi_mpi.backends.compiled import CompiledRunner

        segments = models.get("compile_segments", 2) if role == "target" else 1
        max_bucket, buckets = models.get("compile_max_bucket", 16), models.get("compile_buckets", ())
        return CompiledRunner(model, eos_ids, capacity, segments, max_bucket, buckets=buckets)
    return None


def restrict_drafter_head(model, folder: str) -> int | None:
    """A drafter folder with a draft_vocab.json gets a head of those rows only (backends/draft_vocab.py);
    returns how many, or None (the whole vocabulary)."""
    from dsi_mpi.backends.draft_vocab import read_token_ids, restrict_head

    try:
        ids = read_token_ids(folder, int(model.get_output_embeddings().weight.shape[0]))
        if ids is not None:
            restrict_head(model, ids)
    except ValueError as err:
        raise ConfigError(f"drafter {folder!r}: {err}") from None
    return None if ids is None else len(ids)


def check_stages(models: dict, stages: int) -> None:
    """A target to be cut into `stages` pipeline stages: splittable, with layers enough, in local safetensors
    (checked from its config and headers, before any rank loads weights)."""
    from transformers import AutoConfig

    from dsi_mpi.backends.split import Checkpoint, SplitError
    from dsi_mpi.backends.stage import check_splittable

    name = resolve_model_path(models["target"], "target")
    check_splittable(_load_or_explain(AutoConfig.from_pretrained, name, "target"), stages, models["target"])
    try:
        Checkpoint(name)
    except (SplitError, OSError, ValueError) as err:
        raise ConfigError(
            f"runtime.pipeline_stages = {stages}: stages read the target from a local folder: {err}"
        ) from None


def _stage_runner(models: dict, local_rank: int, index: int, stages: int):
    import torch

    from dsi_mpi.backends.stage import HFStageRunner, build_stage_model

    name = resolve_model_path(models["target"], "target")
    device = pick_device(models["device"], local_rank)
    model, layers = build_stage_model(name, getattr(torch, resolve_dtype(models["dtype"], device.type)), stages, index)
    model.to(device)
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    return HFStageRunner(model, index == 0, index == stages - 1, layers, eos_ids)
