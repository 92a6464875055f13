"""Shared fixtures.

``ray_local``: one local Ray instance per test session (2 CPUs, dashboard on 127.0.0.1, 512 MiB object store).
Train workers must ask for ``resources_per_worker={"CPU": 0.5}`` so that Ray Data keeps a CPU for its read tasks.
``shared_data_dir``: the offline MNIST-family files ($FLOWGMM_DATA, else <repo>/../shared/data); missing files
fail the test under CI=true and skip it otherwise.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Before anything imports ray: a local test cluster without token auth, and the repo importable in Ray workers.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
_pp = os.environ.get("PYTHONPATH", "")
if str(REPO) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + _pp if _pp else "")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if ray.is_initialized():
        yield ray
        return
    # The dashboard (on 127.0.0.1) is on: Train V2 removes a finished run's placement groups through the State
    # API it serves, and Tune over Train V2 leaks them without it.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        object_store_memory=512 * 1024**2,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except Exception:  # noqa: BLE001
        pass
    yield ray
    ray.shutdown()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_mnist_dir() -> Path:
    """The shared data directory with the MNIST IDX files: pytest.fail under CI=true, pytest.skip otherwise."""
    d = Path(os.environ.get("FLOWGMM_DATA") or (REPO.parent / "shared" / "data")).expanduser()
    needed = [
        d / "MNIST" / "raw" / f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        msg = f"MNIST files missing under {d} (set FLOWGMM_DATA): {missing[0]}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return require_mnist_dir()


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """A FLOWGMM_HOME shared by the data tests of a session (prepared sets are reused across tests)."""
    return tmp_path_factory.mktemp("flowgmm_home")


@pytest.fixture
def one_thread():
    """Small tensors: one intra-op thread is faster and immune to a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb(module, std: float, seed: int = 0):
    """Move every parameter of a flow block away from its (partly zero) initialisation so the map is not the
    identity (``from conftest import perturb``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


# a line Ray's log monitor prints on the driver from a worker, actor or the raylet: "(PlacementGroupCleaner pid=42)
# ...", "(raylet) ...": with the session's Ray (log_to_driver) such a line from an earlier test's actor can land in
# any later test's captured output
_RAY_LOG_LINE = re.compile(r"^\((?:raylet|[\w.:]+ pid=\d+|pid=\d+)[^)]*\) ")


def own_lines(text: str) -> list[str]:
    """The lines of captured output that the program under test printed, without Ray's forwarded log lines.

    >>> own_lines("(PlacementGroupCleaner pid=7) Failed to query\\nerror: bad\\n(raylet) WARNING: x")
    ['error: bad']
    """
    return [line for line in text.strip().splitlines() if not _RAY_LOG_LINE.match(line)]
