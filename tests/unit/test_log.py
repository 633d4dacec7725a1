"""Rank-aware logging: the rank from mpiexec's or srun's variables, rank 0 at INFO, others at WARNING, -v/-q."""

import logging

import pytest

from dsi_mpi.io import log


@pytest.mark.parametrize("variable", log.RANK_VARIABLES)
def test_rank_from_mpiexec_and_srun(monkeypatch, variable):
    for name in log.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert log.launcher_rank() == 0
    monkeypatch.setenv(variable, "3")
    assert log.launcher_rank() == 3


def test_levels_and_line_format(capsys):
    try:
        assert log.setup(0, rank=0).level == logging.INFO
        assert log.setup(0, rank=2).level == logging.WARNING
        assert log.setup(1, rank=2).level == logging.INFO
        assert log.setup(-1, rank=0).level == logging.WARNING
        log.setup(0, rank=2)
        log.get("x").info("hidden")
        log.get("x").error("broken")
        err = capsys.readouterr().err
        assert "hidden" not in err and err.startswith("dsi-mpi: error on rank 2 (") and err.endswith("): broken\n")
    finally:
        log.setup(0)


def test_cli_flags(capsys):
    from dsi_mpi import cli

    try:
        assert cli.main(["-q", "config-keys"]) == 0 and log.get().level == logging.WARNING
        assert cli.main(["nonsense"]) == 2
        assert "unknown command 'nonsense'" in capsys.readouterr().err
    finally:
        log.setup(0)
