import pytest

from dsi_mpi.io.config import KEYS, ConfigError, keys_markdown, load_config, validate


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_complete():
    cfg = validate({})
    assert cfg.decoding.algorithms == ("nonsi", "si", "dsi")
    assert all(hasattr(getattr(cfg, k.section), k.name) for k in KEYS)
    with pytest.raises(TypeError):  # read through the typed views only
        cfg["decoding"]


def test_overrides_parse_toml_values(tmp_path):
    cfg = load_config(
        write(tmp_path, "[decoding]\nlookahead = 3\n"),
        ["decoding.lookahead=7", 'decoding.algorithms=["dsi"]', "models.target=some/folder/x"],
    )
    assert cfg.decoding.lookahead == 7
    assert cfg.decoding.algorithms == ("dsi",)
    assert cfg.models.target == "some/folder/x"


@pytest.mark.parametrize(
    "text, words",
    [
        ("[decoding]\nlookahed = 3\n", "unknown config key decoding.lookahed"),
        ("[decodng]\nlookahead = 3\n", "unknown config section [decodng]"),
        ("[decoding]\nlookahead = 3.5\n", "decoding.lookahead must be int or str"),
        ("[decoding]\nlookahead = 0\n", 'decoding.lookahead must be "adaptive", "auto" or an integer >= 1'),
        ('[decoding]\nlookahead = "fast"\n', 'decoding.lookahead must be "adaptive", "auto" or an integer >= 1'),
        ("[decoding]\nlookahead = true\n", "decoding.lookahead must be int or str"),
        ('[decoding]\nalgorithms = ["dsi", "fast"]\n', "unknown algorithm 'fast'"),
        ("[decoding\n", "not valid TOML"),
        ('[models]\nkind = "emulated"\n[decoding]\nalgorithms = ["hf_assisted"]\n', "hf_assisted needs real models"),
        ('[runtime]\npoll_spin_s = "long"\n', 'runtime.poll_spin_s must be "auto" or seconds'),
        ("[runtime]\npoll_spin_s = -1\n", "runtime.poll_spin_s must be >= 0"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, words):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(write(tmp_path, text))
    assert words in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/c.toml")


def test_round_trip_and_digest(tmp_path):
    cfg = load_config(write(tmp_path, "[decoding]\nlookahead = 4\n"))
    again = load_config(write(tmp_path, cfg.to_toml()))
    assert again.values == cfg.values
    assert again.digest() == cfg.digest()
    assert load_config(None, ["decoding.lookahead=5"]).digest() != cfg.digest()
    assert load_config(None, ["output.path=x.h5", "decoding.lookahead=4"]).digest() == cfg.digest()


def test_key_table_lists_every_key():
    table = keys_markdown()
    assert all(f"`{k.section}.{k.name}`" in table for k in KEYS)


def test_spin_is_long_only_where_every_thread_has_a_core(tmp_path):
    from dsi_mpi.mpi.polling import SPIN_SHARED_CORES_S, SPIN_SPARE_CORES_S, poller_from_config, spin_for_node

    assert spin_for_node("auto", threads_on_node=2, cores_on_node=2) == SPIN_SPARE_CORES_S
    assert spin_for_node("auto", threads_on_node=3, cores_on_node=2) == SPIN_SHARED_CORES_S
    assert spin_for_node(0.001, threads_on_node=3, cores_on_node=2) == 0.001
    assert load_config(write(tmp_path, "[runtime]\npoll_spin_s = 0\n")).runtime.poll_spin_s == 0.0
    # until the node is known (start-up collectives), "auto" spins briefly
    assert poller_from_config(load_config(write(tmp_path, "")).runtime).spin_s == SPIN_SHARED_CORES_S


def test_a_wait_runs_its_spinning_work_during_the_spin_only():
    """runtime.keep_warm's hook: between two polls of the spin, never once the wait sleeps."""
    import time

    from dsi_mpi.mpi.polling import BackoffPoller

    poller, calls, polls = BackoffPoller(spin_s=0.005, max_sleep_s=0.001), [], []

    def poll():
        polls.append(time.perf_counter())
        return True if polls[-1] - polls[0] > 0.02 else None

    assert poller.wait_for(poll, "a test", while_spinning=lambda: calls.append(time.perf_counter()))
    assert calls and all(t - polls[0] < 0.005 + 0.002 for t in calls)


def test_write_config_writes_what_load_config_reads(tmp_path):
    from dsi_mpi.io.config import write_config

    sections = {"decoding": {"lookahead": 3, "algorithms": ["si"]}, "runtime": {"poll_spin_s": 1e-05}}
    cfg = load_config(write_config(tmp_path / "job.toml", sections))
    assert cfg.decoding.lookahead == 3 and cfg.decoding.algorithms == ("si",) and cfg.runtime.poll_spin_s == 1e-05
    assert cfg.replace("decoding", lookahead=5).decoding.lookahead == 5 and cfg.decoding.lookahead == 3
    with pytest.raises(ConfigError, match="unknown config key decoding.lookahed"):
        write_config(tmp_path / "bad.toml", {"decoding": {"lookahed": 3}})
