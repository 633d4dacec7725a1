"""Command line: `python -m dsi_mpi COMMAND ...` (also installed as `dsi-mpi`).

usage:
  mpiexec -n N python -m dsi_mpi [-v|-q] run CONFIG.toml [--set section.key=value ...]   N >= 2
  python -m dsi_mpi report RESULTS.h5 [--json]
  python -m dsi_mpi merge [--overwrite] OUT.h5 SHARD.h5 [SHARD.h5 ...]
  python -m dsi_mpi plot RESULTS.h5 --out DIR   (or: plot {gantt,table,distributions} RESULTS.h5 ... --out ...)
  python -m dsi_mpi simulate --help
  python -m dsi_mpi config-keys            (the README's table of every config key)

-v / -q (repeatable, before the command or after `run`): more or less logging on every rank; by default
rank 0 logs at INFO and the other ranks at WARNING (dsi_mpi/io/log.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from dsi_mpi.io import log

logger = log.get("cli")
VERBOSITY = {"-v": 1, "--verbose": 1, "-vv": 2, "-q": -1, "--quiet": -1, "-qq": -2}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dsi-mpi run", usage="mpiexec -n N python -m dsi_mpi run CONFIG.toml [--set section.key=value ...]"
    )
    parser.add_argument("config", help="TOML run configuration")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="section.key=value",
        help="override one config key (repeatable); the value is read as TOML",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging (repeatable)")
    args = parser.parse_args(argv)
    if args.verbose or args.quiet:
        log.setup(log._state["verbosity"] + args.verbose - args.quiet)
    from dsi_mpi.io.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        if log.launcher_rank() == 0:  # one line for the job, not one per rank
            logger.error("%s", err)
        return 2
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.models.threads))
    from dsi_mpi.app.job import run_job

    return run_job(cfg)


EXIT_READER_GONE = 141  # as a shell reports a tool stopped by SIGPIPE (128 + 13)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbosity = 0
    while argv and argv[0] in VERBOSITY:
        verbosity += VERBOSITY[argv.pop(0)]
    log.setup(verbosity)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    try:
        status = _read_command(command, rest)
        sys.stdout.flush()  # inside the try: a reader gone before the last flush is the same case
    except BrokenPipeError:
        # The reader of our stdout went away (`report X.h5 | head`): exit quietly, as a command-line tool does.
        # Python would flush stdout again at exit and complain, so it is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_READER_GONE
    return status


def _read_command(command: str, rest: list[str]) -> int:
    """The commands that read results or print tables (everything but `run`)."""
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
        from dsi_mpi.timemodel.simulator import main as simulate_main

        return simulate_main(rest)
    if command == "config-keys":
        from dsi_mpi.io.config import keys_markdown

        print(keys_markdown())
        return 0
    logger.error(f"unknown command {command!r}\n\n{__doc__.strip()}")
    return 2
