"""Verifier slots: which ranks form each verifier, how many tasks each takes at once, what its caches hold.

A verifier is a plain rank (the whole target, one task at a time) or a pipelined group of P ranks (a
contiguous range of layers each, up to P tasks in flight: stage s works on one task while stage s+1 works
on the one before). Rank 0 sends a group's tasks to its first stage and reads the replies from its last;
every stage gets each CANCEL. Tasks go through a group in order, so its replies come back in order.

What a verifier's caches will hold when it reaches a new task decides the task's `base` (how much stays
valid). Rank 0 knows each stage's cache exactly once every task sent has been answered: a reply says, per
stage, whether the task was computed (the cache holds its sequence), abandoned mid-forward (rolled back
to the task's base) or dropped unseen (the cache is left as it was). With tasks in flight:
* if the last one belongs to the current epoch, its sequence: a stage that does not compute it has seen
  a newer CANCEL (or an earlier stage has), so it drops the new task, of the same epoch, as well; every
  stage that gets the new task has just computed the last one;
* else (it may yet be abandoned anywhere) only what every outcome leaves: the least, over the known
  caches and every task in flight, of its base and of its shared prefix with the new sequence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dsi_mpi.backends import common_prefix_len
from dsi_mpi.io.config import ConfigError
from dsi_mpi.mpi import protocol


def plan_layout(nodes: list[int], stages: int, groups: int) -> list[tuple[int, ...]]:
    """The verifiers of a job as tuples of ranks, ordered by first rank: `groups` groups of `stages` ranks
    (0: all verifier ranks), each on one node where one has enough ranks left, then plain ranks.
    nodes[r] names rank r's node (ranks 1.. are the verifier ranks)."""
    ranks = list(range(1, len(nodes)))
    if stages <= 1:
        return [(r,) for r in ranks]
    if groups == 0:
        if len(ranks) % stages:
            raise ConfigError(
                f"runtime.pipeline_stages = {stages} does not divide the {len(ranks)} verifier ranks "
                f"({len(nodes)} ranks launched): launch 1 + a multiple of {stages}, or set runtime.pipeline_groups"
            )
        groups = len(ranks) // stages
    if groups * stages > len(ranks):
        raise ConfigError(
            f"runtime.pipeline_groups = {groups} groups of {stages} stages need {groups * stages} verifier "
            f"ranks, but {len(ranks)} were launched ({len(nodes)} ranks in all)"
        )
    free: dict[int, list[int]] = {}
    for r in ranks:
        free.setdefault(nodes[r], []).append(r)
    layout = []
    for _ in range(groups):
        fits = [n for n, rs in free.items() if len(rs) >= stages]
        if fits:
            node = min(fits, key=lambda n: free[n][0])
            take = free[node][:stages]
        else:  # no node has room: the group spans nodes (slower hops, still correct)
            take = sorted(r for rs in free.values() for r in rs)[:stages]
        layout.append(tuple(take))
        for node in free:
            free[node] = [r for r in free[node] if r not in take]
    layout += [(r,) for rs in free.values() for r in rs]
    return sorted(layout)


def spans_nodes(layout: list[tuple[int, ...]], nodes: list[int]) -> list[tuple[int, ...]]:
    return [g for g in layout if len({nodes[r] for r in g}) > 1]


@dataclass
class Slot:
    ranks: tuple[int, ...]
    queue: deque  # (task, base) in flight, oldest first
    views: list  # per stage: the tokens its cache holds once every reply is in

    @property
    def capacity(self) -> int:
        return len(self.ranks)


class VerifierSlots:
    """Rank 0's picture of its verifiers; a verifier is named by its first rank."""

    def __init__(self, layout):
        self.slots = {}
        for item in layout:
            ranks = (int(item),) if isinstance(item, int) else tuple(int(r) for r in item)
            self.slots[ranks[0]] = Slot(ranks, deque(), [[] for _ in ranks])

    @property
    def ids(self) -> list[int]:
        return list(self.slots)

    def ranks(self, verifier: int) -> tuple[int, ...]:
        return self.slots[verifier].ranks

    def capacity(self, verifiers) -> int:
        return sum(self.slots[v].capacity for v in verifiers)

    def free(self, verifiers) -> dict[int, int]:
        """Verifier -> tasks it can take now."""
        left = {v: self.slots[v].capacity - len(self.slots[v].queue) for v in verifiers}
        return {v: n for v, n in left.items() if n > 0}

    def base_for(self, verifier: int, sequence: list[int], epoch: int) -> int:
        """How much of `sequence` the verifier's caches are sure to hold when it reaches a task sent now."""
        slot = self.slots[verifier]
        if slot.queue and slot.queue[-1][0].epoch == epoch:
            return common_prefix_len(slot.queue[-1][0].sequence, sequence)
        bound = min(common_prefix_len(view, sequence) for view in slot.views)
        for task, base in slot.queue:
            bound = min(bound, base, common_prefix_len(task.sequence, sequence))
        return bound

    def sent(self, task, base: int) -> None:
        self.slots[task.verifier].queue.append((task, base))

    def replied(self, task, source: int, msg) -> str | None:
        """Take a reply (RESULT or ABORTED) off its verifier and learn what each stage's cache holds;
        returns what is wrong with the reply, if anything."""
        slot = self.slots[task.verifier]
        if source != slot.ranks[-1]:
            return f"rank {source} replied for task {task.task_id}, which went to ranks {list(slot.ranks)}"
        if slot.queue[0][0] is not task:
            return f"rank {source} replied for task {task.task_id} before task {slot.queue[0][0].task_id}"
        _, base = slot.queue.popleft()
        if msg.n_stages != (len(slot.ranks) if len(slot.ranks) > 1 else 0):
            return f"rank {source} replied for task {task.task_id} with {msg.n_stages} stage records"
        if not msg.n_stages:  # a plain rank: its one cache
            slot.views[0] = task.sequence[: msg.cache_len]
            return None
        records = msg.payload[len(msg.payload) - protocol.STAGE_RECORD * msg.n_stages :].reshape(-1, 4)
        for stage, status in enumerate(records[:, 1].tolist()):
            if status == protocol.STAGE_COMPUTED:
                slot.views[stage] = task.sequence
            elif status == protocol.STAGE_ABORTED:
                slot.views[stage] = task.sequence[:base]
        return None

    def busy_ranks(self) -> list[int]:
        return sorted(s.ranks[-1] for s in self.slots.values() if s.queue)

    def forget(self) -> None:
        """Assume nothing is cached (e.g. another decoder has used these verifiers)."""
        for slot in self.slots.values():
            slot.views = [[] for _ in slot.ranks]


def check_pipeline(cfg, n_ranks: int) -> None:
    """Rank 0, before any weights load: the layout fits the ranks (each instance's, with runtime.instances >= 2:
    its groups are checked against (n_ranks - 1) / instances), the algorithms fit the layout, and the target
    can be cut as asked."""
    stages, groups, instances = cfg.runtime.pipeline_stages, cfg.runtime.pipeline_groups, cfg.runtime.instances
    n_ranks = n_ranks if instances == 1 else (n_ranks - 1) // instances
    if stages == 1:
        if groups:
            raise ConfigError("runtime.pipeline_groups needs runtime.pipeline_stages > 1")
        return
    if cfg.models.kind == "hf":
        from dsi_mpi.backends.checks import check_stages

        check_stages(cfg.models, stages)
    layout = plan_layout([0] * n_ranks, stages, groups)
    if all(len(g) > 1 for g in layout):
        for name in ("hf_assisted", "hf_prompt_lookup"):
            if name in cfg.decoding.algorithms:
                raise ConfigError(
                    f"{name} needs a verifier rank with the whole target, but every verifier rank is a pipeline "
                    "stage: set runtime.pipeline_groups so that some are left over"
                )


def plain_verifier(layout) -> int | None:
    """The first rank holding the whole target (the baselines run there), if any."""
    return next((g[0] for g in layout if len(g) == 1), None)
