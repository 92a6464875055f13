"""Connecting to Ray, the same way for every command (``run``, ``sweep``, ``score``).

``connect(address)`` attaches to a cluster (``--address`` or ``RAY_ADDRESS``) or starts a local Ray whose dashboard
listens on 127.0.0.1 (Ray Train V2 removes finished runs' placement groups through the State API it serves). A
local Ray's workers import this checkout: its root goes on the ``PYTHONPATH`` they inherit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def connect(address: str | None = None, *, verbose: bool = False, pin_api_address: bool = False) -> None:
    """``ray.init`` unless Ray is already initialized in this process.

    Args:
        address: a cluster address; default ``RAY_ADDRESS``, else a new local Ray.
        verbose: keep Ray's own INFO logs (default WARNING).
        pin_api_address: for a local Ray, choose the dashboard port up front and export it as
            ``RAY_API_SERVER_ADDRESS`` to every worker (Tune's placement-group cleaner then queries this cluster
            even when other Ray instances run on the host).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # explicit; a local Ray enables token auth anyway
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {}
    if not address:
        export_checkout()
        kwargs = {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
        if pin_api_address:
            kwargs.update(pinned_api_address())
    ray.init(
        address=address,
        log_to_driver=True,
        configure_logging=True,
        logging_level="INFO" if verbose else "WARNING",
        **kwargs,
    )


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
