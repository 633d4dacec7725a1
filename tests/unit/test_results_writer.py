"""A results file already there is replaced only once the new job's first record is in: a job that fails
before that (a rank that cannot start, a model that does not load, a crash in the first prompt) leaves the
previous results as they were."""

import h5py

from dsi_mpi.io.config import validate
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import RunRecord
from dsi_mpi.io.results import ResultsWriter, read_results

PROMPT = Prompt(0, "p0", "text")


def write_one(path, tokens: list[int], close: bool = True) -> ResultsWriter:
    writer = ResultsWriter(str(path), validate({}), overwrite=True)
    writer.add_metadata({"git_commit": "new"})
    writer.write_record(PROMPT, [1, 2], RunRecord("nonsi", 0, "p0", tokens=tokens, commit_times=[0.1] * len(tokens)))
    writer.mark_complete(PROMPT)
    if close:
        writer.close()
    return writer


def test_a_job_that_fails_before_its_first_record_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.h5"
    write_one(path, [7, 8, 9])
    started = ResultsWriter(str(path), validate({}), overwrite=True)  # the new job starts ...
    started.add_metadata({"git_commit": "failed"})
    assert read_results(str(path))[1][0]["tokens"] == [7, 8, 9]  # ... and dies here (an MPI Abort: no close)
    started.close()  # or ends in an orderly way without a record
    assert read_results(str(path))[1][0]["tokens"] == [7, 8, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_the_first_record_replaces_the_old_file(tmp_path):
    path = tmp_path / "out.h5"
    (path).write_text("an older file")
    writer = write_one(path, [4, 5], close=False)
    meta, records = read_results(str(path))  # replaced at the first record, while the job goes on
    assert records[0]["tokens"] == [4, 5] and meta["git_commit"] == "new"
    assert writer.metadata == {"git_commit": "new"}
    writer.write_record(PROMPT, [1, 2], RunRecord("si", 0, "p0", tokens=[4, 5], commit_times=[0.1, 0.2]))
    writer.close()
    with h5py.File(path) as f:
        assert set(f["prompts/00000"]) == {"nonsi", "si", "prompt_tokens"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
