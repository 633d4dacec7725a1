"""`dsi-mpi merge OUT.h5 SHARD.h5 [SHARD.h5 ...]`: combine shard results (e.g. a SLURM array) into one file.

usage: python -m dsi_mpi merge [--overwrite] OUT.h5 SHARD.h5 [SHARD.h5 ...]

Shards of one experiment share a config digest (the digest ignores output.* and the shard keys), and
prompt indices are global, so merging is a copy of every complete prompt group into one file of the
same layout. Everything is checked before anything is written, and the output appears only when it
is whole (written to a temporary name, then renamed), so a refused or failed merge leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from dsi_mpi.io.results import FORMAT

USAGE = "python -m dsi_mpi merge [--overwrite] OUT.h5 SHARD.h5 [SHARD.h5 ...]"


class MergeError(ValueError):
    """Why the inputs cannot be merged, in one line that names the file."""


@dataclass
class MergeSummary:
    out_path: str
    prompts: int = 0  # complete prompt groups copied
    skipped: dict[str, int] = field(default_factory=dict)  # input path -> incomplete prompts left out

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _open(path: str) -> h5py.File:
    if not Path(path).is_file():
        raise MergeError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise MergeError(f"{path}: not a dsi-mpi results file (cannot open as HDF5: {err})") from None
    if f.attrs.get("format") != FORMAT or "prompts" not in f:
        f.close()
        raise MergeError(f"{path}: not a dsi-mpi results file (format attribute is not {FORMAT!r})")
    return f


def _plan(in_paths: list[str], files: list[h5py.File]) -> tuple[list[tuple[h5py.File, str]], dict[str, int]]:
    """Which (file, prompt group) to copy; refuse mixed configs and prompts complete in two inputs."""
    digest = files[0].attrs.get("config_digest")
    owner: dict[str, str] = {}
    copies, skipped = [], {}
    for path, f in zip(in_paths, files):
        if f.attrs.get("config_digest") != digest:
            raise MergeError(
                f"{path}: config_digest {f.attrs.get('config_digest')} differs from "
                f"{digest} of {in_paths[0]} (a different experiment)"
            )
        skipped[path] = 0
        for name, group in f["prompts"].items():
            if not group.attrs.get("complete", False):
                skipped[path] += 1
                continue
            if name in owner:
                raise MergeError(f"{path}: prompt {int(name)} is also complete in {owner[name]} (overlapping shards)")
            owner[name] = path
            copies.append((f, name))
    return copies, skipped


def merge_results(out_path: str, in_paths: list[str], overwrite: bool = False) -> MergeSummary:
    """Merge results files into `out_path`; raise MergeError (before writing anything) on any conflict."""
    in_paths = [str(p) for p in in_paths]
    out_path = str(out_path)
    if not in_paths:
        raise MergeError("no input files given")
    resolved = [Path(p).resolve() for p in in_paths]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise MergeError(f"{in_paths[i]}: listed twice")
    if Path(out_path).resolve() in resolved:
        raise MergeError(f"{out_path}: the output is also an input")
    if Path(out_path).exists() and not overwrite:
        raise MergeError(f"{out_path}: output exists (use --overwrite to replace it)")
    files: list[h5py.File] = []
    try:
        for path in in_paths:
            files.append(_open(path))
        copies, skipped = _plan(in_paths, files)
        _write(out_path, files[0], in_paths, copies)
    finally:
        for f in files:
            f.close()
    return MergeSummary(out_path, len(copies), skipped)


def _write(out_path: str, first: h5py.File, in_paths: list[str], copies) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with h5py.File(partial, "w") as dst:
            for key, value in first.attrs.items():
                dst.attrs[key] = value
            dst.attrs["merged_from"] = json.dumps(in_paths)
            prompts = dst.create_group("prompts")
            for src, name in sorted(copies, key=lambda c: c[1]):
                src.copy(src["prompts"][name], prompts, name=name)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsi-mpi merge", usage=USAGE, description=__doc__.split("\n")[0])
    parser.add_argument("out", metavar="OUT.h5", help="merged results file to write")
    parser.add_argument("inputs", metavar="SHARD.h5", nargs="+", help="results files of one config")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = merge_results(args.out, args.inputs, args.overwrite)
    except (MergeError, OSError) as err:
        print(f"dsi-mpi merge: error: {err}", file=sys.stderr)
        return 2
    print(f"merged {summary.prompts} complete prompts from {len(args.inputs)} files into {summary.out_path}")
    if summary.skipped_total:
        where = ", ".join(f"{path}: {n}" for path, n in summary.skipped.items() if n)
        print(f"skipped {summary.skipped_total} incomplete prompts ({where})")
    return 0
