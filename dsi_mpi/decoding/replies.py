"""Reading verification replies (RESULT or ABORTED), one at a time, for one prompt: each reply's times go
into its task's row and the timeline (with the per-stage records of a pipelined group), it closes the
cancellation a rejection opened, a verification's round trip goes to adaptive speculation, and a result of
the current epoch is handed to the judge (decoding/judging.py), which applies whatever it makes ready. A
reply for a stale task is only recorded. A STREAMED token goes to the non-SI thread (nonsi_thread.py). The
ledger (decoding/tasks.py) has checked each against what was sent.
"""

from __future__ import annotations

from dsi_mpi.decoding.judging import Judge
from dsi_mpi.decoding.nonsi_thread import NonSIThread
from dsi_mpi.decoding.prompt_state import PromptState
from dsi_mpi.decoding.tasks import Task, TaskLedger, split_stage_records
from dsi_mpi.io.records import Event, Outcome
from dsi_mpi.mpi import protocol


class Replies:
    """One prompt's replies (see the module docstring); `sampled`: the acceptance rule samples."""

    def __init__(self, state: PromptState, ledger: TaskLedger, judge: Judge, nonsi: NonSIThread, sampled: bool):
        self.p, self.ledger, self.judge, self.nonsi, self.sampled = state, ledger, judge, nonsi, sampled

    def read_waiting(self) -> bool:
        """Read every reply waiting; whether there was one. With no task in flight none can be waiting (a
        message for no task would be a ProtocolError, found at the next wait): si drafts with none, and its
        polls there (before each draft step, between the drafter's layers) were work for nothing."""
        handled = False
        while not self.p.done and self.ledger.inflight and self.read_one():
            handled = True
        return handled

    def read_one(self) -> bool | None:
        """Read one reply if one is waiting (None if not): record it, and apply what it makes ready."""
        reply = self.ledger.take_reply()
        if reply is None:
            return None
        task, source, msg = reply
        if msg.kind == protocol.STREAMED:  # one of the non-SI thread's tokens; its task stays in flight
            self.nonsi.take_streamed(task, msg, self.ledger.verifier_time(source, msg.end_us, self.p.t0))
            return True
        verdict = self._record_reply(task, source, msg)
        if msg.kind == protocol.ABORTED:
            self._aborted(task, source)
        elif task.block is not None:
            self._result(task, source, verdict)
        return True

    def _record_reply(self, task: Task, source: int, msg):
        """The reply's times in the task's row and the timeline, the cancellation it closes, the forward's
        event; returns the verdict."""
        p, ledger = self.p, self.ledger
        now = p.now()
        verdict = self._stage_records(task, msg)
        start = ledger.verifier_time(ledger.slots.ranks(task.verifier)[0], msg.start_us, p.t0)
        end = ledger.verifier_time(source, msg.end_us, p.t0)
        task.row.update(reply_s=now, start_s=start, end_s=end, busy_s=end - start)
        p.event(Event.RESULT_RECEIVED, now, now, task.task_id, source)
        cancel = p.pending_cancels.pop(task.task_id, None)
        if cancel is not None:
            cancel.stopped_s, cancel.reply_s, cancel.busy_after_s = end, now, max(end - cancel.rejected_s, 0.0)
            cancel.aborted = int(msg.kind == protocol.ABORTED)
            p.record.cancellations.append(cancel.row())
        if msg.kind == protocol.RESULT:
            task.row.update(computed=msg.computed, reused=msg.reused)
        elif "last_token_s" in task.row:  # a stream stopped after some tokens
            self._stopped_stream(task, source, msg, start, end)
            return verdict
        if not msg.n_stages:
            kind, value = (Event.VERIFY, msg.computed) if msg.kind == protocol.RESULT else (Event.VERIFY_ABORTED, 0)
            p.event(kind, start, end, task.task_id, value, rank=source)
        return verdict

    def _stopped_stream(self, task: Task, source: int, msg, start: float, end: float) -> None:
        """A stream stopped by its CANCEL after some tokens: its row holds the forwards that made them (the
        tokens they fed, up to the last token's time: what one token costs it, as for any other task), and the
        forward the CANCEL stopped is an aborted forward of its own in the timeline."""
        last = task.row["last_token_s"]
        computed = msg.cache_len - task.row["base"]
        task.row.update(computed=computed, reused=task.row["base"], end_s=last, busy_s=last - start)
        self.p.event(Event.VERIFY, start, last, task.task_id, computed, rank=source)
        self.p.event(Event.VERIFY_ABORTED, last, end, task.task_id, 0, rank=source)

    def _aborted(self, task: Task, source: int) -> None:
        """A verifier abandoned a task on a CANCEL: only a stale one may be."""
        if task.epoch == self.ledger.epoch and task.block is not None and not task.cancelled:
            raise protocol.ProtocolError(f"rank {source} aborted task {task.task_id}, which was not cancelled")
        if task.row["outcome"] != Outcome.USED:  # a stream stopped after some of its tokens were committed
            task.row["outcome"] = Outcome.ABANDONED

    def _result(self, task: Task, source: int, verdict) -> None:
        """A block's verdict: the round trip for adaptive speculation, then applied unless stale."""
        p, block = self.p, task.block
        if block.stream:  # a stream that ran to the end: every token came as it was decoded
            return self.nonsi.ended(task)
        if task.row["base"] > 0:  # not a prefill: a verification's time
            round_trip = task.row["reply_s"] - task.row["sent_s"]
            if not block.plain:  # a plain run decodes several tokens: not one verification's round trip
                p.last_round_trip_s = round_trip
            if p.adaptive is not None:
                p.adaptive.observe_verification(round_trip, len(block.drafts) + 1, block.plain)
        if task.epoch != self.ledger.epoch:
            task.row["outcome"] = Outcome.STALE_RESULT
            return
        if (block.plain or not self.sampled) and len(verdict) != (block.plain or len(block.drafts) + 1):
            raise protocol.ProtocolError(
                f"rank {source} returned {len(verdict)} tokens for a block of {len(block.drafts)} drafts"
            )
        if block.superseded:  # its every position committed meanwhile by the non-SI thread
            task.row["outcome"] = Outcome.STALE_RESULT
            return
        if block.frontier:
            return self.nonsi.take_result(task, verdict)
        block.result = verdict
        task.row["outcome"] = Outcome.USED
        if p.policy == "si":  # the next block is drafted from here (a rejection restarts dsi: Coordinator._retract)
            p.restarted_s = None if block.plain else p.now()
        self.judge.apply_ready()

    def _stage_records(self, task: Task, msg):
        """A pipelined group's reply ends with one record per stage: keep them (the stages table, and each
        stage's forward as an event of its own rank); return the verdict before them."""
        p = self.p
        verdict, stages = split_stage_records(msg.payload, msg.n_stages)
        kinds = {protocol.STAGE_COMPUTED: Event.VERIFY, protocol.STAGE_ABORTED: Event.VERIFY_ABORTED}
        for index, (rank, status, t0, t1) in enumerate(stages):
            start, end = self.ledger.verifier_time(rank, t0, p.t0), self.ledger.verifier_time(rank, t1, p.t0)
            p.record.stages.append((task.task_id, task.verifier, index, rank, status, start, end))
            if status in kinds:
                computed = msg.computed if msg.kind == protocol.RESULT else 0
                p.event(kinds[status], start, end, task.task_id, computed, rank)
        return verdict
