"""Prompts in, records out: the job's one prompt queue and its one writer.

G = runtime.instances. With G = 1, rank 0 coordinates the only instance and writes its own records as
before (`LocalFeed`). With G >= 2, world rank 0 is a dedicated scheduler (`Scheduler`) that holds no
model: it hands out prompts and writes every record. Why not let instance 0's coordinator do it: a
coordinator is busy drafting and only returns to its own loop between prompts, so a request from another
instance would wait for up to a whole prompt (idle GPUs, unbalanced ends), and every HDF5 write and flush
would be drafting time lost to instance 0. The scheduler rank sleeps in back-off polls (no core, no GPU),
answers within a poll interval, writes after it has answered, and costs one process slot.

Scheduling policy (recorded as the file's `scheduler` attribute): POLICY below. List scheduling of this
kind ends at most (1 - 1/G) x the longest prompt after a perfect split of the work, whatever the lengths.
Coordinators talk to the scheduler over the `queue` communicator only (pickled messages: an assignment, or
the records of a finished prompt together with the next request); verifiers never do.
"""

from __future__ import annotations

import sys
import time
from collections import deque

from mpi4py import MPI

from dsi_mpi import log
from dsi_mpi.io.prompts import Prompt
from dsi_mpi.reporting.metrics import throughput

logger = log.get("batch")

POLICY = (
    "dynamic self-scheduling: an instance asks for its next prompt the moment it has finished one and gets the "
    "first prompt not yet complete and not yet handed out, in prompt-file order, one at a time; nothing is "
    "assigned in advance"
)
LOCAL_POLICY = "one instance: its coordinator (rank 0) runs the prompts in prompt-file order and writes them itself"
SETUP, REQUEST, ASSIGN, NOTICE, ACK = 2001, 2002, 2003, 2004, 2005


class LocalFeed:
    """G = 1: rank 0's prompts in file order, its records written by itself as each algorithm finishes."""

    def __init__(self, session, ranks: list[int], hosts: list[str]):
        self.session, self.writer = session, session.writer
        self.todo = deque(p for p in session.prompts if p.index not in self.writer.completed)
        if len(self.todo) < len(session.prompts):
            logger.info(f"resuming: {len(session.prompts) - len(self.todo)} prompts already complete")
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
        placement = self.where | self.clock.span(self.started)
        self.writer.mark_complete(prompt, placement)
        self.records += [r.as_dict() | placement for r in records]
        self.progress.update(self.records)

    def close(self, completed: bool) -> None:
        self.writer.close()
        if completed:
            print_summary(self.records, self.session.cfg.output.path, self.writer.metadata)


class RemoteFeed:
    """G >= 2, on an instance's coordinator: prompts from the scheduler, records back to it per prompt."""

    def __init__(self, queue, poller, timeout_s: float):
        self.queue, self.poller, self.timeout_s = queue, poller, timeout_s
        self.metadata: dict = {}
        self.asked = False
        self.sends: list = []

    def setup(self) -> dict:
        """eos ids and the prompts for warm-up and calibration, sent once by the scheduler."""
        return _receive(self.queue, self.poller, 0, SETUP, "set-up from the scheduler (world rank 0)", self.timeout_s)

    def add_metadata(self, metadata: dict) -> None:
        self.metadata.update(metadata)

    def _ask(self, done) -> None:
        self.sends.append(self.queue.isend({"done": done, "metadata": self.metadata}, dest=0, tag=REQUEST))
        self.metadata, self.asked = {}, True

    def next_prompt(self):
        if not self.asked:
            self._ask(None)
        self.asked = False
        item = _receive(self.queue, self.poller, 0, ASSIGN, "the next prompt from the scheduler", self.timeout_s)
        return None if item is None else (Prompt(*item[:3]), item[3])

    def record(self, prompt, tokens, record) -> None:
        pass  # sent together when the prompt is finished

    def finish(self, prompt, records) -> None:
        self._ask((prompt.index, records))

    def close(self, completed: bool) -> None:
        _flush(self.poller, self.sends, "records to reach the scheduler")


class Scheduler:
    """World rank 0 with G >= 2: the prompt queue and the results writer."""

    def __init__(self, session, placement, poller, infos: list[dict], metadata: dict):
        self.session, self.writer, self.poller = session, session.writer, poller
        self.placement, self.instances = placement, placement.instances
        self.hosts = {i["rank"]: i["host"] for i in infos}
        self.timeout_s = 4 * session.cfg.runtime.timeout_s  # verifiers give up on a silent coordinator at 2x
        self.sends: list = []
        self.status = MPI.Status()
        self.offsets: dict[str, dict] = {}
        self.planner: dict[str, dict] = {}
        layout = [layout_entry(g, r, placement.layout, self.hosts) for g, r in enumerate(self.instances)]
        self.writer.add_metadata(
            metadata
            | {"scheduler": {"policy": POLICY, "instances": len(self.instances), "writer_rank": 0, "layout": layout}}
        )
        _log_layout(layout, infos, placement)

    def run(self) -> None:
        session = self.session
        todo = deque(p for p in session.prompts if p.index not in self.writer.completed)
        if len(todo) < len(session.prompts):
            logger.info(f"resuming: {len(session.prompts) - len(todo)} prompts already complete")
        warm = session.prompts[: max(1, session.cfg.decoding.warmup_prompts)]
        setup = {"eos_ids": session.eos_ids, "prompts": [(p, session.prompt_tokens[p.index]) for p in warm]}
        for g in range(len(self.instances)):
            self.sends.append(self.placement.queue.isend(setup, dest=g + 1, tag=SETUP))
        clock, progress, records, running = JobClock(), Progress(len(todo)), [], {}
        active = set(range(len(self.instances)))
        completed = False
        try:
            while active:
                source, tag, msg = self.poller.wait_for(
                    self._poll, f"a message from instance(s) {sorted(active)}", self.timeout_s
                )
                if tag == NOTICE:
                    self._failed(source, *msg)
                g = source - 1
                self._metadata(g, msg["metadata"])
                prompt = todo.popleft() if todo else None
                item = (
                    None
                    if prompt is None
                    else (prompt.index, prompt.id, prompt.text, session.prompt_tokens[prompt.index])
                )
                self.sends.append(self.placement.queue.isend(item, dest=source, tag=ASSIGN))
                if prompt is None:
                    active.discard(g)
                if msg["done"] is not None:
                    records += self._write(g, msg["done"], running.pop(msg["done"][0]), clock)
                    progress.update(records)
                if prompt is not None:
                    running[prompt.index] = clock.now()
                self.sends = [r for r in self.sends if not r.Test()]
            _flush(self.poller, self.sends, "assignments to reach the instances")
            completed = True
        finally:
            self.writer.close()
        if completed:
            print_summary(records, session.cfg.output.path, self.writer.metadata)

    def _poll(self):
        """A failure notice first, else a coordinator's request: (source, tag, message) or None."""
        for comm, tag in ((self.placement.faults, NOTICE), (self.placement.queue, REQUEST)):
            message = comm.improbe(source=MPI.ANY_SOURCE, tag=tag, status=self.status)
            if message is not None:
                return self.status.Get_source(), tag, message.recv()
        return None

    def _metadata(self, g: int, metadata: dict) -> None:
        """An instance's clock offsets and planner choice, stored per instance."""
        if "clock_offsets_us" in metadata:
            self.offsets[str(g)] = metadata["clock_offsets_us"]
            self.writer.add_metadata({"clock_offsets_us": self.offsets})
        if "planner" in metadata:
            self.planner[str(g)] = metadata["planner"]
            self.writer.add_metadata({"planner": self.planner})

    def _write(self, g: int, done, started: float, clock) -> list[dict]:
        index, run_records = done
        prompt = next(p for p in self.session.prompts if p.index == index)
        tokens = self.session.prompt_tokens[index]
        for record in run_records:
            self.writer.write_record(prompt, tokens, record)
        ranks = self.instances[g]
        placement = {"instance": g, "instance_ranks": ranks, "instance_hosts": [self.hosts[r] for r in ranks]}
        placement |= clock.span(started)
        self.writer.mark_complete(prompt, placement)
        logger.debug(f"prompt {index} from instance {g} written")
        return [r.as_dict() | placement for r in run_records]

    def _failed(self, source: int, where: str, text: str, code: int) -> None:
        """A rank of an instance failed: its error on record, the file closed whole, then the whole job ends."""
        self.writer.close()
        logger.error(
            f"{where} failed: {text}; the job ends. Prompts completed so far are in {self.session.cfg.output.path}: "
            "finish them with --set output.resume=true (any runtime.instances; README: Many instances)"
        )
        sent = self.placement.faults.isend(None, dest=source, tag=ACK)
        _flush(self.poller, [sent], "the failure acknowledgement", timeout_s=2.0)
        log.drain_before_abort()
        self.placement.faults.Abort(code)


def layout_entry(instance: int, ranks: list[int], layout, hosts: dict[int, str]) -> dict:
    """One instance in the file's `scheduler.layout`: its world ranks and hosts, its drafter, its pipeline
    groups (stage ranks and hosts) and its plain verifiers. `ranks`: world ranks in the instance's rank order;
    `layout`: its verifiers in its own ranks (placement.VerifierSlots' form; None: every one plain)."""
    verifiers = [[ranks[i] for i in v] for v in (layout or [(i,) for i in range(1, len(ranks))])]
    return {
        "instance": instance,
        "ranks": ranks,
        "hosts": [hosts[r] for r in ranks],
        "drafter": ranks[0],
        "groups": [{"stages": v, "hosts": [hosts[r] for r in v]} for v in verifiers if len(v) > 1],
        "plain": [v[0] for v in verifiers if len(v) == 1],
    }


def describe_entry(entry: dict, infos: list[dict]) -> str:
    """The start-up line of one instance: world ranks with pids, hosts, and its drafter and groups if pipelined."""
    pid = {i["rank"]: i["pid"] for i in infos}
    text = f"instance {entry['instance']}: world ranks {', '.join(f'{r} (pid {pid[r]})' for r in entry['ranks'])}"
    text += f" on {', '.join(sorted(set(entry['hosts'])))}"
    if entry["groups"]:
        groups = "; ".join(f"{g['stages']} on {', '.join(sorted(set(g['hosts'])))}" for g in entry["groups"])
        text += f"; drafter {entry['drafter']}, pipeline groups {groups}"
        text += f"; plain verifiers {entry['plain']}" if entry["plain"] else ""
    return text


def _log_layout(layout: list[dict], infos: list[dict], placement) -> None:
    """Every instance's place at start-up, and what spans nodes."""
    for entry in layout:
        logger.info(describe_entry(entry, infos))
    split = {r for group in placement.split_groups for r in group}
    for g in placement.spanning:
        if layout[g]["groups"] and not split & set(placement.instances[g]):
            logger.info(
                f"instance {g} spans nodes: each of its pipeline groups is on one node, its other ranks elsewhere"
            )
        else:
            logger.warning(
                f"instance {g} spans nodes (ranks {placement.instances[g]}): launch a multiple of its size per node"
            )
    for group in placement.split_groups:
        logger.warning(f"pipeline group {group} spans nodes: no node had {len(group)} ranks left for it")


def tell_scheduler(placement, poller, world_rank: int, text: str, code: int) -> None:
    """On a failing instance rank, before MPI Abort: let the scheduler close the file and say who failed.
    Bounded: if no acknowledgement comes in 5 s, the caller aborts anyway."""
    sent = placement.faults.isend((placement.describe(world_rank), text, code), dest=0, tag=NOTICE)
    try:
        _receive(placement.faults, poller, 0, ACK, "the scheduler's acknowledgement", 5.0)
    except Exception:  # noqa: BLE001 - the job is ending anyway; abort follows
        pass
    del sent


def _receive(comm, poller, source: int, tag: int, what: str, timeout_s: float):
    """One pickled message, by matched probe (exact size, however large), under a deadline."""

    def poll():
        message = comm.improbe(source=source, tag=tag)
        return None if message is None else (message,)

    (message,) = poller.wait_for(poll, what, timeout_s)
    return message.recv()


def _flush(poller, sends: list, what: str, timeout_s: float | None = None) -> None:
    def done():
        sends[:] = [r for r in sends if not r.Test()]
        return True if not sends else None

    poller.wait_for(done, what, timeout_s)


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
        rates = [g["tokens_per_s"] for g in t["instances"].values()]
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
