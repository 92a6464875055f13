"""Load test of the online model on loopback: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients, and
the batch sizes the model saw (``@serve.batch``), through the product's command (``pipeline/serve.py``).

    python bench/bench_serve.py --home ~/.flowgmm                          # the default job's digits champion
    python bench/bench_serve.py --home /tmp/h --model models:/flowgmm-breast_cancer@champion --requests 300

Bounded: each concurrency level stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first,
and the server is stopped (SIGTERM, as Ctrl-C) at the end. The request rows are the model's own prepared test split
(``<home>/data/*/test``, the shard whose kind and shape match the model), ``--rows`` rows per request. The server's
``/health`` counts the model calls by batch size; the figures per level are the difference across the level. The
table goes to stdout (the block of bench/RESULTS.md) and its figures to ``bench/results/bench_serve.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # `python bench/bench_serve.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/bench_serve.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=os.environ.get("FLOWGMM_HOME", str(Path.home() / ".flowgmm")))
    p.add_argument("--model", default="models:/flowgmm-digits@champion")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=int, default=400, help="requests per level (at most)")
    p.add_argument("--seconds", type=float, default=40.0, help="seconds per level (at most)")
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--json", default=None, help="also write the figures here")
    add_dry_run(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def request_rows(home: Path, spec: dict[str, Any], n: int) -> list[list[float]]:
    """Up to ``n`` rows of the prepared test split that matches the model (kind and shape), as JSON lists."""
    import pyarrow.parquet as pq

    kind = "image" if spec["kind"] == "image" else "vector"
    for f in sorted(home.glob("data/*/test/*.parquet")):
        meta = json.loads((pq.read_schema(f).metadata or {}).get(b"flowgmm", b"{}"))
        if meta.get("kind") == kind and list(meta.get("shape", [])) == list(spec["shape"]):
            x = np.stack(pq.read_table(f, columns=["x"]).column("x").to_numpy(zero_copy_only=False))[:n]
            return [[int(v) for v in r] if kind == "image" else [float(v) for v in r] for r in x]
    raise SystemExit(f"error: {home}/data: no prepared test split of kind {kind} and shape {spec['shape']}")


def start_server(args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "pipeline" / "serve.py"), "--model", args.model, "--home", args.home]
    cmd += ["--port", str(args.port), "--replicas", str(args.replicas)]
    cmd += ["--cpus-per-replica", str(args.cpus_per_replica), "--max-batch-size", str(args.max_batch_size)]
    cmd += ["--batch-wait-ms", str(args.batch_wait_ms), "--poll-seconds", "0"]
    print("[bench]", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode}")
        try:
            if health(args.port).get("status") == "ok":
                return proc
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit("error: the server did not answer /health within 300 s")


def health(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def level(port: int, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads, one keep-alive connection each, until ``requests`` are answered or ``seconds`` pass."""
    lat: list[float] = []
    errors: list[int] = []
    lock, counter = threading.Lock(), iter(range(requests))
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            conn.request("POST", "/", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errors.append(r.status)

    before = health(port)["batch_sizes"]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = health(port)["batch_sizes"]
    batches = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    ms = np.asarray(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": len(errors),
        "seconds": wall,
        "requests_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "batch_sizes": dict(sorted(batches.items())),
        "mean_batch": sum(k * v for k, v in batches.items()) / max(sum(batches.values()), 1),
    }


def table(results: list[dict[str, Any]], requests: int) -> str:
    """The RESULTS.md table (a level cut short by ``--seconds`` says so), then the batch sizes of each level."""
    lines = [
        "| clients | requests | errors | wall s | requests/s | p50 ms | p99 ms | model calls | mean batch (rows) | "
        "largest batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bound = f" ({r['seconds']:.0f} s bound)" if r["requests"] + r["errors"] < requests else ""
        lines.append(
            f"| {r['clients']} | {r['requests']:,}{bound} | {r['errors']} | {r['seconds']:.1f} | "
            f"{r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {sum(r['batch_sizes'].values()):,} | "
            f"{r['mean_batch']:.1f} | {max(r['batch_sizes'], default=0)} |"
        )
    lines.append("")
    for r in results:
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items())
        lines.append(f"Batch sizes at {r['clients']} client(s) (rows: calls): {sizes}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_if_dry_run(args)
    from pipeline.results.score import load_spec
    from pipeline.results.serve_app import resolve_version
    from pipeline.results.tracking import default_tracking_uri

    uri = default_tracking_uri(Path(args.home))
    concrete, version = resolve_version(args.model, uri)
    _, spec = load_spec(concrete, uri)
    rows = request_rows(Path(args.home), spec, 256)
    bodies = [json.dumps(rows[i : i + args.rows]).encode() for i in range(0, len(rows) - args.rows + 1, args.rows)]
    proc = start_server(args)
    try:
        health_ = health(args.port)
        print(f"[bench] serving {args.model} (version {health_['model_version']}), {len(bodies)} bodies", flush=True)
        level(args.port, bodies, 4, 40, 30.0)  # warm-up, not reported
        results = [level(args.port, bodies, int(c), args.requests, args.seconds) for c in args.clients.split(",")]
    finally:
        proc.send_signal(signal.SIGTERM)  # as Ctrl-C: the server stops Serve and its Ray
        proc.wait(timeout=120)
    figures = {"model": args.model, "version": version, "levels": results}
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2))
    write_result("bench_serve", figures, table(results, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
