"""One stage of a pipelined verifier group: run this rank's layers on each task, pass it on, never wait.

Rank 0 sends a group's TASKs to its first stage. Each stage crops its own KV cache to the task's `base`,
runs its layers on the new tokens and sends the hidden states on as one ACTIVATION (nonblocking), then
takes the next task at once: stage s works on task t while stage s+1 works on task t-1. The last stage
applies the acceptance rule (it has the logits) and is the only one that replies to rank 0, with a record
of every stage's forward. CANCELs from rank 0 reach every stage: before each task a stage reads those
waiting, and a task or activation of an older epoch is dropped on sight (nothing computed, the cache left
as it is); a forward under way stops between layers and its cache is rolled back to the task's base. A
dropped task still travels on as a small "dropped" ACTIVATION, so that every task gets exactly one reply,
whose stage records tell rank 0 what each stage's cache now holds (dsi_mpi/decoding/slots.py).
"""

from __future__ import annotations

import numpy as np

from dsi_mpi.decoding.verifier import TaskCancelled, Verifier
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.clock import now_us

NOT_RUNNING = 1 << 62


def hidden_to_words(hidden) -> np.ndarray:
    """Hidden states as int64 words of float32 bits (bfloat16 and float16 convert to float32 exactly)."""
    if hasattr(hidden, "detach"):
        import torch

        hidden = hidden.detach().to("cpu", torch.float32).numpy()
    flat = np.ascontiguousarray(hidden, dtype=np.float32).ravel()
    if len(flat) % 2:
        flat = np.append(flat, np.float32(0))
    return flat.view(np.int64)


def words_to_hidden(words: np.ndarray, n_tokens: int, hidden_size: int) -> np.ndarray:
    return np.ascontiguousarray(words).view(np.float32)[: n_tokens * hidden_size].reshape(n_tokens, hidden_size)


class Stage(Verifier):
    """Stage `index` of the group `ranks`; `runner` holds this stage's layers (backends.stage, or the
    emulated stage of backends.emulated); `fault_rank`: its world rank (FAULT INJECTION names world ranks)."""

    def __init__(self, channel, runner, ranks: tuple[int, ...], index: int, rule=None, fault_rank=None):
        super().__init__(channel, runner, None, rule, fault_rank)
        self.ranks, self.index = tuple(ranks), index
        self.first, self.last = index == 0, index == len(ranks) - 1
        self.previous = 0 if self.first else ranks[index - 1]

    def _drain_cancels(self) -> None:
        while (got := self.channel.poll(source=0, tag=protocol.CANCEL)) is not None:
            self._take_cancel(got[1])

    def serve(self) -> None:
        """Take tasks (first stage: TASKs from rank 0; others: ACTIVATIONs from the stage before) until STOP."""
        what = "the coordinator (rank 0)" if self.first else f"rank 0 or the previous stage (rank {self.previous})"
        while True:
            source, msg = self.channel.receive(what, timeout_s=2 * self.channel.poller.timeout_s)
            if source == 0 and msg.kind == protocol.STOP:
                self.channel.flush()
                return
            if source == 0 and msg.kind == protocol.CANCEL:
                self._take_cancel(msg)
            elif source == self.previous and msg.kind == (protocol.TASK if self.first else protocol.ACTIVATION):
                self.faults.tick()
                self._run(self._unpack(msg))
            else:
                raise protocol.ProtocolError(
                    f"pipeline stage {self.index} got an unexpected {protocol.KIND_NAMES[msg.kind]} from rank {source}"
                )

    def _unpack(self, msg) -> dict:
        """A TASK or an ACTIVATION as one task description."""
        f, p = msg.fields, msg.payload
        if msg.kind == protocol.TASK:
            if (f["n_extras"] > 0) != self.rule.sampled and f["n_out"] > 1:
                raise protocol.ProtocolError(
                    f"task {f['task_id']}: rank 0 and this rank disagree on sampling vs greedy"
                )
            n = len(p) - f["n_extras"]
            return dict(f, tokens=p[:n], extras=p[n:], records=[], cache_len=NOT_RUNNING, dropped=0, hidden=None)
        n, e, r = f["n_tokens"], f["n_extras"], protocol.STAGE_RECORD * f["n_stages"]
        hidden = None
        if not f["dropped"]:
            hidden = words_to_hidden(p[n + e + r :], n, self.target.hidden_size)
        records = p[n + e : n + e + r].reshape(-1, protocol.STAGE_RECORD).tolist()
        return dict(f, tokens=p[:n], extras=p[n : n + e], records=records, hidden=hidden)

    def _run(self, task: dict) -> None:
        self._drain_cancels()
        target, start = self.target, now_us()
        if task["dropped"] or self._stale(task["epoch"], task["task_id"]):  # stale: drop on sight, the cache as it is
            return self._pass_on(task, protocol.STAGE_DROPPED, start, None)
        if task["base"] > target.cache_len():
            raise protocol.ProtocolError(
                f"task {task['task_id']} keeps {task['base']} cached tokens but stage {self.index} holds "
                f"{target.cache_len()}"
            )
        target.crop(task["base"])
        target.incoming = task["hidden"]
        self.running_epoch, self.running_task = task["epoch"], task["task_id"]
        try:
            if self.last:
                out = self.rule.verify(target, task["tokens"], task["n_out"], task["extras"], task["key"])
            else:
                out = target.forward(task["tokens"], task["n_out"])
        except TaskCancelled:
            return self._pass_on(task, protocol.STAGE_ABORTED, start, None)
        finally:
            self.running_epoch, self.running_task = NOT_RUNNING, -1
            target.incoming = None
        self._pass_on(task, protocol.STAGE_COMPUTED, start, out)

    def _pass_on(self, task: dict, status: int, start: int, out) -> None:
        """Send the task to the next stage, or (last stage) the one reply to rank 0."""
        records = task["records"] + [[self.channel.rank, status, start, now_us()]]
        cache_len = min(task["cache_len"], self.target.cache_len())
        dropped = int(status != protocol.STAGE_COMPUTED)
        stage_words = np.asarray(records, dtype=np.int64).ravel()
        if self.last:
            ids = dict(task_id=task["task_id"], epoch=task["epoch"], cache_len=cache_len, n_stages=len(records))
            times = dict(start_us=records[0][2], end_us=records[-1][3])
            if dropped:
                self.channel.send(0, protocol.ABORTED, stage_words, **ids, **times)
            else:
                verdict = np.concatenate([np.asarray(out, dtype=np.int64), stage_words])
                n = len(task["tokens"])
                self.channel.send(0, protocol.RESULT, verdict, computed=n, reused=task["base"], **ids, **times)
            return
        none = np.zeros(0, dtype=np.int64)
        tokens, extras = (none, none) if dropped else (task["tokens"], task["extras"])
        hidden = none if dropped else hidden_to_words(out)
        parts = [np.asarray(x, dtype=np.int64) for x in (tokens, extras, stage_words, hidden)]
        self.channel.send(
            self.ranks[self.index + 1],
            protocol.ACTIVATION,
            np.concatenate(parts),
            task_id=task["task_id"],
            epoch=task["epoch"],
            base=task["base"],
            n_out=task["n_out"],
            key=task["key"],
            n_extras=len(extras),
            n_tokens=len(tokens),
            cache_len=cache_len,
            n_stages=len(records),
            dropped=dropped,
            n_hidden=len(hidden),
        )
