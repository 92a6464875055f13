"""Connecting to Ray, the same way for every command (``run``, ``sweep``, ``score``).

``connect(address)`` attaches to a cluster (``--address`` or ``RAY_ADDRESS``) or starts a local Ray whose dashboard
listens on 127.0.0.1 (Ray Train V2 removes finished runs' placement groups through the State API it serves). A
local Ray's workers import this checkout: its root goes on the ``PYTHONPATH`` they inherit.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def connect(
    address: str | None = None, *, verbose: bool = False, pin_api_address: bool = False, worker_output: bool = True
) -> None:
    """``ray.init`` unless Ray is already initialized in this process.

    Args:
        address: a cluster address; default ``RAY_ADDRESS``, else a new local Ray.
        verbose: keep Ray's own INFO logs (default WARNING).
        pin_api_address: for a local Ray, choose the dashboard port up front and export it as
            ``RAY_API_SERVER_ADDRESS`` to every worker (Tune's placement-group cleaner then queries this cluster
            even when other Ray instances run on the host).
        worker_output: print the stdout/stderr of this job's Ray workers on this console (Ray's
            ``log_to_driver``); a driver that prints its own progress (the sweep) turns it off.
    """
    _default_env()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {}
    if not address:
        export_checkout()
        kwargs = {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
        if pin_api_address:
            kwargs.update(pinned_api_address())
    ray.init(
        address=address,
        log_to_driver=worker_output,
        configure_logging=True,
        logging_level="INFO" if verbose else "WARNING",
        **kwargs,
    )


def expected_resources(address: str | None = None) -> dict[str, float] | None:
    """The resources free to this job's tasks before it starts Ray: the live cluster's when Ray runs in this process,
    a new local Ray's (the CPUs Ray would count, the visible GPUs) when the job would start one, and None when it
    joins a cluster (``address``, ``RAY_ADDRESS`` or a ``ray start`` cluster of this machine: known once
    connected). A job that finds no room for work beside its model can then skip Ray altogether: an idle local Ray
    costs a 2-core machine ~10% of each training step (``bench/bench_overhead.py --idle-ray``).

    >>> free = expected_resources()
    >>> free is None or free["CPU"] >= 1
    True
    """
    import ray

    if ray.is_initialized():
        return dict(ray.available_resources())
    if address or os.environ.get("RAY_ADDRESS"):
        return None
    try:  # what ray.init() decides: join a `ray start` cluster of this machine, or start one with this many CPUs
        from ray._private.services import canonicalize_bootstrap_address
        from ray._private.utils import get_num_cpus

        if canonicalize_bootstrap_address(None) is not None:
            return None
        cores = float(get_num_cpus())
    except Exception:  # Ray's internals moved: connect and ask
        return None
    import torch

    return {"CPU": cores, "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}


def quiet() -> None:
    """The console a person reads: no Ray Data progress bars or execution banners, no per-report logs of Ray Train,
    no duplicated worker prints, no MLflow info lines. Call before Ray starts; errors still print in full."""
    _default_env()
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # Train V2 re-emits every worker print
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("mlflow", "alembic", "ray.data._internal.progress"):  # "Progress bars disabled" is what we asked for
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # "(raylet) ..." lines as plain text, no escape codes
    _drop_raylet_lines(WORKER_POOL_NOTICE)


# The raylet's notice, pushed to every driver, when more Python workers have started than four times its startup
# concurrency (the CPU count): a 2-core machine running one training job (~12 actors) prints it every time
WORKER_POOL_NOTICE = "PYTHON worker processes have been started on node"


def _drop_raylet_lines(*notices: str) -> None:
    """Leave out the raylet's messages to this driver that contain one of ``notices``; all others print as Ray
    prints them. Ray prints them through ``ray._private.worker.print_to_stdstream`` (the driver's error-listener
    thread), looked up by name on each message, so wrapping it there is enough; a Ray without it is left as is."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "flowgmm_drops", None) == notices:
        return

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            lines = [ln for ln in data.get("lines", []) if not any(n in ln for n in notices)]
            if not lines:
                return
            data = {**data, "lines": lines}
        original(data, ignore_prefix)

    print_to_stdstream.flowgmm_drops = notices  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


def _default_env() -> None:
    """Token auth, explicitly (a local Ray enables it anyway, and the CLI needs the same setting). Only before Ray is
    first imported: it reads the setting then, and a local Ray started with another one fails its own auth check."""
    import sys

    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Ray Data reads every Parquet dataset's footers with 32 actors, each a ~110 MiB process: 3.5 GiB of a 5 GiB
    # peak on a 2-core machine (bench/RESULTS.md); one per two of this machine's cores (a local Ray and its workers
    # inherit the setting, read when a dataset is planned)
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", str(footer_actors(os.cpu_count() or 1)))


def footer_actors(cpus: int) -> int:
    """Parquet footer-reading actors for a machine of ``cpus`` cores: one per two, 1 to Ray Data's default 32.

    >>> footer_actors(2), footer_actors(16), footer_actors(128)
    (1, 8, 32)
    """
    return max(1, min(32, cpus // 2))


def export_checkout() -> None:
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])


def pinned_api_address() -> dict[str, Any]:
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return {"dashboard_port": port}
