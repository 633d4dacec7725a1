"""Pipelined verifier groups stay lossless: 2- and 3-stage groups of a tiny Llama (each stage loading only its
own layers), alone and mixed with a plain verifier, greedy against Hugging Face's `generate` and sampling
against the same algorithm on a plain rank (same seed: the tokens must be the same), with rejections,
stale tasks, tasks in flight on several stages at once and cancels that stop a task mid-pipeline."""

import json

import pytest
from helpers import ROOT, launch, write_job

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


BAD_PIPELINES = [
    ({"runtime": {"pipeline_stages": 4}}, 3, "runtime.pipeline_stages = 4 but target"),
    ({"runtime": {"pipeline_stages": 2}}, 4, "runtime.pipeline_stages = 2 does not divide the 3 verifier ranks"),
    ({"models": {"target": "@gpt2", "drafter": "@gpt2"}, "runtime": {"pipeline_stages": 2}}, 3, "cannot be split"),
    ({"runtime": {"pipeline_stages": 2, "instances": 2}}, 5, "2 instances of 2 ranks (a drafter and 1 verifier rank)"),
]


@pytest.mark.parametrize("override, ranks, words", BAD_PIPELINES)
def test_bad_pipelines_are_one_line_and_every_rank_exits(tiny_models, tmp_path, override, ranks, words):
    """More stages than decoder layers, a rank count that does not divide into groups (of one instance or of
    several), and an architecture whose layers cannot be split: exit code 2, the reason on one line, found
    before any weights load."""
    for section in override.values():
        for name, value in section.items():
            if isinstance(value, str) and value.startswith("@"):
                section[name] = tiny_models[value[1:]]
    proc = launch(["-m", "dsi_mpi", "run", write_job(tmp_path, tiny_models, **override)], ranks=ranks, timeout=90)
    lines = [line for line in proc.stderr.splitlines() if words in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("dsi-mpi: error on rank 0 ("), lines  # rank 0's error line, said once
