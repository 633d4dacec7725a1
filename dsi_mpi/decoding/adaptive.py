"""Adaptive speculation: how many drafts the next block gets, from what the run has measured so far.

Why: a fixed lookahead k is right for one drafter on one machine only. A useless drafter (acceptance near 0)
or a slow one (c near 1) makes every draft a loss, and then the right k is 0: the verifiers just decode
with the target, and the job runs as fast as plain decoding, even with one verifier.

The rule, from the paper's time model (Leviathan et al. 2023, eq. 1; Timor et al. 2025, section 3):
a block of k drafts verified from the true prefix commits E(k) = 1 + a + ... + a^k tokens on average
(accepted drafts, then the target's recovered or bonus token), where a is the acceptance rate. It costs
    si:  k d + r + T(k + 1)                  (drafting, then one verification of k + 1 tokens)
    dsi: T(k + 1) + (1 - a^(k+1)) (k d + r)  (the next block, and the draft the bonus token checks, are drafted
                                              during this one's verification; unless all k + 1 stand, k drafts
                                              must be made again before sending)
where d is the drafter's seconds per draft, T(n) the seconds from sending an n-token verification
to reading its result (measured, messages included), and r the rest of a restart: the seconds from the
result that restarts drafting (si's every result, a rejection) to the next block's send, beyond its k
drafts at d (the coordinator's own work, and the catch-up step after a fully accepted block; measured).
With the default pair on 2 cores (a 5M-parameter target at 0.6-1.3 ms per token) r came to 0.3-0.5 ms,
and leaving it out made si speculate at 0.75-0.92x plain decoding's speed (0.91-0.97x with it: make run). k = 0 costs T(1) for one token: plain decoding. The
coordinator takes the k in 0..MAX_LOOKAHEAD with the most tokens per second, E(k) / cost(k), and keeps
its current k unless another is better by more than HYSTERESIS (so that noise does not flap it).

Measured as the run goes, per policy, carried from prompt to prompt and updated within each: a from every
draft compared with the target (accepted / compared); d from every finished draft step that fed the drafter
one token (a step that also feeds it the tokens committed since it last ran, after a plain run or a bonus
token, is a catch-up: timed apart, and taken for d only until a one-token step has been timed, since it is an
upper bound); T(n) per n, a small table, from every verification result of n tokens (plain runs give T(1)
per token). T(n) of a size not measured yet is read off the table: linear between measured sizes, past the
largest with the measured sizes' mean growth per token, flat below the smallest. On a GPU and on the packed
CPU backend T hardly grows with n; with Hugging Face eager on a CPU it does, and not even monotonically
(analysis/forward_cost.py). Each estimate is an exponentially weighted mean with a half-life of HALF_LIFE
observations; a starts from a prior of PRIOR_ACCEPTANCE worth PRIOR_WEIGHT comparisons. si's are normalised by
their weights (near the plain mean while few), and at k > 0 one si block in NEIGHBOUR_EVERY goes out at k + 1 or
k - 1, alternately, so that the sizes next to the chosen one keep being timed: on a shared machine one unlucky
timing of a size that is then not chosen priced it out for good (a SmolLM2 job ran si at k = 1 for all its 213
blocks where k = 3 was best; analysis/adaptive_noise.py plays si's loop on noisy latencies: 1.317x -> 1.350x
nonsi at SmolLM2's, the jobs under 0.95x the best fixed k's 35% -> 25%; noise-free 1.365x -> 1.361x, the
neighbours' cost). dsi keeps moving averages that start at their first value, and no neighbours: its blocks
queue behind one another at the verifier, so its round trips overstate T(n), and its first timings (an
exploration block's, which does not queue) held its estimates down; normalised, they priced speculation out
and dsi went to plain decoding on the default pair (make run, three alternating pairs: dsi 0.947x, 0.927x,
0.902x nonsi against 0.977x, 1.035x, 1.086x with the old estimates, 455 of 512 tokens in plain runs). dsi's
T(n) wants its round trips less their queueing first.

A run starts at k = 0: T(1) is measured first, by PROBE_MIN tokens of plain decoding (which lose nothing
against plain decoding), then the first exploration block times a draft and T(3), and from then on the
model decides. Starting at k = 1 instead would never time T(1) while drafts are worth sending, and the model
would take T(1) = T(2): measured with SmolLM2-135M on a CPU core, T(2) = 1.66 T(1)
(analysis/forward_cost.py), so a drafter accepted at 0.23 kept k = 1 and ran at 0.59x plain decoding.

At k = 0 nothing is drafted, so a would never be measured again: after PROBE_MIN blocks of no drafts a block
of PROBE_DRAFTS drafts goes out instead (an exploration block), and the interval doubles after each one, up to
PROBE_MAX, while k stays 0. Two drafts, because the first step of a block after a plain run is a catch-up:
the second times one draft, so d is measured, not its upper bound (with one draft per exploration block, a
SmolLM2 drafter of 6.2 ms per draft was priced at 16.8 ms and never speculated). Meanwhile each task asks the verifier to decode the tokens up to the next
exploration block by itself (`plain_run`): one message round trip per run instead of one per token. A probe costs at most d + T(2) - T(1) every PROBE_MAX tokens.

With speculation parallelism (dsi with `servers` >= 2 verifiers and the non-SI thread) the rate above is not
the right price: the non-SI thread keeps the committed text at plain decoding's pace whatever k is, so a
block's cost is not paid on the critical path; what k must avoid is blocks that queue for a verifier. The rule
then takes the smallest k whose blocks are formed no faster than the servers verify them,
servers x k x d >= T(k + 1) (the paper's gate, V >= ceil(1 / (k c)), at the measured T(n); `unqueued_lookahead`).
Simulated over c 0.05-1, a 0-0.95 and 2-7 verifiers (analysis/sp_grid.py, tests/unit/
test_speculation_parallelism.py) it is the best fixed k or within a few percent of it, and never slower than
plain decoding by more than the grid's noise.

How it differs from the anchors:
* HF `num_assistant_tokens_schedule="heuristic"`: k + 2 after a fully accepted block, k - 1 otherwise,
  never below 1. It reacts to acceptance only, never to latencies, and cannot reach 0: a useless drafter
  still costs a draft and a longer verification per token.
* HF `assistant_confidence_threshold` (DISCO): stops a block early when the drafter's top probability falls
  below a threshold. That is a per-token signal this rule does not use yet (dsi-mpi's greedy drafters
  return tokens, not probabilities); it could end a block early on top of the k chosen here.
* SGLang's adaptive speculative decoding picks the draft length from recent acceptance lengths against
  thresholds tuned offline; here the choice is the time model's optimum at the measured latencies.
* PEARL (pre-verify / post-verify): verifies the first draft while drafting the rest, and drafts during
  verification. dsi's pipeline already overlaps drafting and verification; the dsi cost above prices it.
"""

from __future__ import annotations

MAX_LOOKAHEAD = 12
INITIAL_LOOKAHEAD = 0  # T(1) first (see above)
HALF_LIFE = 32.0
PRIOR_ACCEPTANCE, PRIOR_WEIGHT = 0.5, 2.0
HYSTERESIS = 0.02
PROBE_MIN, PROBE_MAX = 4, 64
PROBE_DRAFTS = 2
NEIGHBOUR_EVERY = 8  # at k > 0, one block in this many goes out at k + 1 or k - 1, alternately (see next_lookahead)
QUEUE_SLACK = 0.02  # a k at the gate's edge (servers x k x d = T) counts as unqueued despite measurement noise


class Ema:
    """Exponentially weighted mean, the weights halving every `half_life` observations (None until the first).
    `normalised` (si's): divided by the weights' sum, so near the plain mean while few; else (dsi's) a moving
    average that starts at its first value and gives each later one 1 - 2^(-1 / half_life) of the weight (see
    the module docstring for why the two differ)."""

    def __init__(self, half_life: float = HALF_LIFE, normalised: bool = True):
        self.keep = 0.5 ** (1.0 / half_life)
        self.normalised = normalised
        self.total = self.weight = 0.0

    def add(self, x: float) -> None:
        if self.normalised or not self.weight:
            self.total, self.weight = self.keep * self.total + x, self.keep * self.weight + 1.0
        else:
            self.total = self.keep * self.total + (1 - self.keep) * x  # weight stays 1: the plain moving average

    @property
    def value(self) -> float | None:
        return self.total / self.weight if self.weight else None


class AdaptiveLookahead:
    """The estimates and the choice of k for one policy ("si" or "dsi"); see the module docstring."""

    def __init__(self, policy: str, max_lookahead: int = MAX_LOOKAHEAD):
        if policy not in ("si", "dsi"):
            raise ValueError(policy)
        self.policy = policy
        self.max_lookahead = max_lookahead
        self.servers = 1  # verifiers taking blocks at once with the non-SI thread running (dsi; set per prompt)
        self.keep = 0.5 ** (1.0 / HALF_LIFE)
        self.accepted, self.compared = PRIOR_ACCEPTANCE * PRIOR_WEIGHT, PRIOR_WEIGHT
        self.steady = policy == "si"  # normalised means and neighbour blocks (see the module docstring)
        self.draft_s = self._ema()  # a draft step that fed one token
        self.catch_up_s = self._ema()  # a draft step that also fed committed tokens (an upper bound of d)
        self.restart_s = self._ema()  # r: a restart's seconds beyond its drafts at d (see the module docstring)
        self.verify_s: dict[int, Ema] = {}  # T(n): n tokens verified -> seconds to the result
        self._known: list[tuple[int, float]] | None = None  # verify_s sorted, until the next verification
        self.k = INITIAL_LOOKAHEAD
        self.probe_interval = PROBE_MIN
        self.plain_blocks = 0  # verifications of no drafts since the last exploration block
        self.blocks_at_k = 0  # blocks at the chosen k > 0 since the last neighbour block
        self.neighbour_up = False  # the next neighbour block's side

    def _ema(self) -> Ema:
        return Ema(normalised=self.steady)

    # ------------------------------------------------------------------ observations
    def observe_acceptance(self, accepted: int, compared: int) -> None:
        for i in range(compared):
            self.accepted = self.keep * self.accepted + (1 if i < accepted else 0)
            self.compared = self.keep * self.compared + 1

    def observe_draft(self, seconds: float, fed: int = 1) -> None:
        """One finished draft step that fed the drafter `fed` tokens (more than 1: a catch-up)."""
        (self.draft_s if fed <= 1 else self.catch_up_s).add(seconds)

    def observe_restart(self, seconds: float) -> None:
        """From a restart of drafting to the next block's send, less its drafts at d."""
        self.restart_s.add(seconds)

    def observe_verification(self, seconds: float, tokens: int, plain: int = 0) -> None:
        """One verification's round trip; plain > 0: a plain run of that many tokens (T(1) per token)."""
        n, seconds = (1, seconds / plain) if plain else (max(tokens, 1), seconds)
        self.verify_s.setdefault(n, self._ema()).add(seconds)
        self._known = None
        if n == 1:
            self.plain_blocks += plain or 1

    # ------------------------------------------------------------------ the model
    @property
    def acceptance(self) -> float:
        return self.accepted / self.compared

    @property
    def draft_seconds(self) -> float | None:
        """d: the one-token draft step, else the catch-up step's upper bound, else unknown."""
        return self.draft_s.value if self.draft_s.value is not None else self.catch_up_s.value

    def verification_s(self, tokens: int) -> float | None:
        """T(n) from the measured table (see the module docstring); None before any verification."""
        if self._known is None:  # best() asks for every k at each block: sorted once per verification
            self._known = sorted((n, e.value) for n, e in self.verify_s.items() if e.value is not None)
        known = self._known
        if not known:
            return None
        below = [(n, t) for n, t in known if n <= tokens]
        above = [(n, t) for n, t in known if n >= tokens]
        if below and above:
            (n0, t0), (n1, t1) = below[-1], above[0]
            return t0 if n1 == n0 else t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)
        if not below:
            return known[0][1]
        (n0, t0), (n1, t1) = known[0], known[-1]
        growth = max(t1 - t0, 0.0) / (n1 - n0) if n1 > n0 else 0.0
        return t1 + growth * (tokens - n1)

    def rate(self, k: int) -> float | None:
        """Expected committed tokens per second with k drafts per block (None until latencies are known)."""
        d, t = self.draft_seconds, self.verification_s(k + 1)
        if t is None or (k > 0 and d is None):
            return None
        a = min(max(self.acceptance, 0.0), 1.0)
        tokens = k + 1 if a >= 1.0 else (1 - a ** (k + 1)) / (1 - a)
        restart = 0.0 if k == 0 else k * d + max(self.restart_s.value or 0.0, 0.0)
        drafting = restart if self.policy == "si" else (1 - a ** (k + 1)) * restart
        return tokens / max(t + drafting, 1e-12)

    def unqueued_lookahead(self) -> int | None:
        """With speculation parallelism: the smallest k with servers x k x d >= T(k + 1), blocks formed no
        faster than the servers verify them (see the module docstring); None: not measured yet, or none is."""
        d = self.draft_seconds
        if d is None:
            return None
        for k in range(1, self.max_lookahead + 1):
            t = self.verification_s(k + 1)
            if t is None:
                return None
            if self.servers * k * d >= (1 - QUEUE_SLACK) * t:
                return k
        return None

    def best(self) -> int:
        """The k of the highest rate, the current one kept unless another beats it by HYSTERESIS; with
        speculation parallelism the unqueued k (the non-SI thread keeps any k at plain decoding's pace)."""
        if self.policy == "dsi" and self.servers >= 2:
            k = self.unqueued_lookahead()
            if k is not None:
                return k
        rates = [self.rate(k) for k in range(self.max_lookahead + 1)]
        if any(r is None for r in rates):  # not measured yet
            return self.k
        best = max(range(len(rates)), key=lambda k: (rates[k], -k))
        return best if rates[best] > rates[self.k] * (1 + HYSTERESIS) else self.k

    def next_lookahead(self) -> int:
        """k for the next block; at k = 0, now and then one exploration block of PROBE_DRAFTS drafts."""
        self.k = self.best()
        if self.k > 0:
            self.probe_interval, self.plain_blocks = PROBE_MIN, 0
            return self._now_and_then_a_neighbour(self.k) if self.steady else self.k
        if self.plain_blocks >= self.probe_interval:
            self.plain_blocks = 0
            self.probe_interval = min(2 * self.probe_interval, PROBE_MAX)
            return PROBE_DRAFTS
        return 0

    def _now_and_then_a_neighbour(self, k: int) -> int:
        """k, but every NEIGHBOUR_EVERY-th block k + 1 or k - 1 (alternately, within 1..max): T(n) of a size
        that is not chosen is never timed again, so one unlucky timing could price it out for good (measured
        with noisy latencies: analysis/adaptive_noise.py). A neighbour costs a few percent on one block in
        NEIGHBOUR_EVERY."""
        self.blocks_at_k += 1
        if self.blocks_at_k < NEIGHBOUR_EVERY:
            return k
        self.blocks_at_k = 0
        up, down = k < self.max_lookahead, k > 1
        if not (up or down):
            return k
        self.neighbour_up = not self.neighbour_up
        return k + 1 if up and (self.neighbour_up or not down) else k - 1

    def plain_run(self, tokens_left: int) -> int:
        """At k = 0: how many tokens the verifier decodes in one task, the rest of the way to the next
        exploration block, so that plain decoding costs one message per run, not one per token."""
        return max(1, min(self.probe_interval - self.plain_blocks, tokens_left))
