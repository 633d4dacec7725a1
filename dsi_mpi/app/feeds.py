"""Where a coordinator's prompts come from and where its records go: a feed.

With runtime.instances = 1, rank 0 coordinates the only instance and writes its own records (`LocalFeed`).
With G >= 2 instances, world rank 0 is the scheduler (dsi_mpi/app/scheduler.py) and each coordinator's feed
asks it for prompts and sends it the records of each finished prompt (`RemoteFeed`), in the scheduler's
messages of dsi_mpi/mpi/protocol.py. Both feeds show the progress line and end with the summary table.
"""

from __future__ import annotations

import sys
import time
from collections import deque

from dsi_mpi.io import log
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.reporting.throughput import throughput

logger = log.get("feeds")

LOCAL_POLICY = "one instance: its coordinator (rank 0) runs the prompts in prompt-file order and writes them itself"


def prompts_to_do(session) -> deque:
    """The session's prompts that its results file does not hold complete yet (all of them unless resuming)."""
    todo = deque(p for p in session.prompts if p.index not in session.writer.completed)
    if len(todo) < len(session.prompts):
        logger.info(f"resuming: {len(session.prompts) - len(todo)} prompts already complete")
    return todo


class LocalFeed:
    """One instance: rank 0's prompts in file order, its records written by itself as each algorithm finishes."""

    def __init__(self, session, ranks: list[int], hosts: list[str]):
        self.session, self.writer = session, session.writer
        self.todo = prompts_to_do(session)
        self.where = {"instance": 0, "instance_ranks": ranks, "instance_hosts": hosts}
        self.clock = JobClock()
        self.progress = Progress(len(self.todo))
        self.records: list[dict] = []

    def add_metadata(self, metadata: dict) -> None:
        self.writer.add_metadata(metadata)

    def next_prompt(self):
        if not self.todo:
            return None
        prompt = self.todo.popleft()
        self.started = self.clock.now()
        return prompt, self.session.prompt_tokens[prompt.index]

    def record(self, prompt, tokens, record) -> None:
        self.writer.write_record(prompt, tokens, record)

    def finish(self, prompt, records) -> None:
        where = self.where | self.clock.span(self.started)
        self.writer.mark_complete(prompt, where)
        self.records += [r.as_dict() | where for r in records]
        self.progress.update(self.records)

    def close(self, completed: bool) -> None:
        self.writer.close()
        if completed:
            print_summary(self.records, self.session.cfg.output.path, self.writer.metadata)


class RemoteFeed:
    """Several instances, on an instance's coordinator: prompts from the scheduler, records back to it per prompt."""

    def __init__(self, queue, poller, timeout_s: float):
        self.channel, self.timeout_s = Channel(queue, poller), timeout_s
        self.metadata: dict = {}
        self.asked = False

    def setup(self) -> dict:
        """eos ids and the prompts for warm-up and calibration, sent once by the scheduler."""
        _, msg = self.channel.receive(
            "set-up from the scheduler (world rank 0)", source=0, tag=protocol.SETUP, timeout_s=self.timeout_s
        )
        setup = protocol.unpack_json(msg)
        return {"eos_ids": tuple(setup["eos_ids"]), "prompts": [(Prompt(*p[:3]), p[3]) for p in setup["prompts"]]}

    def add_metadata(self, metadata: dict) -> None:
        self.metadata.update(metadata)

    def _ask(self, done) -> None:
        self.channel.send_json(0, protocol.REQUEST, {"done": done, "metadata": self.metadata})
        self.metadata, self.asked = {}, True

    def next_prompt(self):
        if not self.asked:
            self._ask(None)
        self.asked = False
        _, msg = self.channel.receive(
            "the next prompt from the scheduler", source=0, tag=protocol.ASSIGN, timeout_s=self.timeout_s
        )
        item = protocol.unpack_json(msg)
        return None if item is None else (Prompt(*item[:3]), item[3])

    def record(self, prompt, tokens, record) -> None:
        pass  # sent together when the prompt is finished

    def finish(self, prompt, records: list[RunRecord]) -> None:
        self._ask([prompt.index, [r.to_message() for r in records]])

    def close(self, completed: bool) -> None:
        self.channel.flush("records to reach the scheduler")


class JobClock:
    """The writer's clock for prompt spans: seconds from the job's start, plus the start's unix time."""

    def __init__(self):
        self.job_start, self.t0 = time.time(), time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def span(self, started: float) -> dict:
        return {"job_start": self.job_start, "started_s": started, "finished_s": self.now()}


class Progress:
    """One line per finished prompt on a terminal: prompts done, tokens/s overall and per instance, ETA."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()

    def update(self, records: list[dict]) -> None:
        self.done += 1
        if not self.tty:
            return
        t = throughput(records)
        rates = [inst["tokens_per_s"] for inst in t["instances"].values()]
        per = f" ({len(rates)} instances: {min(rates):.1f}-{max(rates):.1f} tok/s each)" if len(rates) > 1 else ""
        eta = t["wall_s"] / self.done * (self.total - self.done)
        print(
            f"\rdsi-mpi: prompt {self.done}/{self.total}  {t['tokens_per_s']:.1f} tok/s{per}  ETA {eta:.0f} s",
            end="\n" if self.done == self.total else "",
            file=sys.stderr,
            flush=True,
        )


def print_summary(records: list[dict], path: str, meta: dict) -> None:
    from dsi_mpi.reporting.report import summary_table, throughput_lines

    print(summary_table(records, meta), flush=True)
    for line in throughput_lines(records):
        print(line, flush=True)
    print(f"results: {path}", flush=True)
