"""Command line: `python -m dsi_mpi COMMAND ...` (also installed as `dsi-mpi`).

usage:
  mpiexec -n N python -m dsi_mpi run CONFIG.toml [--set section.key=value ...]   N >= 2
  python -m dsi_mpi report RESULTS.h5 [--json]
  python -m dsi_mpi merge [--overwrite] OUT.h5 SHARD.h5 [SHARD.h5 ...]
  python -m dsi_mpi plot RESULTS.h5 --out DIR   (or: plot {gantt,table,distributions} RESULTS.h5 ... --out ...)
  python -m dsi_mpi simulate --help
  python -m dsi_mpi config-keys            (the README's table of every config key)
"""
from __future__ import annotations

import argparse
import os
import sys


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsi-mpi run",
                                     usage="mpiexec -n N python -m dsi_mpi run CONFIG.toml [--set section.key=value ...]")
    parser.add_argument("config", help="TOML run configuration")
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value",
                        help="override one config key (repeatable); the value is read as TOML")
    args = parser.parse_args(argv)
    from dsi_mpi.io.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        if os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) in ("0", ""):
            print(f"dsi-mpi: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg["models"]["threads"]))
    from dsi_mpi.job import run_job
    return run_job(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command == "report":
        from dsi_mpi.reporting.report import main as report_main
        return report_main(rest)
    if command == "merge":
        from dsi_mpi.io.merge import main as merge_main
        return merge_main(rest)
    if command == "plot":
        from dsi_mpi.reporting.plots import main as plot_main
        return plot_main(rest)
    if command == "simulate":
        from dsi_mpi.simulator import main as simulate_main
        return simulate_main(rest)
    if command == "config-keys":
        from dsi_mpi.io.config import keys_markdown
        print(keys_markdown())
        return 0
    print(f"dsi-mpi: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2
