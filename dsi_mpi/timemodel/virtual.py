"""The coordinator on a simulated clock: the engine of the time-model simulator (dsi_mpi/timemodel/simulator.py).

Why: a simulator that re-implements the coordinator's rules drifts from them (it did: it gave one verifier
the non-SI thread that the coordinator keeps for two or more, and it knew nothing of adaptive speculation).
Here the real `SpeculativeDecoder` runs unchanged and only its surroundings are simulated:
* the clock is a number that moves only when something takes time;
* the drafter is a ModelRunner whose forward advances the clock by its latency, in `layers` slices with the
  coordinator's layer callback before each (as the emulated backend does with sleeps);
* the channel hands tasks to simulated verifiers that follow dsi_mpi/decoding/verifier.py: messages in
  arrival order, one task at a time, a forward of TTFT on an empty cache and TPOT otherwise whatever its
  length (the paper's model, and the emulated backend's), a CANCEL seen at the next of `slices` checks
  inside a forward (then ABORTED, the cache rolled back), a task made stale before it starts never run;
* waiting (the poller) jumps the clock to the next moment something can happen.
Acceptance is the paper's i.i.d. model, as in the emulated backend: the target's token at each position
is fixed and the drafter proposes it where `match(position)` holds, another token elsewhere.
`message_s` (default 0) is what a message costs a rank that sleeps in its poller waiting for it: the
wake-up of the back-off plus the transfer, measured on the machine as half of si's round trip above the
forward (reporting.time_model). A verifier idle when a task arrives starts it `message_s` late; one busy
finds it on its first poll, at no cost. Rank 0 waiting for a reply resumes `message_s` after it arrives; a
reply that lands while rank 0 drafts is read between the drafter's layers, at no cost beyond that wait, and
a CANCEL is seen at the verifier's next check. (Charging every message in transit charged dsi's rank 0
for wake-ups it never has: at c 0.9, a 0.3, k 1, V 7 that predicted dsi 6% slower than it ran.) Nothing
here sleeps or needs MPI.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

import dsi_mpi.mpi.protocol as protocol
from dsi_mpi.backends.base import ModelRunner
from dsi_mpi.backends.emulated import SLICES

VERIFIER_SLICES = SLICES  # cancel checks per target forward, as the emulated backend makes


def target_token(position: int) -> int:
    return 2 * position + 2


class SimulatedClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class SimulatedDrafter(ModelRunner):
    """Proposes the target's token where match(position) holds; each forward advances the clock."""

    def __init__(self, clock: SimulatedClock, ttft: float, tpot: float, layers: int, match):
        super().__init__()
        self.clock, self.ttft, self.tpot, self.layers, self.match = clock, ttft, tpot, layers, match
        self.n_layers = layers

    def _forward(self, tokens, n_out):
        seconds = (self.ttft if not self.tokens else self.tpot) / self.layers
        for _ in range(self.layers):
            if self._layer_callback is not None:
                self._layer_callback()
            self.clock.t += seconds
        return n_out

    def _crop(self, length: int) -> None:
        pass

    def _argmax(self, n_out: int, first_position: int) -> np.ndarray:
        positions = range(first_position, first_position + n_out)
        return np.array([target_token(p) + (0 if self.match(p) else 1) for p in positions], dtype=np.int64)


class SimulatedVerifier:
    """One verifier rank: a queue of (arrival, kind, fields, payload), resolved as far as the clock allows."""

    def __init__(self, rank: int, latencies, slices: int, wake_s: float = 0.0):
        self.rank, self.latencies, self.slices, self.wake_s = rank, latencies, slices, wake_s
        self.queue: deque = deque()
        self.cache_len = 0
        self.free_at = 0.0
        self.min_epoch = 0
        self.cancelled: set[int] = set()  # tasks cancelled by their ids
        self.streamed = 0  # tokens the stream at the queue's head has sent so far

    def _take_cancel(self, fields, payload) -> None:
        self.min_epoch = max(self.min_epoch, fields["epoch"])
        self.cancelled.update(int(t) for t in payload)

    def _stale(self, fields) -> bool:
        """As the verifier's: an older epoch (a stream excepted) or cancelled by its id."""
        return (fields["epoch"] < self.min_epoch and not fields["stream"]) or fields["task_id"] in self.cancelled

    def _take_cancels(self, until: float) -> None:
        """A forward's cancel check: every CANCEL that has arrived by `until` (probed by tag, out of order)."""
        for item in [m for m in self.queue if m[1] == protocol.CANCEL and m[0] <= until]:
            self._take_cancel(item[2], item[3])
            self.queue.remove(item)

    def _duration(self, fields) -> float:
        """TTFT from an empty cache, else T(n) of the block's n tokens (latencies.verify_s), and T(1) per
        further token of a plain run."""
        lat = self.latencies
        first = lat.target_ttft if fields["base"] == 0 else lat.verify_s(fields["n_out"])
        return first + max(fields["plain"] - 1, 0) * lat.verify_s(1)

    def _checks(self, fields) -> int:
        return self.slices * max(fields["plain"], 1)

    def _start(self, arrival: float, kind) -> float:
        """When the message at the queue's head is taken: a task that finds the verifier idle waits for its
        wake-up; one queued behind a forward is taken as the forward ends."""
        if kind == protocol.CANCEL or arrival < self.free_at:
            return max(self.free_at, arrival)
        return arrival + self.wake_s

    def _token_span(self, start: float, fields, i: int) -> tuple[float, float]:
        """When the forward of a run's token i begins and ends: its first forward (as `_duration`), then
        T(1) per token."""
        first, t1 = self._duration(dict(fields, plain=1)), self.latencies.verify_s(1)
        return (start + first + (i - 1) * t1 if i else start), start + first + i * t1

    def _stream_check_from(self, start: float, fields, t: float) -> float | None:
        """The stream's first cancel check at or after `t` (`slices` per token's forward), None past its end."""
        first, t1 = self._duration(dict(fields, plain=1)), self.latencies.verify_s(1)
        i = 0 if t <= start + first else int((t - start - first) // t1) + 1
        while i < fields["plain"]:
            begin, end = self._token_span(start, fields, i)
            step = (end - begin) / self.slices
            j = max(0, -int(-(t - begin) // step)) if step > 0 else 0
            if j < self.slices:
                return begin + j * step
            i += 1
        return None

    def next_time(self) -> float | None:
        """The next moment at which this verifier's state can change (None: idle)."""
        if not self.queue:
            return None
        arrival, kind, fields, _ = self.queue[0]
        start = self._start(arrival, kind)
        if kind == protocol.CANCEL:
            return start
        duration = self._duration(fields)
        cancels = [m[0] for m in self.queue if m[1] == protocol.CANCEL]
        if fields["stream"]:  # its next token, or the check that sees a CANCEL
            check = self._stream_check_from(start, fields, min(cancels)) if cancels else None
            token_end = self._token_span(start, fields, self.streamed)[1]
            return token_end if check is None else min(token_end, check)
        checks = [start + i * duration / self._checks(fields) for i in range(self._checks(fields))]
        first_check = next((c for c in checks if cancels and c >= min(cancels)), None)
        return min(start + duration, first_check) if first_check is not None else start + duration

    def _stream(self, start: float, until: float, fields, payload) -> list:
        """The stream at the queue's head, resolved up to `until`: a STREAMED message per token decoded, and
        its one reply once a CANCEL naming it stops it or it has decoded all it was asked to. Tokens already
        sent passed their checks before an earlier `until`, which no CANCEL arriving since could change."""
        base, n_tokens, plain = fields["base"], len(payload) - fields["n_extras"], fields["plain"]
        first = base + n_tokens  # the position of its first token
        reply = dict(task_id=fields["task_id"], epoch=fields["epoch"], n_stages=0)
        out = []
        for i in range(self.streamed, plain):
            begin, end = self._token_span(start, fields, i)
            for j in range(self.slices):
                check = begin + j * (end - begin) / self.slices
                if check > until:
                    return out
                self._take_cancels(check)
                if self._stale(fields):  # token i's forward stops; the cache keeps what the earlier ones fed
                    self.cache_len, self.free_at = (base + n_tokens + i - 1 if i else base), check
                    self._pop()
                    times = dict(cache_len=self.cache_len, start_us=_us(start), end_us=_us(check))
                    return out + [(check, protocol.ABORTED, reply | times, ())]
            if end > until:
                return out
            self.streamed = i + 1
            token = dict(task_id=fields["task_id"], epoch=fields["epoch"], position=first + i, end_us=_us(end))
            out.append((end, protocol.STREAMED, token, [target_token(first + i)]))
        end = self._token_span(start, fields, plain - 1)[1]
        self.cache_len, self.free_at = base + n_tokens + plain - 1, end
        self._pop()
        done = dict(
            cache_len=self.cache_len, computed=n_tokens + plain - 1, reused=base, start_us=_us(start), end_us=_us(end)
        )
        return out + [(end, protocol.RESULT, reply | done, [target_token(first + i) for i in range(plain)])]

    def _pop(self) -> None:
        self.queue.popleft()
        self.streamed = 0

    def advance(self, until: float) -> list:
        """Resolve every message whose outcome is already decided at time `until`; return the replies as
        (time, kind, fields, payload)."""
        replies = []
        while self.queue:
            arrival, kind, fields, payload = self.queue[0]
            start = self._start(arrival, kind)
            if start > until:
                break
            if kind == protocol.CANCEL:
                self.queue.popleft()
                self._take_cancel(fields, payload)
                continue
            if fields["base"] > self.cache_len:
                raise protocol.ProtocolError(f"task {fields['task_id']} keeps more than verifier {self.rank} holds")
            run = self._stream if fields["stream"] and not self._stale(fields) else self._task
            replies += run(start, until, fields, payload)
            if self.queue and self.queue[0][2] is fields:  # still running at `until`
                break
        return replies

    def _task(self, start: float, until: float, fields, payload) -> list:
        """The task at the queue's head, resolved up to `until`: its reply once it is stopped by a CANCEL or
        done (then taken off the queue), else nothing yet."""
        base = fields["base"]
        reply = dict(task_id=fields["task_id"], epoch=fields["epoch"], cache_len=base, n_stages=0)
        duration, n_checks = self._duration(fields), self._checks(fields)
        stopped = start if self._stale(fields) else None
        for i in range(n_checks if stopped is None else 0):
            check = start + i * duration / n_checks
            if check > until:
                break
            self._take_cancels(check)
            if self._stale(fields):
                stopped = check
                break
        if stopped is not None:
            self._pop()
            self.cache_len, self.free_at = base, stopped
            return [(stopped, protocol.ABORTED, reply | dict(start_us=_us(start), end_us=_us(stopped)), ())]
        end = start + duration
        if end > until:
            return []
        self._pop()
        n_tokens, plain = len(payload) - fields["n_extras"], fields["plain"]
        first = base + n_tokens - fields["n_out"] + 1  # position of the first token predicted
        verdict = [target_token(p) for p in range(first, first + (plain or fields["n_out"]))]
        computed = n_tokens + max(plain - 1, 0)  # a plain run feeds back all but its last token
        self.cache_len, self.free_at = base + computed, end
        done = dict(cache_len=self.cache_len, computed=computed, reused=base, start_us=_us(start), end_us=_us(end))
        return [(end, protocol.RESULT, reply | done, verdict)]


def _us(seconds: float) -> int:
    return int(round(seconds * 1e6))


class SimulatedPoller:
    """`BackoffPoller.wait_for` on the simulated clock: jump to the next event instead of sleeping, and
    resume the world's `message_s` after it when the wait had to sleep (the back-off's wake-up)."""

    timeout_s = float("inf")

    def __init__(self, world: SimulatedWorld):
        self.world = world

    def wait_for(self, poll, what: str, timeout_s=None):
        slept = False
        while True:
            result = poll()
            if result is not None:
                if slept:
                    self.world.clock.t += self.world.message_s
                return result
            slept = True
            t = self.world.next_time()
            if t is None:
                raise RuntimeError(f"simulated run stalled while waiting for {what}")
            self.world.clock.t = max(self.world.clock.t, t)

    def wait_briefly(self, poll, seconds: float):
        end = self.world.clock.t + seconds
        while True:
            result = poll()
            if result is not None:
                return result
            t = self.world.next_time()
            if t is None or t > end:
                self.world.clock.t = max(self.world.clock.t, end)
                return poll()
            self.world.clock.t = max(self.world.clock.t, t)


class SimulatedWorld:
    """Rank 0's channel (send / poll / poller) to `n_verifiers` simulated verifier ranks."""

    rank = 0

    def __init__(self, latencies, n_verifiers: int, slices=VERIFIER_SLICES, message_s=0.0):
        self.clock = SimulatedClock()
        self.verifiers = {r: SimulatedVerifier(r, latencies, slices, message_s) for r in range(1, n_verifiers + 1)}
        self.message_s = message_s
        self.inbox: list = []  # heap of (arrival, sequence number, source, kind, fields, payload)
        self.sent = 0
        self.poller = SimulatedPoller(self)

    def send(self, dest: int, kind, payload=(), **fields) -> None:
        self.verifiers[dest].queue.append((self.clock.t, kind, fields, list(payload)))

    def _advance(self) -> None:
        for rank, v in self.verifiers.items():
            for t, kind, fields, payload in v.advance(self.clock.t):
                self.sent += 1
                heapq.heappush(self.inbox, (t, self.sent, rank, kind, fields, payload))

    def poll(self, source=None, tag=None):
        self._advance()
        if not self.inbox or self.inbox[0][0] > self.clock.t:
            return None
        _, _, rank, kind, fields, payload = heapq.heappop(self.inbox)
        return rank, protocol.Message(protocol.Kind(kind), fields, np.asarray(payload, dtype=np.int64))

    def next_time(self) -> float | None:
        times = [self.inbox[0][0]] if self.inbox else []
        times += [t for t in (v.next_time() for v in self.verifiers.values()) if t is not None]
        later = [t for t in times if t > self.clock.t]  # poll() has resolved everything up to now
        return min(later) if later else None

    def flush(self) -> None:
        pass


def run_simulated(
    policy: str,
    latencies,
    draws,
    lookahead: int,
    verifiers: int = 1,
    nonsi_thread: bool = False,
    max_blocks_ahead: int = 0,
    drafter_layers: int = 1,
    message_s: float = 0.0,
    warmup=None,
    prompt_tokens: int = 8,
):
    """Run the coordinator's `policy` once per draw (draw[i]: does the draft of generated token i match?),
    one prompt after another on one set of ranks, as a job does; `warmup`: one more draw run first and not
    returned (adaptive speculation learns from it, as from a job's untimed warm-up prompt). Returns the
    RunRecords."""
    from dsi_mpi.decoding.coordinator import SpeculativeDecoder
    from dsi_mpi.decoding.settings import RunSettings
    from dsi_mpi.io.records import RunRecord

    lat = latencies
    n_verifiers = 1 if policy == "si" else int(verifiers)
    world = SimulatedWorld(lat, n_verifiers, message_s=message_s)
    current = {"draw": None}

    def match(position: int) -> bool:
        i = position - prompt_tokens
        draw = current["draw"]
        return bool(draw[i]) if 0 <= i < len(draw) else True

    drafter = SimulatedDrafter(world.clock, lat.drafter_ttft, lat.drafter_tpot, int(drafter_layers), match)
    decoder = SpeculativeDecoder(world, drafter, list(world.verifiers), clock=world.clock)
    prompt = [1] * prompt_tokens
    records = []
    for i, draw in enumerate(([warmup] if warmup is not None else []) + list(draws)):
        current["draw"] = draw
        run = RunSettings(
            max_new_tokens=len(draw),
            lookahead=int(lookahead),
            verifiers=n_verifiers,
            max_blocks_ahead=int(max_blocks_ahead or 0),
            nonsi_thread=nonsi_thread,
            stop_at_eos=False,
        )
        records.append(decoder.generate(policy, prompt, RunRecord(policy, i, str(i)), run))
    return records[1:] if warmup is not None else records
