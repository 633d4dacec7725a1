"""The compiled backend (static KV cache, torch.compile, segments with cancel checks between them) is lossless
through real MPI runs: greedy SI and DSI equal Hugging Face's own greedy `generate` for Llama, Qwen2 (sliding
window shorter than the text) and GPT-2, drafter and target both compiled; and the device check
(analysis/gpu_check.sh --tiny) runs nonsi, si and dsi with EMULATED ACCEPTANCE over real compiled forwards.
Kept cheap: tiny models, buckets 1 and 2 only (longer inputs in chunks), one launch each (CPU compile costs seconds per shape)."""

import json

from helpers import ROOT
from tiny_families import build_families

FAMILIES = ("llama", "qwen2", "gpt2")  # Mistral compiles through Qwen2's code path (CI time)
COMPILED = {"backend": "compiled", "compile_segments": 2, "compile_max_bucket": 2}


def test_compiled_families_equal_hf_generate(run_mpi, tmp_path):
    families = build_families(tmp_path / "families", FAMILIES)
    (tmp_path / "families.json").write_text(json.dumps(families))
    out = tmp_path / "sweep.json"
    args = [str(tmp_path / "families.json"), str(out), "1,3", "20", json.dumps(COMPILED), "noisy"]
    proc = run_mpi([str(ROOT / "tests/mpi/families_sweep.py"), *args], ranks=2, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r], rows
    wrong = [(r["family"], r["k"], r["policy"], r["prompt"]) for r in rows if not r["ok"]]
    assert not wrong, f"compiled outputs differ from generate(): {wrong}"
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        assert len(mine) == 2 * 2 * 2, family  # lookaheads x policies x prompts
        assert all(r["target_backends"] == ["compiled"] and r["drafter_backend"] == "compiled" for r in mine), mine[0]
        assert sum(r["rejections"] for r in mine) > 0, family  # rollbacks by position really happened


def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    """The device check end to end as the GPU machine would run it (tiny shapes, on the CPU): both scripts, every
    phase's JSON under --out, eager and compiled choosing the same tokens, and the cores' check measured against
    the simulator."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "analysis/gpu_check.sh"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    algorithms = report["algorithms"]["0.8"]
    assert {"nonsi", "si", "dsi"} <= set(algorithms), algorithms
    assert all(b["backend"] == "compiled" and b["acceptance"] == "emulated" for b in algorithms["backends"])
    assert all(b["buckets"] == [1, 4] for b in algorithms["backends"])  # only the buckets the job uses
    assert 0.3 < algorithms["si"]["acceptance"] < 1.0 and algorithms["shared_gpus"] == []  # i.i.d. at 0.8
    for m in report["models"].values():
        assert m["compiled_ms"] > 0 and m["eager_ms"] > 0 and m["compile_s"] > 0 and m["tokens_equal"], m
    cores = json.loads((out / "cpu_parallelism.json").read_text())
    assert [p["verifiers"] for p in cores["points"]] == [1, 2]
    for point in cores["points"]:
        assert point["predicted_dsi_ms"] > 0 and point["measured_dsi_ms"] > 0 and -0.9 < point["dsi_error"] < 9, point
    assert "EMULATED ACCEPTANCE" in proc.stdout and (out / "gpu_check.md").exists()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["points"] == cores["points"]
