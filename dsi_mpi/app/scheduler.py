"""The scheduler rank (runtime.instances = G >= 2): the job's one prompt queue and its one writer.

World rank 0 is a dedicated scheduler that holds no model: it hands out prompts and writes every record. Why
not let instance 0's coordinator do it: a coordinator is busy drafting and only returns to its own loop
between prompts, so a request from another instance would wait for up to a whole prompt (idle GPUs,
unbalanced ends), and every HDF5 write and flush would be drafting time lost to instance 0. The scheduler
rank sleeps in back-off polls (no core, no GPU), answers within a poll interval, writes after it has
answered, and costs one process slot.

Scheduling policy (recorded as the file's `scheduler` attribute): POLICY below. List scheduling of this
kind ends at most (1 - 1/G) x the longest prompt after a perfect split of the work, whatever the lengths.
Coordinators talk to the scheduler over the `queue` communicator only (SETUP, then REQUEST: the records of
a finished prompt with the next request, answered by ASSIGN; dsi_mpi/mpi/protocol.py), and a failing rank
of any instance tells it over `faults` (NOTICE, answered by ACK); verifiers never talk to it otherwise.
"""

from __future__ import annotations

from mpi4py import MPI

from dsi_mpi.app.feeds import JobClock, Progress, print_summary, prompts_to_do
from dsi_mpi.io import log
from dsi_mpi.io.records import RunRecord
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.channel import Channel

logger = log.get("scheduler")

POLICY = (
    "dynamic self-scheduling: an instance asks for its next prompt the moment it has finished one and gets the "
    "first prompt not yet complete and not yet handed out, in prompt-file order, one at a time; nothing is "
    "assigned in advance"
)


class Scheduler:
    """World rank 0 with G >= 2: the prompt queue and the results writer."""

    def __init__(self, session, placement, poller, infos: list[dict], metadata: dict):
        self.session, self.writer, self.poller = session, session.writer, poller
        self.placement, self.instances = placement, placement.instances
        self.hosts = {i["rank"]: i["host"] for i in infos}
        self.timeout_s = 4 * session.cfg.runtime.timeout_s  # verifiers give up on a silent coordinator at 2x
        self.queue, self.faults = Channel(placement.queue, poller), Channel(placement.faults, poller)
        self.offsets: dict[str, dict] = {}
        self.planner: dict[str, dict] = {}
        layout = [layout_entry(i, r, placement.layout, self.hosts) for i, r in enumerate(self.instances)]
        self.writer.add_metadata(
            metadata
            | {"scheduler": {"policy": POLICY, "instances": len(self.instances), "writer_rank": 0, "layout": layout}}
        )
        _log_layout(layout, infos, placement)

    def run(self) -> None:
        session = self.session
        todo = prompts_to_do(session)
        warm = session.prompts[: max(1, session.cfg.decoding.warmup_prompts)]
        setup = {"eos_ids": list(session.eos_ids), "prompts": [self._item(p) for p in warm]}
        for instance in range(len(self.instances)):
            self.queue.send_json(instance + 1, protocol.SETUP, setup)
        clock, progress, records, running = JobClock(), Progress(len(todo)), [], {}
        active = set(range(len(self.instances)))
        completed = False
        try:
            while active:
                source, msg = self.poller.wait_for(
                    self._poll, f"a message from instance(s) {sorted(active)}", self.timeout_s
                )
                if msg.kind == protocol.NOTICE:
                    self._failed(source, msg)
                instance, request = source - 1, protocol.unpack_json(msg)
                self._metadata(instance, request["metadata"])
                prompt = todo.popleft() if todo else None  # answered first, written after
                self.queue.send_json(source, protocol.ASSIGN, None if prompt is None else self._item(prompt))
                if prompt is None:
                    active.discard(instance)
                if request["done"] is not None:
                    records += self._write(instance, request["done"], running.pop(request["done"][0]), clock)
                    progress.update(records)
                if prompt is not None:
                    running[prompt.index] = clock.now()
            self.queue.flush("assignments to reach the instances")
            completed = True
        finally:
            self.writer.close()
        if completed:
            print_summary(records, session.cfg.output.path, self.writer.metadata)

    def _item(self, prompt) -> list:
        """A prompt as the scheduler's messages carry it: index, id, text, tokens."""
        return [prompt.index, prompt.id, prompt.text, self.session.prompt_tokens[prompt.index]]

    def _poll(self):
        """A failure notice first, else a coordinator's request: (source, message) or None."""
        return self.faults.poll(MPI.ANY_SOURCE, protocol.NOTICE) or self.queue.poll(MPI.ANY_SOURCE, protocol.REQUEST)

    def _metadata(self, instance: int, metadata: dict) -> None:
        """An instance's clock offsets and planner choice, stored per instance."""
        if "clock_offsets_us" in metadata:
            self.offsets[str(instance)] = metadata["clock_offsets_us"]
            self.writer.add_metadata({"clock_offsets_us": self.offsets})
        if "planner" in metadata:
            self.planner[str(instance)] = metadata["planner"]
            self.writer.add_metadata({"planner": self.planner})

    def _write(self, instance: int, done: list, started: float, clock) -> list[dict]:
        index, run_records = done[0], [RunRecord.from_message(r) for r in done[1]]
        prompt = next(p for p in self.session.prompts if p.index == index)
        tokens = self.session.prompt_tokens[index]
        for record in run_records:
            self.writer.write_record(prompt, tokens, record)
        ranks = self.instances[instance]
        where = {"instance": instance, "instance_ranks": ranks, "instance_hosts": [self.hosts[r] for r in ranks]}
        where |= clock.span(started)
        self.writer.mark_complete(prompt, where)
        logger.debug(f"prompt {index} from instance {instance} written")
        return [r.as_dict() | where for r in run_records]

    def _failed(self, source: int, notice) -> None:
        """A rank of an instance failed: its error on record, the file closed whole, then the whole job ends."""
        (where, text), code = protocol.unpack_json(notice), notice.code
        self.writer.close()
        logger.error(
            f"{where} failed: {text}; the job ends. Prompts completed so far are in {self.session.cfg.output.path}: "
            "finish them with --set output.resume=true (any runtime.instances; docs/pipelines.md)"
        )
        self.faults.send(source, protocol.ACK)
        self.faults.flush("the failure acknowledgement", timeout_s=2.0)
        log.drain_before_abort()
        self.placement.faults.Abort(code)


def layout_entry(instance: int, ranks: list[int], layout, hosts: dict[int, str]) -> dict:
    """One instance in the file's `scheduler.layout`: its world ranks and hosts, its drafter, its pipeline
    groups (stage ranks and hosts) and its plain verifiers. `ranks`: world ranks in the instance's rank order;
    `layout`: its verifiers in its own ranks (decoding.slots.VerifierSlots' form; None: every one plain)."""
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
    for i in placement.spanning:
        if layout[i]["groups"] and not split & set(placement.instances[i]):
            logger.info(
                f"instance {i} spans nodes: each of its pipeline groups is on one node, its other ranks elsewhere"
            )
        else:
            logger.warning(
                f"instance {i} spans nodes (ranks {placement.instances[i]}): launch a multiple of its size per node"
            )
    for group in placement.split_groups:
        logger.warning(f"pipeline group {group} spans nodes: no node had {len(group)} ranks left for it")


def tell_scheduler(placement, poller, world_rank: int, text: str, code: int) -> None:
    """On a failing instance rank, before MPI Abort: let the scheduler close the file and say who failed.
    Bounded: if no acknowledgement comes in 5 s, the caller aborts anyway."""
    faults = Channel(placement.faults, poller)
    faults.send_json(0, protocol.NOTICE, [placement.describe(world_rank), text], code=code)
    try:
        faults.receive("the scheduler's acknowledgement", source=0, tag=protocol.ACK, timeout_s=5.0)
    except Exception:  # noqa: BLE001 - the job is ending anyway; abort follows
        pass
