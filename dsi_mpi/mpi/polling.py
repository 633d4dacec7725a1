"""Waiting without burning a core, and never forever.

A blocking MPI wait spins at 100% CPU on every MPI runtime, and with more ranks than cores that spin
steals the core a working rank needs (measured here: 8-16 ms per message under MPICH).
So every wait in dsi-mpi is a poll: test, spin briefly, then sleep with a doubling back-off, and give
up with `WatchdogTimeout` once the deadline passes.

How long to spin depends on the node (runtime.poll_spin_s = "auto", resolved at start-up by
`spin_for_node`). Where every torch thread of every rank on the node has a core of its own, a waiting rank
spins up to SPIN_SPARE_CORES_S: the core it spins on has nothing else to run, and a sleep costs the
message its wake-up (measured on the default pair, 2 ranks on 2 cores, k 4: si spent 0.84 ms per
verification outside any forward, 7.9% of its time, with the 50 us spin; 0.44 ms and 4.8% spinning 20 ms;
`analysis/bench_orchestration.py`). Longer waits (a large model's forward) then sleep, where the wake-up is
a small share. With fewer cores than threads, SPIN_SHARED_CORES_S: a spin there steals a working rank's core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dsi_mpi.io.config import RuntimeConfig

T = TypeVar("T")

SPIN_SPARE_CORES_S = 0.02
SPIN_SHARED_CORES_S = 5e-5


class WatchdogTimeout(RuntimeError):
    """Raised when a wait outlives runtime.timeout_s; the message names what was awaited."""


class BackoffPoller:
    """Poll a condition: spin for `spin_s`, then sleep from `min_sleep_s` doubling up to `max_sleep_s`."""

    def __init__(
        self, spin_s: float = 5e-5, min_sleep_s: float = 5e-5, max_sleep_s: float = 5e-4, timeout_s: float = 300.0
    ):
        self.spin_s = spin_s
        self.min_sleep_s = min_sleep_s
        self.max_sleep_s = max_sleep_s
        self.timeout_s = timeout_s
        self.idle_s = 0.0  # total time spent waiting, for the records

    def wait_for(
        self,
        poll: Callable[[], T | None],
        what: str,
        timeout_s: float | None = None,
        while_spinning: Callable[[], None] | None = None,
    ) -> T:
        """Return the first non-None `poll()` result; raise WatchdogTimeout naming `what` past the deadline.
        `while_spinning` runs between two polls of the spin (not of the sleeps): a verifier's idle forwards."""
        result = poll()
        if result is not None:
            return result
        start = time.perf_counter()
        deadline = start + (self.timeout_s if timeout_s is None else timeout_s)
        spin_until = start + self.spin_s
        sleep = self.min_sleep_s
        try:
            while True:
                result = poll()
                if result is not None:
                    return result
                now = time.perf_counter()
                if now > deadline:
                    raise WatchdogTimeout(f"no progress for {now - start:.1f} s while waiting for {what}")
                if now >= spin_until:
                    time.sleep(sleep)
                    sleep = min(sleep * 2, self.max_sleep_s)
                elif while_spinning is not None:
                    while_spinning()
        finally:
            self.idle_s += time.perf_counter() - start

    def wait_briefly(self, poll: Callable[[], T | None], seconds: float) -> T | None:
        """`poll()`'s first result within `seconds`, else None; spinning: a wait this short is worth a core."""
        end = time.perf_counter() + seconds
        while True:
            result = poll()
            if result is not None or time.perf_counter() >= end:
                return result

    def complete(self, request, what: str, timeout_s: float | None = None) -> None:
        """Wait for a nonblocking MPI request (anything with `Test()`) to complete, under the watchdog."""
        self.wait_for(lambda: True if request.Test() else None, what, timeout_s)


def poller_from_config(runtime: RuntimeConfig) -> BackoffPoller:
    """The job's poller; an "auto" spin starts short (start-up collectives) until `spin_for_node` knows the node."""
    spin = SPIN_SHARED_CORES_S if runtime.poll_spin_s == "auto" else runtime.poll_spin_s
    return BackoffPoller(spin_s=spin, max_sleep_s=runtime.poll_max_sleep_s, timeout_s=runtime.timeout_s)


def spin_for_node(setting, threads_on_node: int, cores_on_node: int) -> float:
    """runtime.poll_spin_s resolved for a node whose ranks run `threads_on_node` torch threads in all on
    `cores_on_node` cores (see the module's docstring)."""
    if setting != "auto":
        return float(setting)
    return SPIN_SPARE_CORES_S if threads_on_node <= cores_on_node else SPIN_SHARED_CORES_S
