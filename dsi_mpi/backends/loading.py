"""Build runners from the config: real models through `from_pretrained` (eager, packed or compiled, with the
fallback to eager recorded), a pipeline stage of the target, the n-gram drafter, or the emulation backend.
The checks that can fail on user input run before, on configs and tokenizers only (backends/checks.py).
"""

from __future__ import annotations

from dsi_mpi.backends.checks import check_transformers_version, load_or_explain, resolve_model_path, vocabulary_map
from dsi_mpi.backends.cpu import cpu_facts, resolve_dtype
from dsi_mpi.io import log
from dsi_mpi.io.config import Config, ConfigError, DecodingConfig, ModelsConfig
from dsi_mpi.io.drafter_spec import parse_drafter

logger = log.get("loading")


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


MOST_DRAFTS = 20  # a block's drafts at most when k is not fixed (adaptive: decoding/adaptive.py's 12; "auto": 20)


def cache_capacity(decoding: DecodingConfig, longest_prompt: int) -> int:
    """Positions a static cache needs: the longest prompt, the new tokens, one block of drafts and its bonus."""
    k = decoding.lookahead
    return longest_prompt + decoding.max_new_tokens + (k if isinstance(k, int) else MOST_DRAFTS) + 2


def build_runner(
    role: str, cfg: Config, local_rank: int = 0, longest_prompt: int = 256, stage: tuple[int, int] | None = None
):
    """The runner for `role` ("target" or "drafter") on this rank; `longest_prompt` (tokens) sizes a static cache;
    stage = (index, stages): only that pipeline stage of the target."""
    if cfg.models.kind == "emulated":
        return _emulated_runner(role, cfg, local_rank, stage)
    check_transformers_version()
    models = cfg.models
    if role == "target" and stage is not None:
        return _stage_runner(models, local_rank, *stage)
    capacity = cache_capacity(cfg.decoding, longest_prompt)
    if role == "target":
        return _hf_runner(models.target, "target", models, local_rank, capacity=capacity)
    from dsi_mpi.backends.quantize import DTYPES

    spec = parse_drafter(models.drafter)
    quantized = DTYPES.get(models.drafter_dtype)  # None: "same"
    if spec.kind == "ngram":
        from transformers import AutoConfig

        from dsi_mpi.backends.ngram import NGramDrafter

        target_cfg = AutoConfig.from_pretrained(resolve_model_path(models.target, "target"))
        return NGramDrafter(spec.params["n"], int(target_cfg.get_text_config().vocab_size))
    if spec.kind == "truncated":
        return _hf_runner(
            models.target,
            "drafter",
            models,
            local_rank,
            truncate=spec.params["layers"],
            capacity=capacity,
            quantized=quantized,
        )
    if spec.kind == "quantized":
        bits = DTYPES[f"int{spec.params['bits']}"]  # parse_drafter admits 8 and 4
        return _hf_runner(models.target, "drafter", models, local_rank, capacity=capacity, quantized=bits)
    return _drafter_runner(spec.model, models, local_rank, capacity, quantized=quantized)


def _emulated_runner(role: str, cfg: Config, local_rank: int, stage: tuple[int, int] | None):
    """LATENCY EMULATION (sleeps), or EMULATED ACCEPTANCE over a random-weight model's real forwards."""
    from dsi_mpi.backends.emulated import EmulatedAcceptanceRunner, EmulatedRunner, EmulatedStage

    emulation, seed = cfg.emulation, cfg.decoding.seed
    if stage is not None:
        return EmulatedStage(emulation, seed, stage[1], stage[0])
    if emulation.forwards == "sleep":
        return EmulatedRunner(role, emulation, seed)
    name = cfg.models.target if role == "target" else cfg.models.drafter
    capacity = cache_capacity(cfg.decoding, emulation.prompt_tokens)
    inner = _hf_runner(name, role, cfg.models, local_rank, capacity=capacity, random_weights=True)
    if emulation.vocab_size > inner.vocab_size:
        raise ConfigError(
            f"emulation.vocab_size {emulation.vocab_size} exceeds the {role} model's vocabulary "
            f"({inner.vocab_size}): emulated token ids must be valid inputs"
        )
    return EmulatedAcceptanceRunner(role, emulation, seed, inner)


TEXT_GROWTH = 4  # a drafter of another vocabulary: its static cache holds this many positions per target position


def _drafter_runner(name: str, models: ModelsConfig, local_rank: int, capacity: int, quantized):
    """The drafter model's runner (quantized: its weights in that dtype, int8 or int4); one of another vocabulary
    wrapped to take and propose target ids (TLI)."""
    vocab_map = vocabulary_map(models.target, name)
    if vocab_map is None:
        return _hf_runner(name, "drafter", models, local_rank, capacity=capacity, quantized=quantized)
    from dsi_mpi.backends.tli import TLIDrafter

    inner = _hf_runner(name, "drafter", models, local_rank, capacity=capacity * TEXT_GROWTH, quantized=quantized)
    return TLIDrafter(inner, vocab_map)


def load_model(name: str, role: str, dtype_name: str, device, random_weights: bool):
    """from_pretrained; or, for EMULATED ACCEPTANCE (weights do not matter), the config's architecture with
    random weights, built on the device (a 7B model needs no weights file and no host copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    if not random_weights:
        return load_or_explain(AutoModelForCausalLM.from_pretrained, name, role, dtype=dtype)
    config = load_or_explain(AutoConfig.from_pretrained, name, role)
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _hf_runner(
    name: str,
    role: str,
    models: ModelsConfig,
    local_rank: int,
    truncate: int = 0,
    capacity: int = 512,
    random_weights=False,
    quantized=None,
):
    """quantized (torch.int8 or quantize.INT4): a drafter's weights quantized (backends/quantize.py; the target's
    own for "quantized"): loaded in fp32 and quantized in place; the packed backend runs them in that dtype, eager
    holds q * s in the dtype asked."""
    import torch
    from transformers.utils import logging as hf_logging

    from dsi_mpi.backends.quantize import dtype_name, fake_quantize

    hf_logging.disable_progress_bar()
    name = resolve_model_path(name, role)
    device = pick_device(models.device, local_rank)
    packed = _backend_for(models.backend, device) == "packed"
    deferred = models.dtype == "auto" and packed and quantized is None  # decided on the loaded model (_auto_dtype)
    asked = resolve_dtype(models.dtype, device.type)
    model = load_model(name, role, "float32" if deferred or quantized is not None else asked, device, random_weights)
    if truncate:
        truncate_layers(model, truncate)
    head_tokens = restrict_drafter_head(model, name) if role == "drafter" and not random_weights else None
    if quantized is not None:
        fake_quantize(model, quantized)
    if deferred or (quantized is not None and not packed):
        model.to(getattr(torch, _auto_dtype(model, device) if deferred else asked))
    model.to(device)
    runner = _runner_or_eager(model, _eos_ids(model), capacity, role, name, models, quantized=quantized)
    ran_quantized = quantized is not None and getattr(runner, "dtype", None) == quantized  # else eager: q * s
    dtype = dtype_name(quantized if ran_quantized else model.dtype)
    runner.compile_info.update(dtype=dtype, requested=models.backend)
    runner.compile_info.setdefault("cpu", cpu_facts())
    runner.head_tokens = head_tokens
    return runner


def _eos_ids(model) -> tuple:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))


def _runner_or_eager(model, eos_ids, capacity: int, role: str, name: str, models: ModelsConfig, quantized=None):
    """The runner of models.backend; a model that backend cannot run runs eager, the reason recorded (running
    out of memory is the machine's problem, not the model's: raised). quantized: a quantized drafter's dtype (packed)."""
    from dsi_mpi.backends.hf import HFRunner, UnsupportedModel, out_of_memory

    backend, fallback = _backend_for(models.backend, model.device), None
    try:
        runner = _fast_runner(backend, model, eos_ids, capacity, role, models, quantized)
        if runner is not None:
            return runner
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - a model this backend cannot run: eager, and say so in the results
        if out_of_memory(err):
            raise
        fallback = f"{backend}: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
        log_fallback = logger.info if models.backend == "auto" else logger.warning
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


def _fast_runner(backend: str, model, eos_ids, capacity: int, role: str, models: ModelsConfig, quantized=None):
    """The packed or compiled runner (None for eager); raises where the backend cannot run the model."""
    if backend == "packed":
        from dsi_mpi.backends.packed import PackedRunner

        return PackedRunner(model, eos_ids, capacity, quantized=quantized)
    if backend == "compiled":
        from dsi_mpi.backends.compiled import CompiledRunner

        segments = models.compile_segments if role == "target" else 1
        max_bucket, buckets = models.compile_max_bucket, models.compile_buckets
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


def _stage_runner(models: ModelsConfig, local_rank: int, index: int, stages: int):
    import torch

    from dsi_mpi.backends.stage import HFStageRunner, build_stage_model

    name = resolve_model_path(models.target, "target")
    device = pick_device(models.device, local_rank)
    model, layers = build_stage_model(name, getattr(torch, resolve_dtype(models.dtype, device.type)), stages, index)
    model.to(device)
    return HFStageRunner(model, index == 0, index == stages - 1, layers, _eos_ids(model))
