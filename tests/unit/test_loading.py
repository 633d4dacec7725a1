"""Bad model paths fail at start-up with one line naming what is wrong, before any rank loads weights."""

import shutil

import pytest

from dsi_mpi.backends.checks import check_pair, resolve_model_path
from dsi_mpi.io.config import ConfigError, validate


def test_a_gguf_file_given_directly(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ConfigError, match=r"is a GGUF file: convert it into a Hugging Face model folder"):
        resolve_model_path(str(gguf), "target")


def test_a_model_folder_without_weights(tiny_models, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["target"], bare, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(ConfigError, match=r"target model folder .*bare has no weights"):
        check_pair(validate({"models": {"target": str(bare), "drafter": "ngram"}}).models)
    with pytest.raises(ConfigError, match=r"drafter model folder .*bare has no weights"):
        check_pair(validate({"models": {"target": tiny_models["target"], "drafter": str(bare)}}).models)


def test_a_model_name_that_is_no_folder_says_so_and_that_no_hub_answered():
    """A drafter path with a typo went to the model hub; without one reachable the user hears both halves, not
    only the hub client's "We couldn't connect to ...". The messages are Hugging Face's own (offline and
    no network); a hub that answers passes its reason on."""
    from dsi_mpi.backends.checks import load_or_explain

    def offline(name):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
            "cached files.\nCheck your internet connection or see how to run the library in offline mode at ..."
        )

    def no_network(name):
        raise OSError("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/x")

    def unknown(name):
        raise OSError("nowhere is not a local folder and is not a valid model identifier listed on the hub")

    for loader in (offline, no_network):
        with pytest.raises(ConfigError) as err:
            load_or_explain(loader, "nowhere", "drafter")
        assert str(err.value) == (
            "cannot load drafter model 'nowhere': there is no folder 'nowhere' here, and no model hub reachable"
        )
    with pytest.raises(ConfigError, match="no folder 'nowhere' here, and the model hub says: nowhere is not a local"):
        load_or_explain(unknown, "nowhere", "drafter")
