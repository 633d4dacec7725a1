"""analysis/lean_si.py, the yardstick for what the coordinator adds: its si writes nonsi's tokens (it stops with an
error if not), its verifier's throwaway forwards while it waits (--keep-warm) included, and it prints the measured
table and the time model's bound at the bare costs."""

import re

from helpers import write_job


def test_lean_si_matches_nonsi_and_prints_the_bound(tiny_models, run_mpi, tmp_path):
    config = write_job(tmp_path, tiny_models)
    args = ["-m", "analysis.lean_si", config, "--lookahead", "1", "3", "--rounds", "1", "--keep-warm"]
    proc = run_mpi([*args, "--set", "decoding.max_new_tokens=12"], ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\| (nonsi|si k=\d) \| ([\d.]+) \|", proc.stdout, re.M)
    assert [name for name, _ in rows] == ["nonsi", "si k=1", "si k=3"]
    assert all(float(ms) > 0 for _, ms in rows)
    bound = re.search(r"si ([\d.]+)x nonsi at k = (\d); dsi ([\d.]+)x nonsi at k = (\d)", proc.stdout)
    assert bound, proc.stdout
    assert float(bound[1]) > 0 and float(bound[3]) > 0 and {bound[2], bound[4]} <= {"1", "3"}
