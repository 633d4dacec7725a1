"""Greedy SI and DSI equal Hugging Face's own greedy generate, token for token: drafters that are always
right, sometimes right and nearly always wrong (a GPT-2 drafting for a Llama target), lookahead 1..8,
2..5 ranks. The sweep also proves it exercised rejections, stale results and aborted forwards."""
import json

import pytest

from conftest import ROOT


@pytest.mark.parametrize("ranks", [2, 3, 4, 5])
def test_si_and_dsi_equal_hf_generate(tiny_models, run_mpi, tmp_path, ranks):
    models = {name: tiny_models[name] for name in ("target", "copy", "noisy", "gpt2")}
    (tmp_path / "models.json").write_text(json.dumps(models))
    out = tmp_path / "sweep.json"
    proc = run_mpi([str(ROOT / "tests/mpi/lossless_sweep.py"), str(tmp_path / "models.json"), str(out), "8", "24"],
                   ranks=ranks, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 3 * 8 * 2 * 3
    wrong = [(r["drafter"], r["k"], r["policy"], r["prompt"]) for r in rows if not r["ok"]]
    assert not wrong, f"outputs differ from generate(): {wrong[:10]}"
    assert all(len(r["ref"]) > 0 for r in rows)
    by = {d: [r for r in rows if r["drafter"] == d] for d in ("copy", "noisy", "gpt2")}
    rate = {d: sum(r["accepted"] for r in rs) / sum(r["compared"] for r in rs) for d, rs in by.items()}
    assert rate["copy"] == 1.0 and 0.05 < rate["noisy"] < 0.95 and rate["gpt2"] < 0.2, rate
    dsi = [r for r in rows if r["policy"] == "dsi"]
    assert sum(r["rejections"] for r in dsi) > 100
    if ranks >= 3:
        assert sum(r["stale"] for r in dsi) > 10, "DSI never produced stale work: rejections untested"
        assert sum(r["aborted"] for r in dsi) > 0, "no forward was ever cancelled"
