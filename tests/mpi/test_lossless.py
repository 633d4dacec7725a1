"""Greedy SI and DSI equal Hugging Face's own greedy generate, token for token: drafters that are always
right, sometimes right and nearly always wrong (a GPT-2 drafting for a Llama target), lookahead 1..8 and
adaptive, 2..5 ranks. The sweep also proves it exercised rejections, stale results and aborted forwards."""

import json

import pytest
from conftest import ROOT


def sweep(run_mpi, tmp_path, models: dict, ranks: int, max_k: int, new_tokens: int) -> list[dict]:
    """Run lossless_sweep.py; every row must equal generate()'s tokens."""
    (tmp_path / "models.json").write_text(json.dumps(models))
    out = tmp_path / "sweep.json"
    proc = run_mpi(
        [
            str(ROOT / "tests/mpi/lossless_sweep.py"),
            str(tmp_path / "models.json"),
            str(out),
            str(max_k),
            str(new_tokens),
        ],
        ranks=ranks,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == (len(models) - 1) * (max_k + 1) * 2 * 3  # k = 0 is adaptive
    wrong = [(r["drafter"], r["k"], r["policy"], r["prompt"]) for r in rows if not r["ok"]]
    assert not wrong, f"outputs differ from generate(): {wrong[:10]}"
    return rows


@pytest.mark.parametrize("ranks", [2, 3, 4, 5])
def test_si_and_dsi_equal_hf_generate(tiny_models, run_mpi, tmp_path, ranks):
    models = {name: tiny_models[name] for name in ("target", "copy", "noisy", "gpt2")}
    rows = sweep(run_mpi, tmp_path, models, ranks, max_k=8, new_tokens=24)
    assert all(len(r["ref"]) > 0 for r in rows)
    by = {d: [r for r in rows if r["drafter"] == d] for d in ("copy", "noisy", "gpt2")}
    rate = {d: sum(r["accepted"] for r in rs) / sum(r["compared"] for r in rs) for d, rs in by.items()}
    assert rate["copy"] == 1.0 and 0.05 < rate["noisy"] < 0.95 and rate["gpt2"] < 0.2, rate
    dsi = [r for r in rows if r["policy"] == "dsi"]
    assert sum(r["rejections"] for r in dsi) > 100
    if ranks >= 3:
        assert sum(r["stale"] for r in dsi) > 10, "DSI never produced stale work: rejections untested"
        assert sum(r["aborted"] for r in dsi) > 0, "no forward was ever cancelled"


@pytest.mark.parametrize("ranks", [2, 3])
def test_drafters_that_need_no_training_are_lossless(tiny_models, run_mpi, tmp_path, ranks):
    """Prompt lookup (no model; often nothing to propose, then blocks of fewer or no drafts) and the
    target's own first layer as a self-drafter, against generate(), lookahead 1..4."""
    models = {
        "target": tiny_models["target"],
        "ngram1": "ngram:n=1",
        "ngram3": "ngram:n=3",
        "truncated": "truncated:layers=1",
    }
    rows = sweep(run_mpi, tmp_path, models, ranks, max_k=4, new_tokens=32)
    ngram = [r for r in rows if r["drafter"].startswith("ngram")]
    assert sum(r["misses"] for r in ngram) > 50, "the n-gram drafter always had a proposal: empty blocks untested"
    assert sum(r["accepted"] for r in ngram) > 20, "the n-gram drafter never proposed a right token"
    assert sum(r["rejections"] for r in ngram) > 20
    truncated = [r for r in rows if r["drafter"] == "truncated"]
    assert sum(r["rejections"] for r in truncated) > 20 and sum(r["accepted"] for r in truncated) > 0
