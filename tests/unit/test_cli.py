"""The command line as a shell user meets it."""

import subprocess
import sys

from dsi_mpi.io.config import validate
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import RunRecord
from dsi_mpi.io.results import ResultsWriter


def test_report_into_a_reader_that_goes_away_exits_quietly(tmp_path):
    """`python -m dsi_mpi report X.h5 | head`: head leaves after its lines, and the report stops without a
    BrokenPipeError traceback (here the reader has gone before the first line: the same case, surely hit)."""
    path = tmp_path / "r.h5"
    writer = ResultsWriter(str(path), validate({}))
    for i in range(40):
        record = RunRecord("nonsi", i, f"p{i}", tokens=[1, 2, 3], commit_times=[0.1, 0.2, 0.3], wall_s=0.3)
        writer.write_record(Prompt(i, f"p{i}", "text"), [1, 2], record)
        writer.mark_complete(Prompt(i, f"p{i}", "text"))
    writer.close()
    command = [sys.executable, "-m", "dsi_mpi", "report", str(path), "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err
