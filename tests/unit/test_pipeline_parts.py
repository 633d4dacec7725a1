"""The parts of pipelined verifiers that need no MPI: the balanced cut, the rank layout, the coordinator's
picture of what a group's caches will hold, and stages computing exactly what the whole model computes."""

import pytest
import torch

from dsi_mpi.backends.split import SplitError, balanced_split
from dsi_mpi.decoding.slots import VerifierSlots, plan_layout
from dsi_mpi.io.config import ConfigError
from dsi_mpi.mpi import protocol


def test_the_cut_minimises_the_largest_stage_and_counts_embedding_and_head():
    assert balanced_split([10] * 6, 0, 0, 3) == [(0, 2), (2, 4), (4, 6)]
    # SmolLM2-like: a head/embedding worth 8 layers each end
    cut = balanced_split([1] * 30, 8, 8, 4)
    sizes = [b - a + (8 if a == 0 else 0) + (8 if b == 30 else 0) for a, b in cut]
    assert max(sizes) == 12 and cut[0][0] == 0 and cut[-1][1] == 30  # 46 / 4 rounded up
    assert all(b > a for a, b in cut)
    with pytest.raises(SplitError, match="only 3 decoder layers"):
        balanced_split([1, 1, 1], 0, 0, 4)


def test_layout_keeps_groups_on_one_node_and_refuses_ranks_that_do_not_divide():
    nodes = [0] * 8 + [8] * 8  # two nodes of 8 ranks; rank 0 on the first
    assert plan_layout(nodes[:8], 1, 0) == [(r,) for r in range(1, 8)]
    assert plan_layout(nodes[:15], 7, 0) == [tuple(range(1, 8)), tuple(range(8, 15))]
    assert plan_layout(nodes[:8], 2, 3) == [(1, 2), (3, 4), (5, 6), (7,)]
    # the first node has 7 free ranks: a 4-stage group there, the next two on the second node
    layout = plan_layout(nodes, 4, 3)
    assert (1, 2, 3, 4) in layout and (8, 9, 10, 11) in layout and (12, 13, 14, 15) in layout
    with pytest.raises(ConfigError, match="does not divide the 3 verifier ranks"):
        plan_layout([0] * 4, 2, 0)
    with pytest.raises(ConfigError, match="need 6 verifier ranks"):
        plan_layout([0] * 4, 3, 2)


class _Task:
    def __init__(self, task_id, epoch, sequence, verifier=1):
        self.task_id, self.epoch, self.sequence, self.verifier = task_id, epoch, sequence, verifier


def _reply(statuses, kind=protocol.ABORTED):
    records = [x for i, status in enumerate(statuses) for x in (i + 1, status, 0, 1)]
    fields = dict(task_id=0, epoch=0, cache_len=0, start_us=0, end_us=1, n_stages=len(statuses))
    if kind == protocol.RESULT:
        return protocol.decode(protocol.encode(kind, [7] + records, computed=1, reused=0, **fields), kind, 3)
    return protocol.decode(protocol.encode(kind, records, **fields), kind, 3)


def test_base_behind_tasks_in_flight_is_what_every_stage_is_sure_to_hold():
    slots = VerifierSlots([(1, 2, 3), 4])
    assert slots.capacity([1, 4]) == 4 and slots.free([1, 4]) == {1: 3, 4: 1}
    seq = list(range(20))
    assert slots.base_for(1, seq, 0) == 0  # nothing known yet
    t1 = _Task(0, 0, seq[:12])
    slots.sent(t1, 5)
    # same epoch: a stage that does not compute t1 drops the next task too, so t1's sequence counts
    assert slots.base_for(1, seq[:16], 0) == 12
    # after a rejection t1 may be abandoned and rolled back to its base anywhere: only that is sure
    assert slots.base_for(1, seq[:16], 1) == 0  # and the caches' known content (nothing yet) bounds it
    done = [protocol.STAGE_COMPUTED] * 3
    assert "went to ranks" in slots.replied(t1, 2, _reply(done, protocol.RESULT))
    assert slots.replied(t1, 3, _reply(done, protocol.RESULT)) is None  # replies come from the last stage
    assert slots.base_for(1, seq[:16], 1) == 12
    t2 = _Task(1, 1, seq[:16])
    slots.sent(t2, 12)
    # computed on the first stage, abandoned mid-forward on the second, dropped unseen on the third
    mixed = [protocol.STAGE_COMPUTED, protocol.STAGE_ABORTED, protocol.STAGE_DROPPED]
    assert slots.replied(t2, 3, _reply(mixed)) is None
    assert slots.slots[1].views == [seq[:16], seq[:12], seq[:12]]
    assert slots.base_for(1, seq[:18], 2) == 12 and slots.busy_ranks() == []


SPLITTABLE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


@pytest.mark.parametrize("family", SPLITTABLE_FAMILIES)
def test_stages_compute_exactly_the_whole_model(family, tmp_path):
    """Chunked like verification tasks (a prompt longer than the sliding window, a block, one token), the
    last stage's logits equal the whole model's bit for bit, for 2 stages, each loading only its tensors."""
    from tiny_families import build_family
    from tiny_models import _save, byte_tokenizer

    from dsi_mpi.backends.hf import HFRunner
    from dsi_mpi.backends.stage import HFStageRunner, build_stage_model

    target, _ = build_family(family)
    folder = _save(target, byte_tokenizer(), tmp_path / family)
    whole = HFRunner(target)
    stages = []
    for i in range(2):
        model, layers = build_stage_model(folder, torch.float32, 2, i)
        stages.append(HFStageRunner(model, i == 0, i == 1, layers))
    assert sum(p.numel() for s in stages for p in s.model.base_model.layers.parameters()) == sum(
        p.numel() for p in target.base_model.layers.parameters()
    )
    for chunk in ([5, 9, 17, 33, 65, 129, 3, 7, 11, 13], [40, 41, 42], [99]):
        expected = whole.forward(chunk, len(chunk))
        hidden = None
        for stage in stages:
            stage.incoming = hidden
            out = stage.forward(chunk, len(chunk))
            hidden = None if stage.last else out.float().numpy()
        assert torch.equal(out, expected), family
    for stage in stages:  # rolling back works per stage
        stage.crop(10)
        assert stage.cache.get_seq_length() == 10


def test_architectures_that_cannot_be_split_are_refused_on_the_config():
    from transformers import GPT2Config, LlamaConfig

    from dsi_mpi.backends.checks import check_splittable

    with pytest.raises(ConfigError, match=r"\(gpt2\) cannot be split"):
        check_splittable(GPT2Config(), 2, "x")
    with pytest.raises(ConfigError, match="only 2 decoder layers"):
        check_splittable(LlamaConfig(num_hidden_layers=2), 3, "x")
