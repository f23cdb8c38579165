"""Load test of ``fiancee serve`` with locust: the routed pipeline against its backbone, same engine and batching.

    python tools/serve_load.py out/demo_faces/pipeline --rates 40,80,120,160 --duration 60 --slo-ms 250

For each mode (``routed``: every request at its own threshold from the mix; ``backbone``: ``--backbone-only``, every
request on the backbone) it starts ``fiancee serve`` on this machine, sends the battery of malformed requests
(``fiancee.serving.battery``: each must get its 4xx), warms up, then runs locust (tools/serve_locustfile.py) at
every arrival rate for ``--duration`` seconds, reads /metrics, and stops the server with SIGINT (it drains). With
``--soak-rate`` (requests/s, or a share like ``80%`` of the most the routed server answered at any rate) the routed
server then takes that rate for ``--soak-seconds`` while the memory of its process tree
is sampled. Prints one JSON report (``python -m fiancee.results record results/NAME.json -- python tools/...``
keeps it). Traffic goes to 127.0.0.1 only.

Requests name a random seed when every input of the pipeline is noise (faces); otherwise (an upscale tile, a label
map) each picks one of ``--task-inputs`` test inputs of the pipeline's own task, drawn once for both modes.

Goodput at the objective: per mode, the most answered-within-``--slo-ms`` requests per second over the rates whose
p99 latency met the objective with nothing rejected or failed; the headline is routed over backbone.

    python tools/serve_load.py --plot results/serve_faces_cpu.json docs/img/serve_faces.png
    python tools/serve_load.py out/demo_faces/pipeline --model-only     # the same batches without the engine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = "tools/serve_locustfile.py"
HOST = "127.0.0.1"


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


_ROLES = (("ProxyActor", "proxy"), ("fiancee:Gateway", "gateway"), ("fiancee:Generator", "generator"))


class Server:
    """``fiancee serve`` in a subprocess of its own group, ready once /health answers."""

    def __init__(self, pipeline: str, port: int, extra: list[str], log: Path):
        self.url = f"http://{HOST}:{port}"
        self.log = open(log, "w")
        cmd = [sys.executable, "-m", "fiancee", "serve", pipeline, "--host", HOST, "--port", str(port), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fiancee serve exited with {self.proc.returncode} before it answered (see {log})")
            try:
                status, body = _get(self.url + "/health", timeout=2)
                if status == 200:
                    self.health = json.loads(body)
                    return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"fiancee serve did not answer /health within 300 s (see {log})")

    def rss_mb(self) -> float:
        """Resident memory of the server and every process it started (Ray's, the replicas)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return round(total / 2**20, 1)

    def cpu_seconds(self) -> dict:
        """CPU time so far of the server's processes, by role: Ray Serve's HTTP proxy, the gateway, the generator
        replicas, and the rest (Ray's own daemons, the controller, the fiancee serve process)."""
        import psutil

        roles = {"proxy": 0.0, "gateway": 0.0, "generator": 0.0, "other": 0.0}
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return roles
        for p in procs:
            try:
                line, t = " ".join(p.cmdline()), p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            role = next((r for key, r in _ROLES if key in line), "other")
            roles[role] += t.user + t.system
        return roles

    def stop(self) -> dict:
        """SIGINT (Ctrl-C): Serve drains what it holds, then Ray stops. Returns the exit code and how long it took."""
        tic = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return {"exit_code": self.proc.returncode, "seconds": round(time.time() - tic, 1)}


def metrics(url: str) -> dict:
    """The service's own counters (GET /metrics) that the report keeps."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text = _get(url + "/metrics")
    out: dict = {"requests": {}, "routes": {}}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == "fiancee_requests_total":
                out["requests"][s.labels["outcome"]] = int(s.value)
            elif s.name == "fiancee_route_requests_total":
                out["routes"][s.labels["route"]] = int(s.value)
            elif s.name in ("fiancee_macs_saved_ratio", "fiancee_queue_length", "fiancee_retries_total"):
                out[s.name[len("fiancee_") :]] = round(s.value, 4)
            elif s.name in ("fiancee_batch_size_sum", "fiancee_batch_size_count"):
                out[s.name[len("fiancee_") :]] = s.value
    if out.get("batch_size_count"):
        out["mean_batch_size"] = round(out.pop("batch_size_sum") / out.pop("batch_size_count"), 2)
    return out


def battery(url: str, health: dict, max_body_kb: int) -> dict:
    """Every malformed request of the battery, and whether it got its 4xx."""
    sys.path.insert(0, str(ROOT / "src"))
    from fiancee.serving.battery import bad_requests
    from fiancee.serving.requests import InputDecl, Limits

    decls = tuple(InputDecl.from_dict(d) for d in health["inputs"])
    cases = []
    for case in bad_requests(decls, Limits(max_body_bytes=max_body_kb * 1024)):
        status, body = _post(url + "/generate", case.body)
        try:
            line = json.loads(body).get("error", "")
        except ValueError:
            line = body[:200].decode(errors="replace")
        ok = status == case.status and case.message in line
        cases.append({"case": case.name, "status": status, "expected": case.status, "as_expected": ok})
    return {"sent": len(cases), "as_expected": sum(c["as_expected"] for c in cases), "cases": cases}


def task_inputs(pipeline: str, decls: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` test inputs of the served pipeline's own task as the ``inputs`` of a request (an image input as a PNG,
    a label map as class indices, anything else as nested lists), for a pipeline whose inputs a seed cannot draw
    (an upscale tile). Empty when every input is noise: then each request names a seed alone."""
    if all(d.get("kind") == "noise" for d in decls):
        return []
    import base64

    sys.path.insert(0, str(ROOT / "src"))
    from fiancee.serving.requests import encode_png
    from fiancee.tasks import get_task

    folder = ROOT / pipeline
    config = folder / ("manifest.json" if (folder / "manifest.json").is_file() else "config.json")
    task = json.loads(config.read_text()).get("task")
    if not task:
        raise SystemExit(f"{config} names no task: its inputs cannot be drawn for the load test")
    drawn = get_task(task).sample_inputs(n, seed=seed, split="test")
    bodies = []
    for i in range(n):
        given = {}
        for d, x in zip(decls, drawn):
            if d.get("kind") == "noise":
                continue
            a = x[i].detach().cpu().numpy()
            if d.get("kind") == "label_map":
                given[d["name"]] = a.argmax(axis=0).tolist()
            elif a.ndim == 3 and a.shape[0] in (1, 3):
                given[d["name"]] = {"png": base64.b64encode(encode_png(a)).decode("ascii")}
            else:
                given[d["name"]] = a.tolist()
        bodies.append(given)
    return bodies


def locust(url: str, rate: float, seconds: int, args, summary: Path) -> dict:
    users = max(4, math.ceil(rate * args.users_per_rps))
    env = {
        **os.environ,
        "FIANCEE_INPUTS": str(args.inputs_file) if args.inputs_file else "",
        "FIANCEE_RATE": str(rate),
        "FIANCEE_USERS": str(users),
        "FIANCEE_MIX": args.mix,
        "FIANCEE_SLO_MS": ",".join(f"{v:g}" for v in args.slos_ms),
        "FIANCEE_SUMMARY": str(summary),
        "FIANCEE_SEED": str(args.seed),
    }
    cmd = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "-u", str(users), "-r", str(users)]
    cmd += ["-t", f"{seconds}s", "--host", url, "--only-summary", "--loglevel", "ERROR", "--stop-timeout", "60"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not summary.is_file():
        raise RuntimeError(f"locust wrote no summary (exit {done.returncode}): {done.stderr[-1000:]}")
    row = json.loads(summary.read_text())
    return {"offered_rps": rate, "users": users, **row}


def run_mode(mode: str, args, out: Path) -> dict:
    extra = list(args.engine) + (["--backbone-only"] if mode == "backbone" else [])
    server = Server(args.pipeline, args.port, extra, out / f"{mode}_server.log")
    result: dict = {"mode": mode, "serve_args": extra, "rows": []}
    try:
        result["description"] = {k: server.health[k] for k in ("runtime", "route_names", "route_macs", "inputs")}
        if args.inputs_file is None:  # drawn once, the same inputs for both modes
            given = task_inputs(args.pipeline, server.health["inputs"], args.task_inputs, args.seed)
            args.inputs_file = ""
            if given:
                args.inputs_file = out / "inputs.json"
                args.inputs_file.write_text(json.dumps(given))
        result["battery"] = battery(server.url, server.health, args.max_body_kb)
        locust(server.url, args.rates[0], args.warmup, args, out / f"{mode}_warmup.json")
        result["rss_mb_after_warmup"] = server.rss_mb()
        for rate in args.rates:
            before, cpu = metrics(server.url), server.cpu_seconds()
            client = resource.getrusage(resource.RUSAGE_CHILDREN)
            row = locust(server.url, rate, args.duration, args, out / f"{mode}_{rate:g}.json")
            client_after, cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN), server.cpu_seconds()
            after = metrics(server.url)
            row["server"] = _delta(before, after)
            n = max(1, row["sent"])
            row["cpu_ms_per_request"] = {k: round((cpu_after[k] - cpu[k]) * 1000 / n, 2) for k in cpu}
            row["cpu_ms_per_request"]["client"] = round(
                (client_after.ru_utime + client_after.ru_stime - client.ru_utime - client.ru_stime) * 1000 / n, 2
            )
            row["rss_mb"] = server.rss_mb()
            result["rows"].append(row)
            print(f"{mode} {rate:g}/s: {json.dumps({k: row[k] for k in _SHOWN})}", file=sys.stderr, flush=True)
        if mode == "routed" and (args.soak_rate or args.soak_share):
            if args.soak_share:  # a share of the capacity this run measured: rounded up to a whole request/s
                top = max(r["throughput_rps"] for r in result["rows"])
                args.soak_rate = float(math.ceil(args.soak_share * top))
            result["soak"] = soak(server, args, out)
        result["metrics"] = metrics(server.url)
    finally:
        result["shutdown"] = server.stop()
    result["goodput_at_objective_rps"] = {f"{v:g}": goodput_at_objective(result["rows"], v) for v in args.slos_ms}
    return result


_SHOWN = ("throughput_rps", "p50_ms", "p99_ms", "rejected", "failed", "mean_batch", "route_shares")


def _delta(before: dict, after: dict) -> dict:
    requests = {k: after["requests"].get(k, 0) - before["requests"].get(k, 0) for k in after["requests"]}
    routes = {k: after["routes"].get(k, 0) - before["routes"].get(k, 0) for k in after["routes"]}
    n = sum(routes.values())
    return {
        "requests": requests,
        "route_shares": {k: round(v / n, 4) for k, v in routes.items()} if n else {},
        "retries": after.get("retries_total", 0) - before.get("retries_total", 0),
    }


def soak(server: Server, args, out: Path) -> dict:
    """The routed server at ``--soak-rate`` for ``--soak-seconds``, its memory sampled every 15 s."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    tic = time.time()

    def sample():
        while not stop.wait(15.0):
            samples.append((round(time.time() - tic, 1), server.rss_mb()))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    row = locust(server.url, args.soak_rate, args.soak_seconds, args, out / "soak.json")
    stop.set()
    thread.join()
    rss = [m for _, m in samples]
    return {
        **row,
        "rss_mb_samples": samples,
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "lost_or_failed": row["sent"] - row["ok"],
    }


def goodput_at_objective(rows: list[dict], slo_ms: float) -> float:
    """The most requests answered within the objective per second, over the rates whose p99 met it with nothing
    rejected or failed (0 when none did)."""
    met = [
        r for r in rows if r["p99_ms"] is not None and r["p99_ms"] <= slo_ms and not r["rejected"] and not r["failed"]
    ]
    return max((r["goodput_rps"][f"{slo_ms:g}"] for r in met), default=0.0)


def model_only(pipeline: str, mix: str, batches=(1, 8, 32), reps: int = 20, seed: int = 0) -> dict:
    """Milliseconds per request of one served batch without the engine (fiancee.serving.batch.run_batch: stacking,
    the pipeline call at each request's own threshold, PNG encoding), routed and backbone-only, on one thread."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from fiancee.serving.batch import load_backend, run_batch
    from fiancee.serving.requests import GenerateRequest, draw_noise

    shares = [(float(t), float(w)) for t, w in (item.split(":") for item in mix.split(","))]
    rng = np.random.default_rng(seed)
    out: dict = {"threads": 1, "reps": reps, "rows": []}
    for mode in ("routed", "backbone"):
        backend = load_backend(ROOT / pipeline, threads=1, backbone_only=mode == "backbone")
        decls = backend.description.decls
        for b in batches:
            ts = rng.choice([t for t, _ in shares], size=b, p=[w for _, w in shares])
            requests = [GenerateRequest(tuple(draw_noise(decls, i).values()), float(t)) for i, t in enumerate(ts)]
            run_batch(backend, requests)
            tic = time.perf_counter()
            for _ in range(reps):
                run_batch(backend, requests)
            ms = (time.perf_counter() - tic) / reps / b * 1000
            out["rows"].append({"mode": mode, "batch": b, "ms_per_request": round(ms, 3)})
    return out


def plot(result_file: str, out: str) -> None:
    """Throughput and p99 latency against the offered rate, both modes, from a recorded result file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(result_file).read_text())["data"]["printed"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, style in (("routed", "o-"), ("backbone", "s--")):
        rows = data["modes"][mode]["rows"]
        x = [r["offered_rps"] for r in rows]
        a.plot(x, [r["throughput_rps"] for r in rows], style, label=mode)
        b.plot(x, [r["p99_ms"] for r in rows], style, label=mode)
    a.plot(x, x, ":", color="gray", label="offered")
    b.axhline(data["slo_ms"][0], color="gray", linestyle=":", label="p99 objective")
    a.set(xlabel="offered requests/s", ylabel="answered requests/s", title="throughput")
    b.set(xlabel="offered requests/s", ylabel="p99 latency (ms)", title="p99 latency", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline", nargs="?", help="pipeline folder or ONNX export, relative to the checkout")
    p.add_argument("--modes", default="routed,backbone")
    p.add_argument("--rates", default="40,80,120,160", help="arrival rates, requests per second")
    p.add_argument("--duration", type=int, default=60, help="seconds per rate")
    p.add_argument("--warmup", type=int, default=10, help="seconds at the first rate before measuring")
    p.add_argument("--slo-ms", default="250", help="p99 latency objectives, comma-separated; the first is the headline")
    p.add_argument("--mix", default="0.05:0.3,0.1:0.5,0.2:0.2", help="thresholds and their shares")
    p.add_argument("--users-per-rps", type=float, default=1.0, help="locust users per request per second")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--max-body-kb", type=int, default=1024)
    p.add_argument("--engine", default="", help="fiancee serve options shared by both modes, e.g. '--replicas 2'")
    p.add_argument(
        "--soak-rate",
        default="",
        help="then the routed server at this rate (requests/s, or e.g. 80%% of the most it answered at any rate) ...",
    )
    p.add_argument("--soak-seconds", type=int, default=600, help="... for this long (memory sampled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--task-inputs",
        type=int,
        default=256,
        help="test inputs of the pipeline's task that requests pick from, when a seed cannot draw them (upscale tiles)",
    )
    p.add_argument("--out", default="out/serve_load", help="locust summaries and server logs")
    p.add_argument("--plot", nargs=2, metavar=("RESULT", "PNG"), help="plot a recorded result file instead")
    p.add_argument("--model-only", action="store_true", help="time one served batch without the engine instead")
    args = p.parse_args(argv)
    if args.plot:
        plot(*args.plot)
        return 0
    if args.model_only:
        print(json.dumps({"pipeline": args.pipeline, "mix": args.mix, **model_only(args.pipeline, args.mix)}))
        return 0
    if not args.pipeline:
        p.error("give the pipeline folder to serve")
    args.rates = [float(r) for r in args.rates.split(",")]
    try:  # checked before any server starts: a share of the routed capacity measured in this run, or a rate
        args.soak_share = float(args.soak_rate[:-1]) / 100 if args.soak_rate.endswith("%") else None
        args.soak_rate = 0.0 if args.soak_share is not None else float(args.soak_rate or 0)
    except ValueError:
        p.error(f"--soak-rate must be requests per second or a share like 80%; got {args.soak_rate!r}")
    args.slos_ms = [float(v) for v in args.slo_ms.split(",")]
    args.engine = args.engine.split()
    args.inputs_file = None
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    import locust as locust_package
    import ray

    report: dict = {
        "pipeline": args.pipeline,
        "engine": f"Ray Serve {ray.__version__}",
        "client": f"locust {locust_package.__version__} (FastHttpUser), on the same machine",
        "serve_args": args.engine,
        "rates": args.rates,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "slo_ms": args.slos_ms,
        "mix": {t: float(w) for t, w in (item.split(":") for item in args.mix.split(","))},
        "modes": {},
    }
    for mode in args.modes.split(","):
        report["modes"][mode] = run_mode(mode, args, out)
    report["requests"] = (
        f"{args.task_inputs} test inputs of the pipeline's task (seed {args.seed}), one picked at random per request"
        if args.inputs_file
        else "a random seed per request (every input noise)"
    )
    modes = report["modes"]
    if "routed" in modes and "backbone" in modes:
        routed, backbone = (modes[m]["goodput_at_objective_rps"] for m in ("routed", "backbone"))
        report["goodput_ratio"] = {k: round(routed[k] / backbone[k], 3) if backbone[k] else None for k in routed}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
