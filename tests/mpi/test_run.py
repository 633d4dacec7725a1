"""End to end through the real CLI under mpiexec: results, report, and the reference outputs."""

import json
import time

import h5py
import pytest
from helpers import reference, write_job


def test_run_writes_everything_and_matches_generate(tiny_models, run_mpi, tmp_path):
    config = write_job(tmp_path, tiny_models)
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for algorithm in ("nonsi", "si", "dsi", "hf_assisted"):
        assert algorithm in proc.stdout
    with h5py.File(tmp_path / "out.h5") as f:
        assert "lookahead = 3" in f.attrs["config_toml"]
        ranks = json.loads(f.attrs["ranks"])
        assert [r["role"] for r in ranks] == ["drafter+coordinator", "target verifier", "target verifier"]
        versions = json.loads(f.attrs["versions"])
        assert {"python", "torch", "transformers", "mpi4py", "mpi_library"} <= set(versions)
        assert f.attrs["git_commit"]
        for name, group in f["prompts"].items():
            assert group.attrs["complete"]
            ref = reference(tiny_models["target"], group["prompt_tokens"][()].tolist(), 20)
            for algorithm in ("nonsi", "si", "dsi", "hf_assisted"):
                run = group[algorithm]
                assert run["tokens"][()].tolist() == ref, (name, algorithm)
                times = run["commit_times"][()]
                assert len(times) == len(ref) and (times[1:] >= times[:-1]).all()
                assert run.attrs["wall_s"] >= run.attrs["ttft_s"] > 0
            assert group["dsi"].attrs["tasks_sent"] >= group["dsi"].attrs["tasks_used"] > 0
    report = run_mpi(["-m", "dsi_mpi", "report", str(tmp_path / "out.h5"), "--json"])
    assert report.returncode == 0, report.stderr
    records = json.loads(report.stdout)
    assert len(records) == 2 * 4
    needed = {
        "prompt_index",
        "tokens",
        "wall_s",
        "ttft_s",
        "drafted",
        "accepted",
        "tasks_sent",
        "tasks_used",
        "tasks_stale",
        "commit_times",
        "tokens_computed",
        "tokens_reused",
    }
    assert needed <= set(records[0])
    table = run_mpi(["-m", "dsi_mpi", "report", str(tmp_path / "out.h5")])
    assert "vs nonsi" in table.stdout and "dsi" in table.stdout


@pytest.mark.parametrize("drafter", ["ngram:n=2", "truncated:layers=1", "quantized", "quantized:bits=4"])
def test_drafters_without_training_through_the_cli(tiny_models, run_mpi, tmp_path, drafter):
    """The drafter kinds through the CLI with the default, adaptive lookahead: recorded in the file, lossless,
    and HF's prompt lookup (and HF's heuristic schedule) as baselines."""
    algorithms = ["nonsi", "si", "dsi", "hf_prompt_lookup"] + (["hf_assisted"] if drafter != "ngram:n=2" else [])
    decoding = {"algorithms": algorithms, "lookahead": "adaptive"}
    config = write_job(tmp_path, dict(tiny_models, noisy=drafter), decoding=decoding)
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "out.h5") as f:
        recorded = json.loads(f.attrs["drafter"])
        assert recorded["kind"] == drafter.split(":")[0] and recorded["params"]
        assert all(g[a].attrs["lookahead"] == 0 for g in f["prompts"].values() for a in ("si", "dsi"))  # adaptive
        for group in f["prompts"].values():
            ref = reference(tiny_models["target"], group["prompt_tokens"][()].tolist(), 20)
            for algorithm in algorithms:
                assert group[algorithm]["tokens"][()].tolist() == ref, (drafter, algorithm)


def test_emulated_run_is_named_and_exact(run_mpi, tmp_path):
    from dsi_mpi.backends.emulated import emulated_target_token

    config = write_job(
        tmp_path,
        {"target": "unused", "noisy": "unused"},
        models={"kind": "emulated"},
        decoding={"algorithms": ["nonsi", "si", "dsi"], "max_new_tokens": 30, "seed": 3},
        emulation={
            "target_tpot_s": 0.004,
            "target_ttft_s": 0.006,
            "drafter_tpot_s": 0.001,
            "drafter_ttft_s": 0.002,
            "acceptance": 0.7,
            "prompt_tokens": 16,
        },
    )
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "out.h5") as f:
        assert 'kind = "emulated"' in f.attrs["config_toml"]
        for group in f["prompts"].values():
            n = len(group["prompt_tokens"])
            expected = [emulated_target_token(3, n + i, 1000) for i in range(30)]
            for algorithm in ("nonsi", "si", "dsi"):
                assert group[algorithm]["tokens"][()].tolist() == expected


BAD_INPUTS = [
    ({"decoding": {"lookahed": 3}}, "unknown config key decoding.lookahed"),
    ({"decoding": {"lookahead": 0}}, 'decoding.lookahead must be "adaptive", "auto" or an integer >= 1'),
    ({"models": {"target": "/nonexistent/model"}}, "target model folder not found: /nonexistent/model"),
    ({"prompts": {"path": "/nonexistent/p.jsonl"}}, "prompt set not found"),
]


@pytest.mark.parametrize("override, words", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_every_rank_exits(tiny_models, run_mpi, tmp_path, override, words):
    for section in override.values():
        for key, value in section.items():
            if isinstance(value, str) and value.startswith("@"):
                section[key] = tiny_models[value[1:]]
    config = write_job(tmp_path, tiny_models, check=False, **override)
    start = time.monotonic()
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=2, timeout=90)  # rank 0 and a verifier: both exit
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - start < 60


def test_too_few_ranks(tiny_models, run_mpi, tmp_path):
    proc = run_mpi(["-m", "dsi_mpi", "run", write_job(tmp_path, tiny_models)], ranks=1, timeout=90)
    assert proc.returncode == 2 and "needs at least 2 MPI ranks" in proc.stderr


def test_existing_output_is_not_overwritten_unless_asked(tiny_models, run_mpi, tmp_path):
    """Refused here; with output.overwrite = true it is replaced (the first run of the reproducibility test
    below starts from such a file)."""
    config = write_job(tmp_path, tiny_models, decoding={"algorithms": ["nonsi"], "max_new_tokens": 4})
    (tmp_path / "out.h5").write_text("precious")
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=2, timeout=90)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (tmp_path / "out.h5").read_text() == "precious"


@pytest.mark.parametrize(
    "prompts, words",
    [
        ("", "holds no prompts"),
        ('{"prompt": "ok"}\nnot json\n', "prompts.jsonl:2: not valid JSON"),
        ('{"text": "x"}\n', 'expected an object with a string "prompt"'),
        ('{"prompt": "' + "x" * 600 + '"}\n', "exceeds the target's context of 512 positions"),
    ],
)
def test_bad_prompt_sets(tiny_models, run_mpi, tmp_path, prompts, words):
    config = write_job(tmp_path, tiny_models)
    (tmp_path / "prompts.jsonl").write_text(prompts)
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=2, timeout=90)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]


def test_unwritable_output_and_unloadable_model(tiny_models, run_mpi, tmp_path):
    (tmp_path / "not_a_dir").write_text("")
    config = write_job(tmp_path, tiny_models, output={"path": str(tmp_path / "not_a_dir" / "out.h5")})
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=2, timeout=90)
    assert proc.returncode == 2 and "cannot write output file" in proc.stderr, proc.stderr[-2000:]
    (tmp_path / "empty_model").mkdir()
    config = write_job(tmp_path, tiny_models, models={"drafter": str(tmp_path / "empty_model")})
    proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=2, timeout=90)
    assert proc.returncode == 2 and "cannot load drafter model" in proc.stderr, proc.stderr[-2000:]


def test_sampling_is_reproducible_across_runs_and_rank_counts(tiny_models, run_mpi, tmp_path):
    sampled = {
        "algorithms": ["nonsi", "si", "dsi"],
        "do_sample": True,
        "temperature": 0.9,
        "top_k": 20,
        "seed": 11,
        "max_new_tokens": 16,
    }
    tokens = []
    (tmp_path / "out.h5").write_text("precious")  # output.overwrite = true replaces a file that is there
    for ranks in (2, 3, 3):  # another rank count (dsi with 1 and with 2 verifiers), then the same again
        config = write_job(tmp_path, tiny_models, decoding=sampled, output={"overwrite": True})
        proc = run_mpi(["-m", "dsi_mpi", "run", config], ranks=ranks)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with h5py.File(tmp_path / "out.h5") as f:
            tokens.append(
                {
                    (name, a): g[a]["tokens"][()].tolist()
                    for name, g in f["prompts"].items()
                    for a in ("nonsi", "si", "dsi")
                }
            )
    assert tokens[0] == tokens[1] == tokens[2]
    assert len({tuple(v) for v in tokens[0].values()}) > 1  # really sampled: not one fixed text
