"""Locust users for ``fiancee serve``: requests at a fixed total rate with a mix of thresholds (docs/serve.md).

Run by tools/serve_load.py (which reads the summary this writes); by hand::

    FIANCEE_RATE=40 FIANCEE_USERS=40 locust -f tools/serve_locustfile.py --headless -u 40 -r 40 -t 60s --host http://127.0.0.1:8000

Settings from the environment:

- ``FIANCEE_RATE``, ``FIANCEE_USERS``: requests per second, all users together (Poisson arrivals), and the ``-u``
  given to locust (each user sends ``rate / users`` a second: enough users keep the arrivals going when answers slow
  down);
- ``FIANCEE_MIX``: thresholds and their shares, ``0.05:0.3,0.1:0.5,0.2:0.2`` by default;
- ``FIANCEE_SLO_MS``: the latency objectives that goodput counts against, comma-separated (default 250);
- ``FIANCEE_INPUTS``: a JSON file of request ``inputs`` objects (tools/serve_load.py writes it for a pipeline whose
  inputs a seed cannot draw, e.g. upscale tiles as PNGs); each request picks one at random and also names a seed
  (for any noise input). Unset or empty: each request names a seed alone;
- ``FIANCEE_SUMMARY``: a JSON file to write when the test stops: counts, latency percentiles of answered requests
  (client side, milliseconds), throughput, goodput, route shares and MACs saved as the answers report them.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

import gevent
from locust import FastHttpUser, events, task

RATE = float(os.environ.get("FIANCEE_RATE", "10"))
USERS = int(os.environ.get("FIANCEE_USERS", "1"))  # the -u given to locust: each user sends RATE / USERS a second
MIX = [
    (float(t), float(w))
    for t, w in (item.split(":") for item in os.environ.get("FIANCEE_MIX", "0.05:0.3,0.1:0.5,0.2:0.2").split(","))
]
SLOS_MS = [float(v) for v in os.environ.get("FIANCEE_SLO_MS", "250").split(",")]
SEED = int(os.environ.get("FIANCEE_SEED", "0"))
INPUTS = json.loads(open(os.environ["FIANCEE_INPUTS"]).read()) if os.environ.get("FIANCEE_INPUTS") else []

_log: list[tuple[float, float, int, int | None, float | None, int | None]] = []  # start, ms, status, route, saved, b
_window: dict[str, float] = {}


class Client(FastHttpUser):
    network_timeout = 60.0
    connection_timeout = 10.0
    _count = 0

    def wait_time(self):
        # Poisson arrivals: each user starts its requests at exponential gaps of mean USERS / RATE from a schedule of
        # its own (not from when its last answer came back), so the users together send RATE a second at random
        # instants, as independent clients would, rather than in step.
        self.next_start += self.rng.expovariate(RATE / USERS)
        return max(0.0, self.next_start - time.time())

    def on_start(self):
        Client._count += 1
        self.rng = random.Random(SEED * 100_003 + Client._count)
        self.next_start = time.time() + self.rng.expovariate(RATE / USERS)
        gevent.sleep(self.next_start - time.time())  # a random first instant too: no burst as the users start
        self.next_start = time.time()

    @task
    def generate(self):
        t = self.rng.choices([m[0] for m in MIX], weights=[m[1] for m in MIX])[0]
        request = {"max_lpips": t, "seed": self.rng.randrange(2**31)}
        if INPUTS:
            request["inputs"] = self.rng.choice(INPUTS)
        body = json.dumps(request)
        start = time.time()
        tic = time.perf_counter()
        with self.client.post(
            "/generate", data=body, headers={"Content-Type": "application/json"}, catch_response=True
        ) as r:
            ms = (time.perf_counter() - tic) * 1000.0
            route = saved = batch = None
            if r.status_code == 200:
                try:
                    reply = json.loads(r.content)
                    route, saved, batch = reply["route"], reply["macs_saved"], reply["batch_size"]
                    r.success()
                except (ValueError, KeyError) as e:
                    r.failure(f"a 200 without a valid answer: {e}")
            else:
                r.failure(f"status {r.status_code}")
            _log.append((start, ms, r.status_code or 0, route, saved, batch))


@events.test_start.add_listener
def _started(environment, **kwargs):
    _log.clear()
    _window["start"] = time.time()


@events.test_stop.add_listener
def _stopped(environment, **kwargs):
    _window["stop"] = time.time()
    path = os.environ.get("FIANCEE_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump(summarize(_log, _window["stop"] - _window.get("start", _window["stop"]), SLOS_MS), f, indent=1)


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    k = min(len(sorted_ms) - 1, max(0, math.ceil(q / 100.0 * len(sorted_ms)) - 1))  # nearest rank
    return round(sorted_ms[k], 2)


def summarize(log: list, seconds: float, slos_ms: list[float]) -> dict:
    """Counts, latency percentiles of answered requests, throughput and goodput (answered within each objective of
    ``slos_ms``, per second), route shares and mean MACs saved over one run's request log."""
    ok = [e for e in log if e[2] == 200]
    ms = sorted(e[1] for e in ok)
    routes: dict[str, int] = {}
    for e in ok:
        routes[str(e[3])] = routes.get(str(e[3]), 0) + 1
    statuses: dict[str, int] = {}
    for e in log:
        statuses[str(e[2])] = statuses.get(str(e[2]), 0) + 1
    seconds = max(seconds, 1e-9)
    return {
        "seconds": round(seconds, 2),
        "sent": len(log),
        "ok": len(ok),
        "rejected": sum(1 for e in log if e[2] in (429, 503)),
        "failed": sum(1 for e in log if e[2] not in (200, 429, 503)),
        "statuses": statuses,
        "throughput_rps": round(len(ok) / seconds, 2),
        "goodput_rps": {f"{slo:g}": round(sum(1 for m in ms if m <= slo) / seconds, 2) for slo in slos_ms},
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": round(ms[-1], 2) if ms else None,
        "route_shares": {r: round(n / len(ok), 4) for r, n in sorted(routes.items())} if ok else {},
        "macs_saved": round(sum(e[4] for e in ok) / len(ok), 4) if ok else None,
        "mean_batch": round(sum(e[5] for e in ok) / len(ok), 2) if ok else None,
    }
