"""Pipelined verifier groups stay lossless: 2- and 3-stage groups of a tiny Llama (each stage loading only its
own layers), alone and mixed with a plain verifier, greedy against Hugging Face's `generate` and sampling
against the same algorithm on a plain rank (same seed: the tokens must be the same), with rejections,
stale tasks, tasks in flight on several stages at once and cancels that stop a task mid-pipeline."""

import json

import pytest
from conftest import ROOT, launch

GROUP2, MIXED, PLAIN = [[1, 2]], [[1, 2], [3]], [[3]]
GROUP3 = [[1, 2, 3]]


def sweep(tmp, models: dict, phases: list, mode: str) -> list[dict]:
    """One launch of pipeline_sweep.py over `phases` (the ranks regroup between phases)."""
    (tmp / "models.json").write_text(json.dumps(models))
    out = tmp / f"{mode}.json"
    args = [str(ROOT / "tests/mpi/pipeline_sweep.py"), str(tmp / "models.json"), str(out), json.dumps(phases), mode]
    proc = launch(args + ["[1, 3]", "20"], ranks=4, timeout=300)
    (tmp / f"{mode}.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "Error" in line)[-3000:]
    return json.loads(out.read_text())


def key(row) -> tuple:
    return row["drafter"], row["k"], row["policy"], row["prompt"]


def check_speculation_happened(rows: list[dict], stages: int) -> None:
    dsi = [r for r in rows if r["policy"] == "dsi"]
    assert sum(r["rejections"] for r in dsi) > 20 and sum(r["stale"] for r in dsi) > 5, "no stale work"
    assert sum(r["aborted"] for r in dsi) > 0, "no task was ever abandoned on a CANCEL"
    assert max(r["max_in_flight"] for r in dsi) >= 2, "never two tasks on different stages at once"
    if stages >= 3:
        assert sum(r["mid_pipeline"] for r in dsi) > 0, "no cancel ever stopped a task after its first stage"


def pick(rows, phase, layout):
    return [r for r in rows if r["phase"] == phase and r["layout"] == layout]


@pytest.fixture(scope="module")
def models(tiny_models):
    return {name: tiny_models[name] for name in ("target", "noisy", "gpt2")}


def test_greedy_on_two_and_three_stage_groups_equals_generate(models, tmp_path):
    """Phase 0: a 2-stage group alone, then mixed with the plain rank 3; phase 1: one 3-stage group."""
    rows = sweep(tmp_path, models, [[GROUP2, MIXED], [GROUP3]], "greedy")
    assert len(rows) == 3 * (3 + 2 * 2 * 2 * 3)
    wrong = [(r["phase"], r["layout"], *key(r)) for r in rows if r["tokens"] != r["ref"]]
    assert not wrong, f"outputs differ from generate(): {wrong[:10]}"
    check_speculation_happened(pick(rows, 0, 0), stages=2)
    check_speculation_happened(pick(rows, 1, 0), stages=3)


def test_sampling_on_two_and_three_stage_groups_equals_a_plain_rank(models, tmp_path):
    """The same seed gives the same tokens whatever the layout: phase 0 runs every algorithm on the plain
    rank 3 (the reference), on a 2-stage group and on the group mixed with rank 3; phase 1 on a 3-stage group."""
    rows = sweep(tmp_path, models, [[PLAIN, GROUP2, MIXED], [GROUP3]], "sampling")
    reference = {key(r): r["tokens"] for r in pick(rows, 0, 0)}
    others = [r for r in rows if (r["phase"], r["layout"]) != (0, 0)]
    assert len(others) == 3 * (3 + 2 * 2 * 2 * 3)
    wrong = [(r["phase"], r["layout"], *key(r)) for r in others if r["tokens"] != reference[key(r)]]
    assert not wrong, f"pipelined sampling differs from the plain rank's: {wrong[:10]}"
    check_speculation_happened(pick(rows, 0, 1), stages=2)
    check_speculation_happened(pick(rows, 1, 0), stages=3)
