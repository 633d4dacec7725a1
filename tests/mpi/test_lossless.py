"""Greedy SI and DSI equal Hugging Face's own greedy generate, token for token: drafters that are always
right, sometimes right and nearly always wrong (a GPT-2 drafting for a Llama target), lookahead 1..8 and
adaptive at 2 and 3 ranks, and DSI at 4 and 5 ranks with lookahead 1, 2, 4, 8 and adaptive (SI uses one verifier whatever the rank
count: more ranks would repeat its runs exactly); and the drafters that need no training (prompt lookup,
the target's own first layer), lookahead 1..4 and adaptive, 2 and 3 ranks. One mpiexec launch per rank count runs every
case of that rank count. The sweep also proves it exercised rejections, stale results and aborted forwards."""

import json

import pytest
from helpers import ROOT

MODEL_DRAFTERS = ("copy", "noisy", "gpt2")
NO_TRAINING = {"ngram1": "ngram:n=1", "ngram3": "ngram:n=3", "truncated": "truncated:layers=1"}
PROMPTS = 3  # lossless_sweep.PROMPTS


def groups(tiny_models, ranks: int) -> list[dict]:
    """What one launch at `ranks` ranks runs."""
    policies = ["si", "dsi"] if ranks <= 3 else ["dsi"]
    out = [
        {
            "name": "models",
            "drafters": {d: tiny_models[d] for d in MODEL_DRAFTERS},
            "lookaheads": list(range(0, 9)) if ranks <= 3 else [0, 1, 2, 4, 8],  # 0: adaptive speculation
            "policies": policies,
            "new_tokens": 24,
        }
    ]
    if ranks <= 3:
        no_training = {"drafters": NO_TRAINING, "lookaheads": [0, 1, 2, 3, 4], "policies": policies, "new_tokens": 32}
        out.append({"name": "no_training"} | no_training)
        head = {"noisy": tiny_models["noisy"], "noisy_head": tiny_models["noisy_head"]}
        out.append(
            {"name": "head", "drafters": head, "lookaheads": [0, 1, 2, 4], "policies": policies, "new_tokens": 24}
        )
    return out


def run_sweep(job: dict, ranks: int, tmp) -> dict:
    """lossless_sweep.py once; every row must equal generate()'s tokens. Returns {group name: rows}."""
    from helpers import launch

    (tmp / "sweep.json").write_text(json.dumps(job))
    out = tmp / "rows.json"
    proc = launch(
        [str(ROOT / "tests/mpi/lossless_sweep.py"), str(tmp / "sweep.json"), str(out)], ranks=ranks, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == sum(
        len(g["drafters"]) * len(g["lookaheads"]) * len(g["policies"]) * PROMPTS for g in job["groups"]
    )
    wrong = [(r["drafter"], r["k"], r["policy"], r["prompt"]) for r in rows if not r["ok"]]
    assert not wrong, f"outputs differ from generate(): {wrong[:10]}"
    return {g["name"]: [r for r in rows if r["group"] == g["name"]] for g in job["groups"]}


@pytest.fixture(scope="module")
def sweep(request, tiny_models, tmp_path_factory):
    """The sweep at one rank count, shared by the tests of that count."""
    ranks = request.param
    job = {"target": tiny_models["target"], "groups": groups(tiny_models, ranks)}
    return run_sweep(job, ranks, tmp_path_factory.mktemp(f"lossless{ranks}"))


@pytest.mark.parametrize("sweep", [2, 3, 4, 5], indirect=True)
def test_si_and_dsi_equal_hf_generate(sweep, request):
    ranks = request.node.callspec.params["sweep"]
    rows = sweep["models"]
    assert all(len(r["ref"]) > 0 for r in rows)
    by = {d: [r for r in rows if r["drafter"] == d] for d in MODEL_DRAFTERS}
    rate = {d: sum(r["accepted"] for r in rs) / sum(r["compared"] for r in rs) for d, rs in by.items()}
    assert rate["copy"] == 1.0 and 0.05 < rate["noisy"] < 0.95 and rate["gpt2"] < 0.2, rate
    dsi = [r for r in rows if r["policy"] == "dsi"]
    assert sum(r["rejections"] for r in dsi) > 100
    if ranks >= 3:
        assert sum(r["stale"] for r in dsi) > 10, "DSI never produced stale work: rejections untested"
        assert sum(r["aborted"] for r in dsi) > 0, "no forward was ever cancelled"


@pytest.mark.parametrize("sweep", [2, 3], indirect=True)
def test_drafters_that_need_no_training_are_lossless(sweep):
    """Prompt lookup (no model; often nothing to propose, then blocks of fewer or no drafts) and the
    target's own first layer as a self-drafter, against generate(), lookahead 1..4."""
    rows = sweep["no_training"]
    ngram = [r for r in rows if r["drafter"].startswith("ngram")]
    assert sum(r["misses"] for r in ngram) > 50, "the n-gram drafter always had a proposal: empty blocks untested"
    assert sum(r["accepted"] for r in ngram) > 20, "the n-gram drafter never proposed a right token"
    assert sum(r["rejections"] for r in ngram) > 20
    truncated = [r for r in rows if r["drafter"] == "truncated"]
    assert sum(r["rejections"] for r in truncated) > 20 and sum(r["accepted"] for r in truncated) > 0


@pytest.mark.parametrize("sweep", [2, 3], indirect=True)
def test_a_drafter_with_a_frequency_ranked_head_is_lossless(sweep):
    """The same drafter with a head of the even token ids only (draft_vocab.json): it cannot propose an odd
    token, so it is right less often, and si and dsi still give generate()'s tokens (the sweep's check)."""
    rows = sweep["head"]
    rate = {
        d: sum(r["accepted"] for r in rows if r["drafter"] == d) / sum(r["compared"] for r in rows if r["drafter"] == d)
        for d in ("noisy", "noisy_head")
    }
    assert 0 < rate["noisy_head"] < rate["noisy"], rate


def test_the_packed_backend_is_lossless(tiny_models, tmp_path):
    """Target and model drafters on the packed CPU backend (the GPT-2 drafter, which it cannot run, eager):
    si and dsi still give generate()'s tokens, with every kind of drafter, lookahead 1, 2, 4 and adaptive,
    3 ranks (generate runs Hugging Face's own eager forward: only float rounding differs)."""
    groups_ = [dict(g, lookaheads=[0, 1, 2, 4]) for g in groups(tiny_models, 3)]
    rows = run_sweep({"target": tiny_models["target"], "groups": groups_, "runner": "packed"}, 3, tmp_path)
    dsi = [r for r in rows["models"] if r["policy"] == "dsi"]
    # Adaptive k follows the measured latencies, so these counts move with the kernels' speed (47 once they got faster)
    assert sum(r["rejections"] for r in dsi) > 25 and sum(r["aborted"] for r in dsi) > 0
