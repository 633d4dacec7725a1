"""The verifier loop on ranks 1..N-1: run the target on tasks, reply once per task, stop stale work early.

A verifier keeps the KV cache of the sequence it last verified. A TASK says how much of it stays valid
(`base`); the verifier crops to that, runs the target on the new tokens only and returns the acceptance
rule's verdict on the drafts (dsi_mpi/decoding/acceptance.py). Between decoder layers it probes for a
CANCEL: if the running task's epoch is older than the cancel's, the forward stops at once (the cache is
rolled back to `base`) and the reply is ABORTED. The non-SI thread's run (a TASK with `stream`) sends each
token as it is decoded and is stopped only by a CANCEL naming it: it decodes the committed text, which no
rejection makes stale. Baseline runs (nonsi, hf_assisted) are served here too, so that every algorithm's
target forwards run on the same kind of rank. With `warm` (runtime.keep_warm) the wait between tasks runs
throwaway forwards that stop as soon as a message lands (PackedRunner.idle_forward): on a CPU a forward after
a wait ran 1.3x slower than back to back.
"""

from __future__ import annotations

from dsi_mpi.backends import ModelRunner
from dsi_mpi.decoding.baselines import serve_baseline
from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.channel import Channel
from dsi_mpi.mpi.clock import now_us
from dsi_mpi.mpi.faults import FaultPlan


def stop_verifiers(channel: Channel) -> None:
    """Rank 0: tell every verifier to leave its loop, and wait until the messages have left."""
    for verifier in range(1, channel.comm.Get_size()):
        channel.send(verifier, protocol.STOP)
    channel.flush()


class TaskCancelled(Exception):
    """Raised between decoder layers to abandon a forward that a rejection made stale."""


class Verifier:
    def __init__(
        self, channel: Channel, target: ModelRunner, assistant_factory=None, rule=None, fault_rank=None, warm=False
    ):
        from dsi_mpi.decoding.acceptance import Greedy

        self.channel = channel
        self.target = target
        self.rule = rule or Greedy()
        self.assistant_factory = assistant_factory  # loads the drafter here only if hf_assisted runs
        self.min_epoch = 0
        self.cancelled: set[int] = set()  # tasks cancelled by their ids (a superseded non-SI-thread task)
        self.running_epoch = 1 << 62  # no task running: nothing to cancel
        self.running_task = -1
        self.running_stream = False
        self.faults = FaultPlan(channel.rank if fault_rank is None else fault_rank)  # the world rank
        self.warm = warm and hasattr(target, "idle_forward")  # runtime.keep_warm (_idle_forward)
        target.set_layer_callback(self._check_cancel)

    def _take_cancel(self, msg) -> None:
        self.min_epoch = max(self.min_epoch, msg.epoch)
        self.cancelled.update(int(t) for t in msg.payload)

    def _stale(self, epoch: int, task_id: int, stream: bool = False) -> bool:
        """A task of an epoch older than the last CANCEL's (a stream excepted), or one cancelled by its id."""
        return (epoch < self.min_epoch and not stream) or task_id in self.cancelled

    def _check_cancel(self) -> None:
        got = self.channel.poll(source=0, tag=protocol.CANCEL)
        if got is not None:
            self._take_cancel(got[1])
        if self._stale(self.running_epoch, self.running_task, self.running_stream):
            raise TaskCancelled

    def serve(self) -> None:
        """Answer rank 0 until STOP."""
        idle = self._idle_forward if self.warm else None  # during the wait's spin only (a longer wait sleeps)
        while True:
            # Twice the coordinator's bound: when a verifier falls silent, rank 0 (which knows who) reports it.
            _, msg = self.channel.receive(
                "the coordinator (rank 0)", source=0, timeout_s=2 * self.channel.poller.timeout_s, while_spinning=idle
            )
            if msg.kind == protocol.STOP:
                self.channel.flush()
                return
            if msg.kind == protocol.CANCEL:
                self._take_cancel(msg)
            elif msg.kind == protocol.TASK:
                self.faults.tick()
                self._run_task(msg)
            elif msg.kind == protocol.BASELINE:
                serve_baseline(self.channel, self.target, msg, self.assistant_factory, self.rule)
            else:
                raise protocol.ProtocolError(f"rank 0 sent an unexpected {protocol.KIND_NAMES[msg.kind]}")

    def _idle_forward(self) -> None:
        """runtime.keep_warm: a throwaway forward that stops at the next layer once rank 0's message lands."""
        self.target.idle_forward(lambda: self.channel.waiting(source=0))

    def _plain_run(self, msg, tokens) -> list[int]:
        """Plain decoding of `msg.plain` tokens from here (adaptive speculation at k = 0): one message per run
        instead of one per token; each token is the rule's own choice at its position (greedy: argmax;
        sampling: the same position-keyed draw that nonsi and the coordinator make), so nothing changes.
        A stream also sends each token at once (STREAMED), so that rank 0 commits it while this rank goes on."""
        out = []
        for _ in range(msg.plain):
            position = self.target.cache_len() + len(tokens)
            out.append(self.rule.next_token(self.target, tokens, position, msg.key))
            if msg.stream:
                fields = dict(task_id=msg.task_id, epoch=msg.epoch, position=position, end_us=now_us())
                self.channel.send(0, protocol.STREAMED, out[-1:], **fields)
            tokens = [out[-1]]
        return out

    def _run_task(self, msg) -> None:
        if msg.base > self.target.cache_len():
            raise protocol.ProtocolError(
                f"task {msg.task_id} keeps {msg.base} cached tokens but the cache holds {self.target.cache_len()}"
            )
        reply = dict(task_id=msg.task_id, epoch=msg.epoch, n_stages=0)
        if (msg.n_extras > 0) != self.rule.sampled and msg.n_out > 1:
            raise protocol.ProtocolError(f"task {msg.task_id}: rank 0 and this rank disagree on sampling vs greedy")
        self.target.crop(msg.base)
        start = now_us()
        if self._stale(msg.epoch, msg.task_id, msg.stream):  # made stale before it started: never run it
            self.channel.send(
                0, protocol.ABORTED, cache_len=self.target.cache_len(), start_us=start, end_us=start, **reply
            )
            return
        self.running_epoch, self.running_task, self.running_stream = msg.epoch, msg.task_id, bool(msg.stream)
        try:
            n_tokens = len(msg.payload) - msg.n_extras
            if msg.plain:
                verdict = self._plain_run(msg, msg.payload[:n_tokens])
            else:
                verdict = self.rule.verify(
                    self.target, msg.payload[:n_tokens], msg.n_out, msg.payload[n_tokens:], msg.key
                )
        except TaskCancelled:
            self.channel.send(
                0, protocol.ABORTED, cache_len=self.target.cache_len(), start_us=start, end_us=now_us(), **reply
            )
            return
        finally:
            self.running_epoch, self.running_task, self.running_stream = 1 << 62, -1, False
        self.channel.send(
            0,
            protocol.RESULT,
            verdict,
            cache_len=self.target.cache_len(),
            computed=n_tokens + max(msg.plain - 1, 0),
            reused=msg.base,
            start_us=start,
            end_us=now_us(),
            **reply,
        )
