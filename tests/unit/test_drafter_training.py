"""The SmolLM2 drafter's recipe (inputs/models/train_smollm2_drafter.py) on a tiny Llama: budgets are counts,
so the same data and steps give the same drafter bit for bit, however loaded the machine (issue 26, item 5)."""

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny_families import family_config  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[2] / "inputs" / "models"  # scripts, not a package: loaded by path


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = load("train_smollm2_drafter")


def tiny_target():
    model_cls, config = family_config("llama", vocab=64)
    config.num_hidden_layers = 3
    torch.manual_seed(0)
    return model_cls(config).eval()


def data(n=12):
    """(prompt, answer, soft labels) triples like distill_data's: soft = (top-3 ids, their log-probabilities)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, 64, (5,), generator=gen).tolist()
        answer = torch.randint(3, 64, (6,), generator=gen).tolist()
        ids = [[a, (a + 1) % 64, (a + 2) % 64] for a in answer]
        out.append((prompt, answer, (ids, [[-0.2, -2.0, -3.0]] * len(answer))))
    return out


def trained(steps: int):
    drafter = recipe.make_drafter(tiny_target(), layers=2)
    info = recipe.train(drafter, data(), steps, lr=1e-2, batch=4, max_len=32, log_every=10**6)
    return drafter.state_dict(), info


def test_the_same_counts_give_the_same_drafter_and_more_steps_another():
    first, info = trained(5)
    second, _ = trained(5)
    assert info["steps"] == 5
    assert all(torch.equal(first[k], second[k]) for k in first)
    longer, _ = trained(6)
    assert any(not torch.equal(first[k], longer[k]) for k in first)


def test_distillation_data_is_the_first_answers_in_request_order(monkeypatch):
    """A count of non-empty answers, whatever the time it takes; empty answers skipped, none past the count."""
    distill_data = load("distill_data")
    monkeypatch.setattr(distill_data, "chat_ids", lambda tok, request: [len(request)])
    answer = {"a": [], "bb": [5, 6], "ccc": [7]}  # "a": the model ended at once (an empty answer)

    def generate(model, tok, prompts, new, top_k=0):
        return [answer["abc"[p[0] - 1] * p[0]] for p in prompts], [None] * len(prompts)

    monkeypatch.setattr(distill_data, "generate_batch", generate)
    got, used, _, _ = distill_data.distill_data(None, None, ["a", "bb", "ccc"] * 4, 5, 2, 8, 0)
    assert [a for _, a, _ in got] == [[5, 6], [7], [5, 6], [7], [5, 6]] and used == 8
