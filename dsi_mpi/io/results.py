"""HDF5 results: one file per job, written by rank 0 only, flushed after every prompt. A file already there
(output.overwrite) is replaced only when the new job's first record is in (until then the new one is
NAME.partial), so a job that fails before that leaves the previous results as they were.

With several instances (runtime.instances) rank 0 is the scheduler and writes every instance's records, sent
to it as each prompt completes (dsi_mpi/app/scheduler.py); the same layout, plus where each prompt ran.

Layout (read back by `read_results`; docs/results.md documents every name, and a test
keeps the two in sync):
    /                      attrs: format, config_toml, config_digest, created, and the METADATA keys: backends
                                  (JSON, per rank: the backend and dtype it ran, why it fell back), versions,
                                  git_commit, ranks (JSON: rank, host, role, device, poll_spin_s,
                                  node_threads, node_cores; gpu on CUDA), algorithms, argv,
                                  slurm_job_id, clock_offsets_us, planner (only with "auto"), drafter (JSON: kind,
                                  model, params, layers, head_tokens, vocabulary), scheduler (JSON: policy, instances, layout); merged_from
                                  (merge)
    /prompts/<index:05d>   attrs: id, text, complete (set once every algorithm of the prompt is written), and
                                  WHERE_RAN: instance, instance_ranks, instance_hosts, job_start, started_s, finished_s
        prompt_tokens      int64[n]
        <algorithm>/       attrs: RunRecord.scalars(): lookahead, verifiers, wall_s, ttft_s, drafted, draft_misses, draft_s,
                                  drafter_prefill_s, compared, accepted, rejections, restarts, tasks_sent,
                                  tasks_used, tasks_stale, blocks_unsent, new_tokens
            tokens         int64[new_tokens]      generated token ids
            commit_times   float64[new_tokens]    seconds from the run's start at which each token was final
            tasks          compound[n_tasks]      one row per verification task (records.TASK_DTYPE)
            cancellations  compound[n_cancels]    stale tasks after a rejection (records.CANCEL_DTYPE)
            events         compound[n_events]     per-rank timeline on rank 0's clock (records.EVENT_DTYPE)
            stages         compound[n_stage_rows] per stage of pipelined verifiers' tasks (records.STAGE_DTYPE)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from dsi_mpi.io.config import ConfigError
from dsi_mpi.io.records import EVENT_DTYPE, STAGE_DTYPE, RunRecord

FORMAT = "dsi-mpi results 1"
# Root attributes known only once every rank has started (add_metadata refuses any other name).
METADATA = (
    "backends",
    "versions",
    "git_commit",
    "ranks",
    "algorithms",
    "argv",
    "slurm_job_id",
    "clock_offsets_us",
    "planner",
    "drafter",
    "scheduler",
)
# Prompt attributes saying where and when a prompt ran (absent in files written before them):
# instance (its index), instance_ranks / instance_hosts (world rank and host of each of its ranks, coordinator
# first), job_start (unix time the job started: tells resumed jobs apart), started_s / finished_s (seconds
# from job_start, on the writer's clock, when the prompt was handed out and when its last record arrived).
WHERE_RAN = ("instance", "instance_ranks", "instance_hosts", "job_start", "started_s", "finished_s")


class ResultsWriter:
    def __init__(self, path: str, config, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.completed: set[int] = set()
        self.metadata: dict[str, str] = {}  # what add_metadata wrote, as read_results gives it back
        self.pending: Path | None = None  # the new file's name until its first record is in (see below)
        if self.path.exists() and resume:
            self._reopen(config)
            return
        if self.path.exists() and not overwrite:
            raise ConfigError(
                f"output file {path} exists: set output.overwrite = true, or output.resume = true to "
                "finish it, or choose another output.path"
            )
        # An existing file is replaced only once the new one holds a record: a job that fails before that (a
        # rank that cannot start, a model that does not load) leaves the old results as they were.
        if self.path.exists():
            self.pending = self.path.with_name(self.path.name + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = h5py.File(self.pending or self.path, "w")
        except OSError as err:
            raise ConfigError(f"cannot write output file {path}: {err}") from None
        attrs = self.file.attrs
        attrs["format"] = FORMAT
        attrs["config_toml"] = config.to_toml()
        attrs["config_digest"] = config.digest()
        attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.file.require_group("prompts")
        self.file.flush()

    def _reopen(self, config) -> None:
        """Resume: same config only; complete prompts are kept, a prompt left incomplete is redone."""
        try:
            self.file = h5py.File(self.path, "a")
        except OSError as err:
            raise ConfigError(f"cannot resume output file {self.path}: {err}") from None
        if self.file.attrs.get("format") != FORMAT:
            self.file.close()
            raise ConfigError(f"cannot resume {self.path}: not a dsi-mpi results file")
        if self.file.attrs.get("config_digest") != config.digest():
            self.file.close()
            raise ConfigError(
                f"cannot resume {self.path}: it was written with a different config "
                "(set output.overwrite = true to replace it)"
            )
        for name, group in list(self.file["prompts"].items()):
            if is_complete(group):
                self.completed.add(int(name))
            else:
                del self.file["prompts"][name]
        self.file.flush()

    def add_metadata(self, metadata: dict) -> None:
        """Versions, hosts, ranks: known only once every rank has started."""
        unknown = sorted(set(metadata) - set(METADATA))
        if unknown:
            raise ValueError(f"results metadata {unknown} not in results.METADATA (document them in docs/results.md)")
        for key, value in metadata.items():
            self.metadata[key] = value if isinstance(value, str) else json.dumps(value)
            self.file.attrs[key] = self.metadata[key]
        self.file.flush()

    def _prompt_group(self, prompt, prompt_tokens) -> h5py.Group:
        name = f"prompts/{prompt.index:05d}"
        if name not in self.file:
            group = self.file.create_group(name)
            group.attrs.update(id=prompt.id, text=prompt.text, complete=False)
            group.create_dataset("prompt_tokens", data=np.asarray(prompt_tokens, dtype=np.int64))
        return self.file[name]

    def write_record(self, prompt, prompt_tokens, record: RunRecord) -> None:
        group = self._prompt_group(prompt, prompt_tokens)
        if record.algorithm in group:
            del group[record.algorithm]
        run = group.create_group(record.algorithm)
        run.attrs.update(record.scalars())
        run.create_dataset("tokens", data=np.asarray(record.tokens, dtype=np.int64))
        run.create_dataset("commit_times", data=np.asarray(record.commit_times, dtype=np.float64))
        run.create_dataset("tasks", data=record.task_table())
        run.create_dataset("cancellations", data=record.cancel_table())
        run.create_dataset("events", data=record.event_table())
        run.create_dataset("stages", data=record.stage_table())
        self.file.flush()
        if self.pending is not None:  # the first record is in: the new file takes the old one's name
            os.replace(self.pending, self.path)
            self.pending = None

    def mark_complete(self, prompt, where: dict | None = None) -> None:
        """The prompt's records are all written: record where it ran (WHERE_RAN), then mark it complete."""
        attrs = self.file[f"prompts/{prompt.index:05d}"].attrs
        for key, value in (where or {}).items():
            if key not in WHERE_RAN:
                raise ValueError(f"prompt attribute {key!r} not in results.WHERE_RAN (document it in docs/results.md)")
            attrs[key] = value
        attrs["complete"] = True
        self.file.flush()

    def close(self) -> None:
        """Close the file; one that never got a record does not replace the file it was to replace."""
        self.file.close()
        if self.pending is not None:
            self.pending.unlink(missing_ok=True)


def is_complete(group: h5py.Group) -> bool:
    """A prompt's flag. A job killed between creating a prompt's group and flushing its attributes leaves a
    group without them (seen after a killed verifier on two nodes): that prompt is incomplete, not an error."""
    return bool(group.attrs.get("complete", False))


def read_results(path: str, complete_only: bool = True) -> tuple[dict, list[dict]]:
    """(file attributes, one dict per (prompt, algorithm) record) from a results file."""
    records = []
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a dsi-mpi results file")
        meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for name, group in sorted(f["prompts"].items()):
            if complete_only and not is_complete(group):
                continue
            for algorithm, run in group.items():
                if not isinstance(run, h5py.Group):
                    continue
                rec = {
                    "prompt_index": int(name),
                    "prompt_id": str(group.attrs.get("id", "")),
                    "algorithm": algorithm,
                    "complete": is_complete(group),
                }
                rec.update({k: v.item() if hasattr(v, "item") else v for k, v in run.attrs.items()})
                rec.update(_where_ran(group.attrs))
                rec["tokens"] = run["tokens"][()].tolist()
                rec["commit_times"] = run["commit_times"][()].tolist()
                rec["tasks"] = run["tasks"][()]
                rec["cancellations"] = run["cancellations"][()]
                rec["events"] = run["events"][()] if "events" in run else np.zeros(0, dtype=EVENT_DTYPE)
                rec["stages"] = run["stages"][()] if "stages" in run else np.zeros(0, dtype=STAGE_DTYPE)
                records.append(rec)
    return meta, records


def _where_ran(attrs) -> dict:
    """The WHERE_RAN attributes of a prompt group as plain Python values (lists for the per-rank ones)."""
    out = {}
    for key in WHERE_RAN:
        if key not in attrs:
            continue
        value = attrs[key]
        if key == "instance_hosts":
            out[key] = [x.decode() if isinstance(x, bytes) else str(x) for x in value]
        elif key == "instance_ranks":
            out[key] = [int(x) for x in value]
        else:
            out[key] = value.item() if hasattr(value, "item") else value
    return out
