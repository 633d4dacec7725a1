"""Many instances without MPI: the placement rule, the throughput figures, and placement in the results file."""

import json

import pytest

from dsi_mpi.io.config import ConfigError, validate
from dsi_mpi.io.merge import merge_results
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import RunRecord
from dsi_mpi.io.results import ResultsWriter, read_results
from dsi_mpi.mpi.instances import assign, check_size, instance_layout
from dsi_mpi.reporting.report import throughput_lines
from dsi_mpi.reporting.throughput import ideal_wall_s, list_schedule_wall_s, throughput


def test_instances_stay_within_their_node():
    # rank 0 (scheduler) and ranks 1-4 on node 0, ranks 5-8 on node 5: two instances of 2 per node
    nodes = [0] * 5 + [5] * 4
    instances, spanning, split = assign(nodes, 4)
    assert instances == [[1, 2], [3, 4], [5, 6], [7, 8]] and spanning == [] and split == []


def test_leftover_ranks_pool_into_a_spanning_instance():
    nodes = [0, 0, 0, 3, 3, 3, 3]  # node 0: ranks 1, 2; node 3: ranks 3-6; instances of 3
    instances, spanning, _ = assign(nodes, 2)
    assert instances == [[1, 2, 6], [3, 4, 5]] and spanning == [0]  # node 3 keeps a whole instance


def test_a_spanning_instance_keeps_its_pipeline_group_on_one_node():
    nodes = [0, 0, 0, 3, 3, 3, 3]  # instances of a drafter + one 2-stage group: rank 6 drafts for ranks 1, 2
    assert assign(nodes, 2, stages=2) == ([[3, 4, 5], [6, 1, 2]], [1], [])
    assert instance_layout(3, 2, 1) == [(1, 2)] and instance_layout(6, 2, 2) == [(1, 2), (3, 4), (5,)]


@pytest.mark.parametrize("per_node", [[9] + [8] * 6 + [4], [9, 8, 8, 8, 7, 7, 7, 7], [8, 8, 8, 8, 8, 7, 7, 7]])
def test_whole_instances_stop_where_groups_would_lose_their_node(per_node):
    """60 ranks + the scheduler on 8 nodes of 8 GPUs (slurm/instances.sbatch's example), 12 instances of a
    drafter + a 4-stage group: a whole instance on every node would leave 3 ranks there, where no group fits,
    so whole instances stop where the groups still to place need the room left, and every group is on one node."""
    nodes = [n for n, count in enumerate(per_node) for _ in range(count)]
    instances, spanning, split = assign(nodes, 12, stages=4)
    assert split == [] and sorted(r for ranks in instances for r in ranks) == list(range(1, 61))
    assert all(len({nodes[r] for r in ranks[1:]}) == 1 for ranks in instances)  # each group on one node
    assert 3 <= 12 - len(spanning) <= 4  # whole instances where they leave the groups room
    assert [ranks[0] for ranks in instances] == sorted(ranks[0] for ranks in instances)


def test_a_group_spans_nodes_only_where_no_node_has_room():
    nodes = [0] * 5 + [5] * 3 + [8] * 3  # ranks 1-4 on node 0, 5-7 and 8-10 on two nodes of 3; groups of 4
    assert assign(nodes, 2, stages=4) == ([[9, 1, 2, 3, 4], [10, 5, 6, 7, 8]], [0, 1], [[5, 6, 7, 8]])


@pytest.mark.parametrize("size, instances", [(4, 2), (5, 4), (8, 3)])
def test_rank_count_must_make_whole_instances(size, instances):
    with pytest.raises(ConfigError, match="needs 1 \\+"):
        check_size(size, instances)


NOT_DIVIDING = (
    "5 ranks make 1 scheduler + 2 instances of 2 ranks (a drafter and 1 verifier rank), which do not divide into "
    "groups of 2 stages: launch 1 + 2 x (1 + a multiple of 2) ranks (e.g. 7)"
)
TOO_FEW = "runtime.pipeline_groups = 2 groups of 2 stages per instance need 4: launch at least 1 + 2 x 5 = 11"


@pytest.mark.parametrize("size, groups, words", [(5, 0, NOT_DIVIDING), (7, 2, TOO_FEW)])
def test_pipeline_groups_must_fit_every_instance(size, groups, words):
    """2 instances of 2-stage groups: the one-line error names the ranks, the instances and what would fit."""
    with pytest.raises(ConfigError) as err:
        check_size(size, 2, 2, groups)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert check_size(1 + 2 * (1 + 2 * max(groups, 1)), 2, 2, groups) == 1 + 2 * max(groups, 1)


def _rec(index, instance, start, end, n_tokens, job=1.0, algorithm="dsi"):
    return {
        "prompt_index": index,
        "algorithm": algorithm,
        "tokens": [1] * n_tokens,
        "instance": instance,
        "job_start": job,
        "started_s": start,
        "finished_s": end,
    }


def test_throughput_overall_and_per_instance():
    records = [_rec(0, 0, 0.0, 2.0, 20), _rec(0, 0, 0.0, 2.0, 20, algorithm="si"), _rec(1, 1, 0.5, 1.5, 10)]
    t = throughput(records)
    assert t["wall_s"] == 2.0 and t["tokens"] == 50 and t["tokens_per_s"] == 25.0
    assert t["instances"][0]["tokens_per_s"] == 20.0 and t["instances"][1]["tokens_per_s"] == 5.0
    assert t["instances"][1]["utilisation"] == 0.5 and t["instances"][0]["prompts"] == 1
    resumed = records + [_rec(2, 0, 10.0, 14.0, 8, job=2.0)]  # a second job: its own wall time counts
    assert throughput(resumed)["wall_s"] == 6.0
    assert ideal_wall_s(records, 2) == pytest.approx(3.0 / 2 + 2.0)


def test_a_length_blind_schedule_hands_prompts_out_in_order():
    """Durations 3, 1, 1, 1, 2 on 2 instances: the 2 comes last, when both are busy until 3 (ends at 5); only
    knowing the lengths (longest first) would reach 4."""
    records, t = [], 0.0
    for index, span in enumerate((3.0, 1.0, 1.0, 1.0, 2.0)):
        records.append(_rec(index, 0, t, t + span, 1))
        t += span
    assert list_schedule_wall_s(records, 2) == pytest.approx(5.0)
    assert list_schedule_wall_s(records, 1) == pytest.approx(8.0)
    assert throughput([{"prompt_index": 0, "tokens": [1]}]) is None  # older files: no placement, no figure


def test_placement_is_written_read_merged_and_reported(tmp_path):
    cfg = validate({})
    writer = ResultsWriter(str(tmp_path / "a.h5"), cfg)
    for index, instance in ((0, 0), (1, 1)):
        prompt = Prompt(index, f"p{index}", "text")
        writer.write_record(
            prompt, [5, 6], RunRecord("dsi", index, prompt.id, tokens=[1, 2, 3], commit_times=[0.1] * 3)
        )
        where = {
            "instance": instance,
            "instance_ranks": [1 + 2 * instance, 2 + 2 * instance],
            "instance_hosts": ["n1", "n2"],
        }
        writer.mark_complete(prompt, where | {"job_start": 7.0, "started_s": 0.0, "finished_s": 1.0 + index})
    writer.close()
    merged = tmp_path / "m.h5"
    merge_results(str(merged), [str(tmp_path / "a.h5")])
    _, records = read_results(str(merged))
    assert [(r["instance"], r["instance_ranks"], r["instance_hosts"]) for r in records] == [
        (0, [1, 2], ["n1", "n2"]),
        (1, [3, 4], ["n1", "n2"]),
    ]
    json.dumps(records[0]["instance_ranks"])  # plain values, as report --json prints them
    lines = throughput_lines(records)
    assert lines[0].startswith("throughput: 3.0 generated tok/s") and "instance 1: 1.5 tok/s" in lines[2]


def test_a_job_resumes_whatever_number_of_instances_or_stages_wrote_it():
    assert validate({"runtime": {"instances": 4}}).digest() == validate({}).digest()
    pipelined = {"runtime": {"instances": 2, "pipeline_stages": 4, "pipeline_groups": 2}}
    assert validate(pipelined).digest() == validate({}).digest()  # nor how the target is cut into stages
    assert validate({"emulation": {"min_new_tokens": 4}}).digest() != validate({}).digest()
    with pytest.raises(ConfigError, match="runtime.instances must be >= 1"):
        validate({"runtime": {"instances": 0}})
