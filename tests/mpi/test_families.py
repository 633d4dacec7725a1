"""Every common decoder architecture is lossless: greedy SI and DSI equal Hugging Face's own greedy
`generate`, token for token, for Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3, GPTBigCode,
GPT-NeoX, OPT, Falcon and GPT-2 (tests/tiny_families.py: sliding windows shorter than the text, Gemma's
soft-capping and local/global layers), 3 ranks, lookahead 1 and 4, a decent drafter of the same family
and a bad one of another family. One mpiexec runs all families; the sweep proves rejections happened."""

import json

import pytest
from helpers import ROOT
from tiny_families import FAMILIES, WINDOW, build_families

# Families this backend refuses at load in some supported transformers release: {family: reason}. None now.
REFUSED: dict[str, str] = {}
NEW_TOKENS = 16  # prompt + 16 tokens is at least 3 windows long: the sliding window moves in every run


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return build_families(tmp_path_factory.mktemp("families"))


def test_every_family_equals_hf_generate(families, run_mpi, tmp_path):
    (tmp_path / "families.json").write_text(json.dumps(families))
    out = tmp_path / "sweep.json"
    proc = run_mpi(
        [str(ROOT / "tests/mpi/families_sweep.py"), str(tmp_path / "families.json"), str(out), "1,4", str(NEW_TOKENS)],
        ranks=3,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    errors = {r["family"]: r["error"] for r in rows if "error" in r}
    assert errors.keys() == REFUSED.keys(), errors
    for family, error in errors.items():
        assert "\n" not in error and family in error.lower().replace("-", "_"), error
    runs = [r for r in rows if "error" not in r]
    wrong = [(r["family"], r["drafter"], r["k"], r["policy"], r["prompt"]) for r in runs if not r["ok"]]
    assert not wrong, f"outputs differ from generate(): {wrong[:10]}"
    for family in FAMILIES:
        if family in REFUSED:
            continue
        mine = [r for r in runs if r["family"] == family]
        assert len(mine) == 2 * 2 * 2 * 2, family  # drafters x lookaheads x policies x prompts
        assert max(len(r["ref"]) for r in mine) >= 2 * WINDOW, family  # the window really moved
        for drafter in ("noisy", "other"):
            for policy in ("si", "dsi"):
                some = [r for r in mine if r["drafter"] == drafter and r["policy"] == policy]
                assert sum(r["rejections"] for r in some) > 0, (family, drafter, policy)
        rate = {
            d: sum(r["accepted"] for r in mine if r["drafter"] == d)
            / sum(r["compared"] for r in mine if r["drafter"] == d)
            for d in ("noisy", "other")
        }
        assert 0.05 < rate["noisy"] < 0.98 and rate["other"] < 0.2, (family, rate)
        assert sum(r["stale"] for r in mine if r["policy"] == "dsi") > 0, (family, "DSI never produced stale work")
    # forwards abandoned between layers leave layers of different lengths: the rollback must cut each
    assert sum(r["aborted"] for r in runs) > 0, "no forward was ever cancelled"
