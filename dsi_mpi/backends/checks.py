"""Checks of the models a config names, on configs, tokenizers and file headers only, before any rank spends
time loading weights: model paths (a local folder, or a hub id), weights present, the pair usable (one
vocabulary, or enough shared tokens), the transformers release, a target that can be cut into pipeline stages.
Every problem is a one-line ConfigError.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsi_mpi.io.config import ConfigError, ModelsConfig
from dsi_mpi.io.drafter_spec import parse_drafter


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


def load_or_explain(loader, name: str, what: str, **kwargs):
    """loader(name) (a config, a tokenizer, a model), or a one-line ConfigError saying why not. A name that
    is no folder here went to the model hub: say so, rather than only what the hub client said (a path with
    a typo is otherwise explained as a failed connection)."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not Path(name).expanduser().exists():
            hub = "no model hub reachable" if _unreachable(str(err)) else f"the model hub says: {first}"
            raise ConfigError(
                f"cannot load {what} model {name!r}: there is no folder {name!r} here, and {hub}"
            ) from None
        raise ConfigError(f"cannot load {what} model {name!r}: {first}") from None


UNREACHABLE = (  # what hub clients and the resolver say when no hub answers
    "couldn't connect",
    "could not connect",
    "connection",
    "offline",
    "name or service not known",
    "temporary failure in name resolution",
    "network is unreachable",
    "timed out",
)


def _unreachable(message: str) -> bool:
    """Whether a hub client's error says it could not reach the hub (no network, or offline mode)."""
    text = message.lower()
    return any(words in text for words in UNREACHABLE)


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


def check_weights(name: str, what: str) -> None:
    """A local model folder must hold weights (a folder with only config and tokenizer would fail on
    every rank at load time, after the ranks have started)."""
    path = Path(resolve_model_path(name, what))
    if path.is_dir() and not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{what} model folder {name} has no weights (no *.safetensors or *.bin file)")


def load_tokenizer(name: str, what: str = "target"):
    from transformers import AutoTokenizer

    return load_or_explain(AutoTokenizer.from_pretrained, resolve_model_path(name, what), what)


def check_pair(models: ModelsConfig, algorithms=()) -> None:
    """Refuse a drafter the target cannot use. A drafter of another vocabulary drafts the tokens the two
    share (token-level intersection, backends/tli.py): refused when they share too few or its tokenizer
    cannot be read (backends/vocab_map.py). Drafters built from the target itself (n-gram, truncated,
    quantized) share its vocabulary by construction."""
    from transformers import AutoConfig

    target_cfg = load_or_explain(AutoConfig.from_pretrained, resolve_model_path(models.target, "target"), "target")
    check_weights(models.target, "target")
    spec = parse_drafter(models.drafter)
    if spec.kind == "truncated" and spec.params["layers"] > layer_count(target_cfg):
        raise ConfigError(
            f"models.drafter {models.drafter!r}: the target has only {layer_count(target_cfg)} decoder layers"
        )
    if spec.kind != "model":
        return
    load_or_explain(AutoConfig.from_pretrained, resolve_model_path(spec.model, "drafter"), "drafter")
    check_weights(spec.model, "drafter")
    vocab_map = vocabulary_map(models.target, spec.model)
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
        _vocab_rows(load_or_explain(AutoConfig.from_pretrained, resolve_model_path(name, role), role))
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


def drafter_vocabulary(models: ModelsConfig, runner) -> dict:
    """The results file's record of how drafts become target ids: "shared" (one vocabulary), or token-level
    intersection with its sizes and mapping (backends/vocab_map.py: VocabMap.record). The scheduler rank of a
    many-instance job holds no drafter: it reads the pair itself."""
    if runner is not None or models.kind != "hf" or parse_drafter(models.drafter).kind != "model":
        return getattr(runner, "vocabulary", None) or {"method": "shared"}
    vocab_map = vocabulary_map(models.target, models.drafter)
    return {"method": "shared"} if vocab_map is None else vocab_map.record()


def layer_count(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ConfigError(f"cannot tell how many decoder layers a {type(config).__name__} model has")


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


def check_stages(models: ModelsConfig, stages: int) -> None:
    """A target to be cut into `stages` pipeline stages: splittable, with layers enough, in local safetensors
    (checked from its config and headers, before any rank loads weights)."""
    from transformers import AutoConfig

    from dsi_mpi.backends.split import Checkpoint, SplitError

    name = resolve_model_path(models.target, "target")
    check_splittable(load_or_explain(AutoConfig.from_pretrained, name, "target"), stages, models.target)
    try:
        Checkpoint(name)
    except (SplitError, OSError, ValueError) as err:
        raise ConfigError(
            f"runtime.pipeline_stages = {stages}: stages read the target from a local folder: {err}"
        ) from None


SPLITTABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3")  # checked against the full model in tests


def check_splittable(config, stages: int, name: str) -> None:
    """Refuse, on the config alone, a target that cannot be cut into `stages` stages."""
    kind = getattr(config, "model_type", type(config).__name__)
    if kind not in SPLITTABLE:
        raise ConfigError(
            f"runtime.pipeline_stages = {stages}: the layers of target {name!r} ({kind}) cannot be split into "
            f"pipeline stages (supported: {', '.join(SPLITTABLE)})"
        )
    n = layer_count(config)
    if stages > n:
        raise ConfigError(f"runtime.pipeline_stages = {stages} but target {name!r} has only {n} decoder layers")
