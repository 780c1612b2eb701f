"""Per-read retries against shard-only retries on a store that fails requests at random: a simulation.

    python jobs/bench_retries.py                  # 0.1%, 1%, 5% of requests failing; 1,000-file shards; 2,000 shards each
    python jobs/bench_retries.py --shards 200     # quicker

A Monte Carlo of one shard's reads, not a run: each of a shard's files costs `--requests-per-file` requests
(1, as the issue counts; fsspec's HTTP reads cost 2: a HEAD, then the GET), each failing on its own with
probability p and taking a modelled `--latency-s` (50 ms: an object store's time to first byte; decoding and
encoding are left out, so the wall times are the reading's only). Two policies, with the pipeline's defaults:
- shard-only (before pipeline/reads.py): a failed request fails the shard's attempt; the shard is tried again
  from its start after ray.retry_backoff_s (10 s) x 2^(attempt-1), jittered x U(0.75, 1.25) as the driver does
  (pipeline/driver/policy.py), up to ray.max_attempts (3);
- per-read (pipeline/reads.py): a failed request is tried again after source.read_backoff_s (1 s) x 2^(try-1),
  jittered x U(0.5, 1) (pipeline.failures.backoff_delay), up to source.read_attempts (5); only a request that
  failed 5 times fails the attempt, which is then retried whole as above.
Printed per failure rate: the share of shards done within their attempts (simulated, and the closed form beside
it), the mean wall time of a shard (done or given up), the mean shard attempts; then what that means for a
100,000-shard run: shards failed for good, shard attempts run, and hours spent reading.
"""

from __future__ import annotations

import argparse

import numpy as np

RUN_SHARDS = 100_000


def shard_only(rng, shards: int, requests: int, p: float, latency: float, attempts: int, backoff: float):
    """(done, wall seconds, attempts) per shard: any failed request fails the attempt."""
    done = np.zeros(shards, bool)
    wall = np.zeros(shards)
    tries = np.zeros(shards, int)
    for attempt in range(1, attempts + 1):
        live = ~done
        if not live.any():
            break
        tries[live] += 1
        first_failure = rng.geometric(p, live.sum()) if p > 0 else np.full(live.sum(), requests + 1)
        ok = first_failure > requests
        wall[live] += np.minimum(first_failure, requests) * latency
        done[np.flatnonzero(live)[ok]] = True
        again = np.flatnonzero(live)[~ok]
        if attempt < attempts:
            wall[again] += min(300.0, backoff * 2 ** (attempt - 1)) * rng.uniform(0.75, 1.25, again.size)
    return done, wall, tries


def per_read_attempt(rng, requests: int, p: float, latency: float, read_attempts: int, read_backoff: float):
    """One shard attempt under per-read retries: (done, seconds)."""
    failures = rng.geometric(1 - p, requests) - 1 if p > 0 else np.zeros(requests, int)  # failed tries per request
    exhausted = np.flatnonzero(failures >= read_attempts)
    last = exhausted[0] if exhausted.size else requests - 1  # the attempt stops at the first request given up
    used = np.minimum(failures[:last + 1], read_attempts - 1)  # retries each request took (the given-up one: all)
    seconds = float(used.sum() + last + 1) * latency  # each request's tries: its retries and the first
    retried = used[used > 0]
    if retried.size:  # backoff_delay: read_backoff x 2^(try-1) x U(0.5, 1), for each retry
        powers = np.arange(read_attempts - 1)
        delays = read_backoff * 2.0 ** powers * rng.uniform(0.5, 1.0, (retried.size, read_attempts - 1))
        seconds += float((delays * (powers < retried[:, None])).sum())
    return not exhausted.size, seconds


def per_read(rng, shards: int, requests: int, p: float, latency: float, attempts: int, backoff: float,
             read_attempts: int, read_backoff: float):
    done = np.zeros(shards, bool)
    wall = np.zeros(shards)
    tries = np.zeros(shards, int)
    for shard in range(shards):
        for attempt in range(1, attempts + 1):
            tries[shard] += 1
            ok, seconds = per_read_attempt(rng, requests, p, latency, read_attempts, read_backoff)
            wall[shard] += seconds
            if ok:
                done[shard] = True
                break
            if attempt < attempts:
                wall[shard] += min(300.0, backoff * 2 ** (attempt - 1)) * rng.uniform(0.75, 1.25)
    return done, wall, tries


def closed_form_failed(p: float, requests: int, attempts: int, read_attempts: int = 1) -> float:
    """P(a shard fails all `attempts`) when a request fails for good with p^read_attempts (in logs: no underflow)."""
    attempt_failed = -np.expm1(requests * np.log1p(-p ** read_attempts))
    return float(attempt_failed ** attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.001, 0.01, 0.05])
    parser.add_argument("--files", type=int, default=1000, help="files per shard")
    parser.add_argument("--requests-per-file", type=int, default=1)
    parser.add_argument("--latency-s", type=float, default=0.05, help="modelled seconds per request")
    parser.add_argument("--shards", type=int, default=2000, help="simulated shards per rate and policy")
    parser.add_argument("--max-attempts", type=int, default=3, help="ray.max_attempts")
    parser.add_argument("--retry-backoff-s", type=float, default=10.0, help="ray.retry_backoff_s")
    parser.add_argument("--read-attempts", type=int, default=5, help="source.read_attempts")
    parser.add_argument("--read-backoff-s", type=float, default=1.0, help="source.read_backoff_s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    requests = args.files * args.requests_per_file
    shard = (args.max_attempts, args.retry_backoff_s)
    print(f"simulated: {args.shards} shards of {args.files} files ({requests} requests, {args.latency_s * 1e3:g} ms "
          f"each: {requests * args.latency_s:g} s of reading without failures) per rate and policy; "
          f"ray.max_attempts={args.max_attempts}, ray.retry_backoff_s={args.retry_backoff_s:g}, "
          f"source.read_attempts={args.read_attempts}, source.read_backoff_s={args.read_backoff_s:g}\n")
    print("| requests failing | policy | shards done (simulated) | closed form | mean wall s per shard | "
          "mean shard attempts |")
    print("| --- | --- | --- | --- | --- | --- |")
    run_lines = []
    for p in args.rates:
        for name, (done, wall, tries), form in (
                ("shard-only", shard_only(rng, args.shards, requests, p, args.latency_s, *shard),
                 closed_form_failed(p, requests, args.max_attempts)),
                ("per-read", per_read(rng, args.shards, requests, p, args.latency_s, *shard, args.read_attempts,
                                      args.read_backoff_s),
                 closed_form_failed(p, requests, args.max_attempts, args.read_attempts))):
            print(f"| {p:.1%} | {name} | {done.mean():.2%} | {1 - form:.4%} | {wall.mean():.1f} | {tries.mean():.2f} |")
            failed = RUN_SHARDS * form
            shown = f"{failed:,.0f}" if failed >= 1 else f"{failed:.1e}"
            run_lines.append(f"| {p:.1%} | {name} | {shown} | {RUN_SHARDS * tries.mean():,.0f} | "
                             f"{RUN_SHARDS * wall.mean() / 3600:,.0f} |")
    print(f"\nA {RUN_SHARDS:,}-shard run (expected failed shards from the closed form, the rest from the means "
          "above):\n")
    print("| requests failing | policy | shards failed for good | shard attempts | reading hours |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(run_lines))


if __name__ == "__main__":
    main()
