"""Serve a registered FlowGMM online with Ray Serve: JSON rows in, per row the label, the calibrated class
probabilities, ``log_px``, the out-of-domain flag and the model version that answered.

    flowgmm-serve --model models:/flowgmm-digits@champion                   # http://127.0.0.1:8000/, Ctrl-C stops
    curl -s 127.0.0.1:8000/ -d '[[0, 0, 5, 13, ...]]'                      # 64 pixels per row for digits
    curl -s 127.0.0.1:8000/health                                           # model URI, version, batch sizes

Each replica loads the version the URI resolves to (``@champion`` -> a version number) and, every
``--poll-seconds``, resolves it again: when the alias has moved it loads the new version beside the old one and
swaps them between two batches, so no request is dropped. The same happens at once when Serve's ``user_config``
changes (``reconfigure``). Requests are batched (``@serve.batch``) across clients; the rows of a request are checked
by ``serve_rows`` and a bad one gets HTTP 400 with one line naming the row and the field.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline.results.serve_rows import MAX_BODY_BYTES, BadRequest, answer_rows, model_input, parse_body

APP_NAME = "flowgmm"
log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Loaded:
    """One loaded model version: what a batch needs, taken together so that a swap is one assignment."""

    model: Any
    spec: dict[str, Any]
    names: list[str]
    threshold: float
    version: str


def resolve_version(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """The concrete URI and version a model URI means now: ``models:/name@alias`` -> ``models:/name/7``, "7";
    another URI (``runs:/...``) is its own version."""
    from mlflow import MlflowClient

    m = re.fullmatch(r"models:/([^/@]+)@(.+)", model_uri)
    if m:
        try:
            v = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(m[1], m[2]).version
        except Exception as e:  # noqa: BLE001  unknown model or alias: MlflowException / RestException
            raise BadModel(f"{model_uri}: no such registered model or alias in {tracking_uri} ({_first(e)})") from None
        return f"models:/{m[1]}/{v}", str(v)
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    return model_uri, (m[2] if m else model_uri)


class BadModel(ValueError):
    """The model URI cannot be served (unknown, not a FlowGMM); one line."""


def _first(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


def load_version(model_uri: str, tracking_uri: str) -> Loaded:
    """Resolve ``model_uri`` and load that version (onto CUDA when the replica has a GPU)."""
    import torch

    from flowgmm.spec import load
    from pipeline.core.errors import DataError
    from pipeline.results.score import load_spec

    concrete, version = resolve_version(model_uri, tracking_uri)
    try:
        model_dir, spec = load_spec(concrete, tracking_uri)
    except DataError as e:
        raise BadModel(str(e)) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, spec = load(model_dir, map_location=device)
    model.to(device)
    model.set_variance_scale(float(spec.get("variance_scale", 1.0)))
    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    return Loaded(model, spec, names, float(spec.get("ood_threshold", -np.inf)), version)


@serve.deployment(name=APP_NAME, max_ongoing_requests=64, health_check_period_s=10)
class FlowGMMServer:
    """A replica: the loaded version, the batched model call, the request handler, the version poller."""

    def __init__(self, model_uri: str, tracking_uri: str, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.model_uri, self.tracking_uri, self.max_body_bytes = model_uri, tracking_uri, max_body_bytes
        self.loaded = load_version(model_uri, tracking_uri)
        self.batch_sizes: Counter[int] = Counter()
        self.poll_seconds = 0.0
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: ``model_uri``, ``poll_seconds``, ``max_batch_size``, ``batch_wait_ms``; loads the version
        the URI resolves to now when it differs from the one being served."""
        self.model_uri = str(user_config.get("model_uri", self.model_uri))
        self.poll_seconds = float(user_config.get("poll_seconds", self.poll_seconds))
        self.predict.set_max_batch_size(int(user_config.get("max_batch_size", 32)))
        self.predict.set_batch_wait_timeout_s(float(user_config.get("batch_wait_ms", 5)) / 1000)
        self.refresh()
        if self.poll_seconds > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="flowgmm-version-poll", daemon=True)
            self._poller.start()

    def refresh(self) -> bool:
        """Load the version the URI resolves to if it is not the one served; True when it swapped."""
        with self._lock:
            _, version = resolve_version(self.model_uri, self.tracking_uri)
            if version == self.loaded.version:
                return False
            new = load_version(self.model_uri, self.tracking_uri)
            old, self.loaded = self.loaded.version, new  # the next batch uses the new version
        log.warning("flowgmm: %s moved from version %s to %s", self.model_uri, old, new.version)
        return True

    def _poll(self) -> None:
        while True:
            threading.Event().wait(max(self.poll_seconds, 0.1))
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001  the registry unreachable for a moment: keep serving
                log.warning("flowgmm: cannot resolve %s: %s", self.model_uri, _first(e))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, xs: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        loaded = self.loaded
        rows = await asyncio.to_thread(_score, loaded, np.concatenate(xs))
        self.batch_sizes[len(rows)] += 1
        ends = np.cumsum([len(x) for x in xs])
        return [rows[e - len(x) : e] for x, e in zip(xs, ends)]

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model_uri": self.model_uri,
            "model_version": self.loaded.version,
            "ood_score": self.loaded.spec.get("ood_score", "log_px"),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/health"):
            return JSONResponse(self.health())
        if request.method != "POST":
            return _error(405, f"{request.method} {path or '/'}: POST JSON rows to /, or GET /health")
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            return _error(400, "Content-Length is not a number")
        if declared > self.max_body_bytes:
            return _error(400, f"body of {declared} bytes is over the limit of {self.max_body_bytes} bytes")
        try:
            x = parse_body(await request.body(), self.loaded.spec, self.max_body_bytes)
        except BadRequest as e:
            return _error(400, str(e))
        try:
            rows = await self.predict(x)
        except Exception as e:  # noqa: BLE001  never a stack trace to the client; the replica's log has it
            log.exception("flowgmm: prediction failed")
            return _error(500, f"prediction failed ({type(e).__name__})")
        return JSONResponse({"model_version": rows[0]["model_version"], "predictions": rows})


def _score(loaded: Loaded, x: np.ndarray) -> list[dict[str, Any]]:
    from pipeline.results.serving import predict_frame

    frame = predict_frame(loaded.model, loaded.spec, loaded.names, loaded.threshold, model_input(x, loaded.spec))
    return answer_rows(frame, loaded.names, loaded.version)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(args: argparse.Namespace, tracking_uri: str) -> Any:
    """The Serve application of the command line's settings."""
    options: dict[str, Any] = {"num_cpus": args.cpus_per_replica}
    if args.gpus_per_replica:
        options["num_gpus"] = args.gpus_per_replica
    user_config = {
        "model_uri": args.model,
        "poll_seconds": args.poll_seconds,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
    }
    deployment = FlowGMMServer.options(
        num_replicas=args.replicas, ray_actor_options=options, user_config=user_config, logging_config=_logging(args)
    )
    return deployment.bind(args.model, tracking_uri, args.max_body_bytes)


def app_builder(config: dict[str, str]) -> Any:
    """The application for ``serve run`` and a RayService's ``serveConfigV2``: the command line's options as
    ``key=value`` args (``model`` and ``tracking_uri`` required; the others default as on the command line).

        serve run pipeline.results.serve_app:app_builder model=models:/flowgmm-digits@champion \\
            tracking_uri=sqlite:////abs/home/mlflow.db
    """
    missing = [k for k in ("model", "tracking_uri") if not config.get(k)]
    if missing:
        raise BadModel(f"serve config args: '{missing[0]}' is required (model=URI tracking_uri=URI)")
    known = {a.dest: a for a in _parser()._actions}
    unknown = [k for k in config if k not in known]
    if unknown:
        raise BadModel(f"serve config args: unknown key '{unknown[0]}' (known: model, tracking_uri, replicas, ...)")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
    args = _parser().parse_args(argv)
    check_args(args, bind=False)
    return build_app(args, args.tracking_uri)


def _logging(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's own INFO lines (one per request, per replica start) only with --verbose."""
    return {"log_level": "INFO" if getattr(args, "verbose", False) else "WARNING"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    from pipeline.core.cli import add_cluster_options, add_store_options

    p = argparse.ArgumentParser(prog="flowgmm-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="MLflow model URI, e.g. models:/flowgmm-digits@champion")
    add_store_options(p)
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--cpus-per-replica", type=float, default=0.5)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--poll-seconds", type=float, default=30.0, help="how often replicas re-resolve an alias; 0: never")
    p.add_argument("--max-batch-size", type=int, default=32, help="rows of requests batched into one model call")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument("--shutdown", action="store_true", help="stop the Serve app on --address / RAY_ADDRESS and exit")
    p.add_argument("--verbose", action="store_true", help="Ray's and Serve's own logs")
    add_cluster_options(p, storage=False)
    return p


def check_args(args: argparse.Namespace, bind: bool = True) -> None:
    """The settings' ranges and (``bind``) the port, before Ray starts (one line each)."""
    rules = [
        ("--model", args.model or "", bool(args.model), "a model URI is needed, e.g. models:/flowgmm-digits@champion"),
        ("--port", args.port, 1 <= args.port <= 65535, "expected 1..65535"),
        ("--replicas", args.replicas, args.replicas >= 1, "expected at least 1"),
        ("--cpus-per-replica", args.cpus_per_replica, args.cpus_per_replica > 0, "expected more than 0"),
        ("--gpus-per-replica", args.gpus_per_replica, args.gpus_per_replica >= 0, "expected 0 or more"),
        ("--poll-seconds", args.poll_seconds, args.poll_seconds >= 0, "expected 0 (never) or more"),
        ("--max-batch-size", args.max_batch_size, args.max_batch_size >= 1, "expected at least 1"),
        ("--batch-wait-ms", args.batch_wait_ms, args.batch_wait_ms >= 0, "expected 0 or more"),
        ("--max-body-bytes", args.max_body_bytes, args.max_body_bytes >= 64, "expected at least 64"),
    ]
    for flag, value, ok, why in rules:
        if not ok:
            raise BadModel(f"{flag} {value}: {why}" if value != "" else f"{flag}: {why}")
    if not bind:
        return
    import socket

    with socket.socket() as s:
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise BadModel(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror})") from None


def check_store(tracking_uri: str) -> None:
    """A SQLite store must exist already (MLflow would create an empty one, and then find no model in it)."""
    from pathlib import Path

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        raise BadModel(f"{tracking_uri}: no MLflow store there (train a model first, or give --home / --tracking-uri)")


def serve_forever(args: argparse.Namespace, tracking_uri: str) -> None:
    """Start Serve on the address asked, deploy, print where it answers, wait for Ctrl-C / SIGTERM, stop cleanly."""
    import os
    import signal
    import time

    import ray

    from pipeline.core.raycluster import connect, quiet

    if not args.verbose:
        quiet()
        log.setLevel(logging.WARNING)  # the driver's "Started Serve ..." lines
    connect(args.address, verbose=args.verbose)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=_logging(args))
        log.setLevel(logging.INFO if args.verbose else logging.WARNING)  # serve.start configured it again
        serve.run(build_app(args, tracking_uri), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://{args.host}:{args.port}/"
        print(f"[flowgmm] serving {args.model} on {url} ({args.replicas} replica(s)) · GET {url}health", flush=True)
        print("[flowgmm] Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[flowgmm] stopping", flush=True)
    finally:
        if args.address or os.environ.get("RAY_ADDRESS"):
            serve.shutdown()  # on a cluster the app goes and the cluster stays
        ray.shutdown()  # a local Ray takes its Serve app (controller, proxy, replicas) with it
    print("[flowgmm] stopped", flush=True)


def shutdown(args: argparse.Namespace) -> None:
    import os

    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise BadModel("--shutdown: no cluster to stop it on (give --address or set RAY_ADDRESS)")
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    serve.shutdown()
    print(f"[flowgmm] Serve stopped on {address}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import sys

    from pipeline.core.home import resolve_home
    from pipeline.results.tracking import default_tracking_uri

    args = parse_args(argv)
    try:
        if args.shutdown:
            shutdown(args)
            return 0
        check_args(args)
        if not args.verbose:
            logging.getLogger("mlflow").setLevel(logging.WARNING)
        tracking_uri = args.tracking_uri or default_tracking_uri(resolve_home(args.home))
        check_store(tracking_uri)
        loaded = load_version(args.model, tracking_uri)  # a bad URI is one line before Ray starts
        print(f"[flowgmm] {args.model} is version {loaded.version} ({tracking_uri})", flush=True)
        serve_forever(args, tracking_uri)
    except BadModel as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
