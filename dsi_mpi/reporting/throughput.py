"""Job throughput, from the prompts' attributes saying where and when each ran (results.WHERE_RAN; None
without): the progress line, the summary's throughput lines, and analysis/bench_instances.py.

`throughput`:
- a prompt's span = finished_s - started_s (handed out to its last record written, every algorithm);
  a job's wall_s = last finished_s - first started_s over its prompts (jobs told apart by job_start, so a
  resumed file counts each job's own time);
- tokens_per_s = every generated token (all algorithms) / the sum of the jobs' wall_s;
- per instance index: tokens, prompts, busy_s (sum of its spans), tokens_per_s = its tokens / the wall_s of
  the jobs it ran in (so the instances' figures add up to the job's), utilisation = busy_s / that wall_s.
- busy_s = the sum of every span (the work); busy_tokens_per_s = the sum over instances of tokens / busy_s,
  the rate G instances deliver while each has a prompt (tokens_per_s falls below it only by the idle
  time at the job's start and end: the balance, which `ideal_wall_s` bounds).
- `ideal_wall_s(records, G)`: total work / G + the longest prompt, where work = the prompts' spans.
"""

from __future__ import annotations

import heapq

from dsi_mpi.reporting.metrics import NAN, ratio


def _spans(records: list[dict]) -> dict:
    """job_start -> {prompt index: (instance, started_s, finished_s)} over the records that have placement."""
    jobs: dict = {}
    for r in records:
        if "finished_s" in r and "instance" in r:
            jobs.setdefault(r.get("job_start", 0.0), {})[r["prompt_index"]] = (
                int(r["instance"]),
                r["started_s"],
                r["finished_s"],
            )
    return jobs


def throughput(records: list[dict]) -> dict | None:
    """Generated tokens per second of job time, overall and per instance (module docstring); None if no
    record says where it ran."""
    jobs = _spans(records)
    if not jobs:
        return None
    walls = {job: max(f for _, _, f in p.values()) - min(s for _, s, _ in p.values()) for job, p in jobs.items()}
    per: dict[int, dict] = {}
    for job, prompts in jobs.items():
        for instance, start, end in prompts.values():
            inst = per.setdefault(instance, {"prompts": 0, "tokens": 0, "busy_s": 0.0, "jobs": set()})
            inst["prompts"] += 1
            inst["busy_s"] += end - start
            inst["jobs"].add(job)
    placed = {(r.get("job_start", 0.0), r["prompt_index"]) for r in records if "finished_s" in r}
    total = 0
    for r in records:
        if (r.get("job_start", 0.0), r["prompt_index"]) in placed:
            total += len(r["tokens"])
            per[int(r["instance"])]["tokens"] += len(r["tokens"])
    for inst in per.values():
        wall = sum(walls[job] for job in inst.pop("jobs"))
        inst["wall_s"] = wall
        inst["tokens_per_s"] = ratio(inst["tokens"], wall)
        inst["utilisation"] = ratio(inst["busy_s"], wall)
    wall = sum(walls.values())
    return {
        "tokens": total,
        "wall_s": wall,
        "tokens_per_s": ratio(total, wall),
        "busy_s": sum(inst["busy_s"] for inst in per.values()),
        "busy_tokens_per_s": sum(ratio(inst["tokens"], inst["busy_s"]) for inst in per.values()),
        "instances": dict(sorted(per.items())),
    }


def ideal_wall_s(records: list[dict], instances: int) -> float:
    """The job time of a perfect balance of these records' prompts over `instances`: work / G + longest."""
    spans = [end - start for prompts in _spans(records).values() for _, start, end in prompts.values()]
    return sum(spans) / instances + max(spans) if spans else NAN


def list_schedule_wall_s(records: list[dict], instances: int) -> float:
    """The job time of these records' prompts handed out in prompt order, each to the first instance that is
    free, with no overhead: the best a scheduler that cannot know generation lengths does on this order
    (work / G + longest is reachable only by knowing them)."""
    spans = [(p, end - start) for prompts in _spans(records).values() for p, (_, start, end) in prompts.items()]
    free = [0.0] * instances
    for _, span in sorted(spans):
        heapq.heappush(free, heapq.heappop(free) + span)
    return max(free) if spans else NAN
