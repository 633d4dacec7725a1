"""Bad model paths fail at start-up with one line naming what is wrong, before any rank loads weights."""

import shutil

import pytest

from dsi_mpi.backends.loading import check_pair, resolve_model_path
from dsi_mpi.io.config import ConfigError


def test_a_gguf_file_given_directly(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ConfigError, match=r"is a GGUF file: convert it into a Hugging Face model folder"):
        resolve_model_path(str(gguf), "target")


def test_a_model_folder_without_weights(tiny_models, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["target"], bare, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(ConfigError, match=r"target model folder .*bare has no weights"):
        check_pair({"target": str(bare), "drafter": "ngram"})
    with pytest.raises(ConfigError, match=r"drafter model folder .*bare has no weights"):
        check_pair({"target": tiny_models["target"], "drafter": str(bare)})
