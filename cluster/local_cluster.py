"""A multi-node Ray cluster on one machine: a head and N worker nodes, each a separate `ray start --block` in its own
process group, started and stopped by exactly the processes it started (never `ray stop`, which stops every Ray
instance on the host, other people's included).

    python cluster/local_cluster.py start --workers 1              # head + 1 worker node; writes the state file
    eval "$(python cluster/local_cluster.py env)"                  # RAY_ADDRESS (+ RAY_API_SERVER_ADDRESS), token
    python pipeline/run.py --config moons --smoke train.placement_strategy=SPREAD
    ray job submit --working-dir . -- python pipeline/run.py --config moons --smoke   # the job's python: this one's
    python cluster/local_cluster.py status
    python cluster/local_cluster.py stop                           # signals exactly the process groups it started

Sized for a 2-core, 24 GiB machine: each node advertises ``--cpus-per-node`` logical CPUs (default 1) and a
``--object-store-mb`` object store (default 300 MB). Security defaults: token authentication on, with a fresh
token in the state directory (``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token`` is never touched); the dashboard and
job server on 127.0.0.1; every other port chosen free (GCS, raylet, object manager, agents bind to all interfaces
and are protected by the token). ``--tls`` adds Ray's gRPC TLS with a self-signed certificate (local testing only).

Importable (the tests use it)::

    from cluster.local_cluster import LocalCluster
    with LocalCluster(workers=1, cpus_per_node=1, object_store_mb=300) as c:
        c.address, c.dashboard_url, c.client_env()    # GCS address, http://127.0.0.1:PORT, env for drivers/CLIs
        c.kill_node(1)                                 # SIGKILL a worker node's process group (a node failure)
        c.add_worker()                                 # a node "returns"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE = Path(tempfile.gettempdir()) / f"flowgmm-cluster-{os.getuid()}" / "state.json"
# Faster failure detection for demos and tests (Ray's defaults take ~30-60 s to declare a node dead).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_bin() -> str:
    cand = Path(sys.executable).parent / "ray"
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


@dataclass
class Node:
    name: str  # "head", "worker1", ...
    pid: int  # the `ray start --block` process; also its process-group id
    temp_dir: str
    log: str
    ports: dict[str, int] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    node_id: str = ""  # filled in once the node has registered (see LocalCluster.node_ids)
    start: int = 0  # the leader's start time (/proc clock ticks): tells its group from a later one under a reused pid

    @property
    def pgid(self) -> int:
        return self.pid

    def group(self) -> list[int]:
        """Live processes of this node's process group. Linux reuses no pid while it names a live group, so a live
        process with this pid but another start time means the group is gone and the number names another one."""
        leader = _stat(self.pid)
        if leader is not None and self.start and int(leader[19]) != self.start:
            return []
        return _group_pids(self.pgid)

    def signal(self, sig: int) -> None:
        """Signal this node's process group, unless its number now names another group (see :meth:`group`)."""
        if self.group():
            _signal_group(self.pgid, sig)


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    """Head + ``workers`` worker nodes on this machine. See the module docstring."""

    def __init__(
        self,
        workers: int = 1,
        cpus_per_node: float = 1,
        object_store_mb: int = 300,
        *,
        head_cpus: float | None = None,
        auth_mode: str = "token",
        tls: bool = False,
        node_env: dict[str, str] | None = None,
        state_file: str | os.PathLike | None = None,
        temp_root: str | os.PathLike | None = None,
        node_resources: bool = True,
        start_timeout_s: float = 180.0,
        keep_files: bool = False,
    ):
        if auth_mode not in ("token", "disabled"):
            raise ValueError("auth_mode must be 'token' or 'disabled'")
        self.n_workers = int(workers)
        self.cpus_per_node = cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.object_store_bytes = int(object_store_mb) * 1_000_000
        self.auth_mode = auth_mode
        self.tls = tls
        self.node_env = dict(node_env or {})
        self.node_resources = node_resources
        self.start_timeout_s = start_timeout_s
        # short: Ray's Unix socket paths (<temp>/session_*/sockets/...) must stay under ~107 characters
        self._owns_root = temp_root is None and not keep_files
        self.root = Path(temp_root) if temp_root else Path(tempfile.mkdtemp(prefix="fgrc", dir="/tmp"))
        self.state_file = Path(state_file) if state_file else self.root / "state.json"
        self.nodes: list[Node] = []
        self.gcs_port = 0
        self.dashboard_port = 0
        self.token_path = ""
        self.tls_files: dict[str, str] = {}
        self._next_worker = 1
        self._node_ip = ""

    # --- addresses and environment -----------------------------------------------------------------------------
    @property
    def node_ip(self) -> str:
        """The IP Ray registers the nodes under (Ray rewrites 127.0.0.1 to the host's address)."""
        if not self._node_ip:
            from ray._private.services import get_node_ip_address

            self._node_ip = get_node_ip_address()
        return self._node_ip

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for drivers and CLIs talking to this cluster (``ray job submit``, ``pipeline/run.py``)."""
        env = dict(os.environ if base is None else base)
        env.update({"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": self.auth_mode})
        env.pop("RAY_AUTH_TOKEN", None)
        if self.auth_mode == "token":
            env["RAY_AUTH_TOKEN_PATH"] = self.token_path
        else:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
        if self.tls:
            env.update(self._tls_env())
        return env

    def _tls_env(self) -> dict[str, str]:
        f = self.tls_files
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": f["cert"],
            "RAY_TLS_SERVER_KEY": f["key"],
            "RAY_TLS_CA_CERT": f["cert"],
        }

    def _node_env(self) -> dict[str, str]:
        # RAY_ADDRESS stays set: every Ray process on the nodes inherits it, so code that looks the cluster up by
        # itself (Train V2's PlacementGroupCleaner queries the State API) finds this cluster and not another Ray
        # instance on the same host ("Found multiple active Ray instances").
        env = self.client_env()
        # a job's `python` (`ray job submit -- python ...`) is the Python that started the nodes, with the stack
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(self.node_env)
        return env

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self.auth_mode == "token":
            self.token_path = str(self.root / "auth_token")
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                import secrets

                fh.write(secrets.token_hex(32))
        if self.tls:
            self._make_tls_files()
        self._start_head()
        for _ in range(self.n_workers):
            self.add_worker(wait=False)
        self.wait_for_nodes(1 + self.n_workers)
        self.write_state()
        return self

    def _start_head(self) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        ports = {
            "gcs": self.gcs_port,
            "dashboard": self.dashboard_port,
            "client_server": free_port(),
            **self._node_ports(),
        }
        res = {"flowgmm_node_head": 1.0} if self.node_resources else {}
        args = [
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--ray-client-server-port={ports['client_server']}",
            f"--num-cpus={self.head_cpus}",
        ]
        node = self._spawn("head", args, ports, res)
        self.nodes.append(node)
        self._wait_dashboard(node)

    def add_worker(self, wait: bool = True, cpus: float | None = None) -> Node:
        """Start one more worker node joining the head (also how a killed node "returns")."""
        i = self._next_worker
        self._next_worker += 1
        name = f"worker{i}"
        res = {f"flowgmm_node_{name}": 1.0} if self.node_resources else {}
        args = [f"--address={self.address}", f"--num-cpus={self.cpus_per_node if cpus is None else cpus}"]
        node = self._spawn(name, args, self._node_ports(), res)
        self.nodes.append(node)
        if wait:
            self.wait_for_nodes(len(self.alive_nodes()))
            self.write_state()
        return node

    def _node_ports(self) -> dict[str, int]:
        return {
            "node_manager": free_port(),
            "object_manager": free_port(),
            "metrics_export": free_port(),
            "dashboard_agent_listen": free_port(),
            "dashboard_agent_grpc": free_port(),
            "runtime_env_agent": free_port(),
        }

    def _spawn(self, name: str, args: list[str], ports: dict[str, int], resources: dict[str, float]) -> Node:
        temp_dir = self.root / name[0] if name == "head" else self.root / f"w{name[6:]}"
        if temp_dir.exists():  # a node restarted under the same name: a fresh directory
            temp_dir = Path(f"{temp_dir}r{int(time.time()) % 10000}")
        temp_dir.mkdir(parents=True)
        log = self.root / f"{name}.log"
        cmd = [
            ray_bin(),
            "start",
            "--block",
            *args,
            f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        ]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                cmd,
                env=self._node_env(),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        st = _stat(proc.pid)
        return Node(name, proc.pid, str(temp_dir), str(log), ports, resources, start=int(st[19]) if st else 0)

    def _wait_dashboard(self, head: Node) -> None:
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            if not _alive(head.pid):
                raise ClusterError(f"ray head exited during start:\n{_tail(head.log)}")
            try:
                urllib.request.urlopen(self._request("/api/version"), timeout=2)
                return
            except Exception:  # noqa: BLE001
                time.sleep(1)
        raise ClusterError(f"ray head did not come up in {self.start_timeout_s:.0f} s:\n{_tail(head.log)}")

    def wait_for_nodes(self, count: int, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Wait until ``count`` nodes are alive in the GCS; fills in each Node.node_id."""
        deadline = time.time() + (timeout_s or self.start_timeout_s)
        alive: list[dict[str, Any]] = []
        while time.time() < deadline:
            for n in self.nodes:
                if not _alive(n.pid) and n.name == "head":
                    raise ClusterError(f"ray head exited:\n{_tail(n.log)}")
            try:
                alive = [x for x in self.gcs_nodes() if x["alive"]]
            except Exception:  # noqa: BLE001
                alive = []
            if len(alive) >= count:
                self._match_node_ids(alive)
                return alive
            time.sleep(1)
        logs = "\n".join(f"--- {n.name}\n{_tail(n.log, 1500)}" for n in self.nodes)
        raise ClusterError(f"only {len(alive)} of {count} nodes alive after waiting:\n{logs}")

    def state_api(self, resource: str, timeout_s: float = 30.0, **params: Any) -> list[dict[str, Any]]:
        """Ray's State API over the dashboard's HTTP endpoint (``/api/v0/<resource>``: nodes, tasks, actors, ...),
        with this cluster's token; the calling process's own Ray state and RAY_AUTH_MODE are left alone."""
        from urllib.parse import urlencode

        q = {"limit": 10000, "detail": "true", "timeout": int(timeout_s), **params}
        req = self._request(f"/api/v0/{resource}?{urlencode(q)}")
        with urllib.request.urlopen(req, timeout=timeout_s + 10) as r:
            body = json.loads(r.read())
        return body["data"]["result"]["result"]

    def _request(self, path: str) -> urllib.request.Request:
        req = urllib.request.Request(f"{self.dashboard_url}{path}")
        if self.auth_mode == "token":
            req.add_header("Authorization", f"Bearer {Path(self.token_path).read_text().strip()}")
        return req

    def gcs_nodes(self) -> list[dict[str, Any]]:
        """All nodes the GCS knows, alive or dead: node_id, alive, resources (total)."""
        return [
            {
                "node_id": n["node_id"],
                "alive": n["state"] == "ALIVE",
                "resources": n.get("resources_total", {}),
                "is_head": n.get("is_head_node", False),
            }
            for n in self.state_api("nodes")
        ]

    def _match_node_ids(self, alive: list[dict[str, Any]]) -> None:
        for n in self.nodes:
            for x in alive:
                marker = next(iter(n.resources), None)
                if marker and marker in x["resources"]:
                    n.node_id = x["node_id"]

    def alive_nodes(self) -> list[Node]:
        return [n for n in self.nodes if _alive(n.pid)]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_processes(self, name: str) -> list[tuple[int, int]]:
        """(pid, start time) of every live process of one node: its `ray start` process group plus descendants in
        other groups (Ray's worker processes call setsid, so they leave the node's group)."""
        return _tree(self.node(name).group())

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        """Kill every process of one node (raylet, object store, agents and its Ray worker processes): a node
        failure. Returns the pids that were signalled."""
        n = self.node(name)
        procs = self.node_processes(name)  # before the raylet dies and its children are re-parented
        n.signal(sig)
        _signal_procs(procs, sig)
        _reap(n.pid)
        return [pid for pid, _ in procs]

    def stop(self, timeout_s: float = 15.0, kill_timeout_s: float = 30.0) -> None:
        """SIGTERM each node's process group (workers first, head last), then SIGKILL whatever of those processes
        and their descendants is left after ``timeout_s`` (`ray start --block` shuts its children down one by one,
        which can take 20-30 s here). Returns once every one is gone; one still there ``kill_timeout_s`` after the
        SIGKILL (a loaded machine tears big processes down slowly) raises ClusterError naming it, and the state file
        stays for another ``stop``."""
        procs = self._processes()
        for n in reversed(self.nodes):
            n.signal(signal.SIGTERM)
        deadline = time.time() + timeout_s
        while time.time() < deadline and self._left(procs):
            self._reap()
            time.sleep(0.5)
        procs += self._processes()  # and the descendants born during the shutdown
        deadline = time.time() + kill_timeout_s
        while left := self._left(procs):  # SIGKILL until gone: a killed process lingers until torn down
            if time.time() > deadline:
                raise ClusterError(
                    f"{len(left)} cluster processes still alive {kill_timeout_s:.0f} s after SIGKILL: {left}"
                )
            for n in reversed(self.nodes):
                n.signal(signal.SIGKILL)
            _signal_procs(procs, signal.SIGKILL)
            self._reap()
            time.sleep(0.1)
        if self.state_file.exists():
            self.state_file.unlink()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _processes(self) -> list[tuple[int, int]]:
        return [p for n in reversed(self.nodes) for p in _tree(n.group())]

    def _left(self, procs: list[tuple[int, int]]) -> list[int]:
        """The pids of ``procs`` and of the nodes' groups still alive."""
        return sorted({pid for pid, start in procs if _same(pid, start)} | {p for n in self.nodes for p in n.group()})

    def _reap(self) -> None:
        for n in self.nodes:
            _reap(n.pid)

    # --- state file --------------------------------------------------------------------------------------------
    def write_state(self) -> None:
        state = {
            "address": self.address,
            "dashboard_url": self.dashboard_url,
            "gcs_port": self.gcs_port,
            "dashboard_port": self.dashboard_port,
            "auth_mode": self.auth_mode,
            "token_path": self.token_path,
            "tls": self.tls,
            "tls_files": self.tls_files,
            "root": str(self.root),
            "cpus_per_node": self.cpus_per_node,
            "head_cpus": self.head_cpus,
            "object_store_bytes": self.object_store_bytes,
            "node_env": self.node_env,
            "next_worker": self._next_worker,
            "nodes": [asdict(n) for n in self.nodes],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    @classmethod
    def from_state(cls, state_file: str | os.PathLike) -> "LocalCluster":
        st = json.loads(Path(state_file).read_text())
        c = cls(
            workers=0,
            cpus_per_node=st["cpus_per_node"],
            object_store_mb=st["object_store_bytes"] // 1_000_000,
            head_cpus=st["head_cpus"],
            auth_mode=st["auth_mode"],
            tls=st["tls"],
            node_env=st["node_env"],
            state_file=state_file,
            temp_root=st["root"],
        )
        c.gcs_port, c.dashboard_port, c.token_path = st["gcs_port"], st["dashboard_port"], st["token_path"]
        c.tls_files, c._next_worker = st["tls_files"], st["next_worker"]
        c._node_ip = st["address"].rsplit(":", 1)[0]
        c.nodes = [Node(**n) for n in st["nodes"]]
        return c

    def _make_tls_files(self) -> None:
        from ray._common.tls_utils import generate_self_signed_tls_certs

        cert, key = generate_self_signed_tls_certs()
        paths = {"cert": self.root / "tls.crt", "key": self.root / "tls.key"}
        for k, text in (("cert", cert), ("key", key)):
            fd = os.open(paths[k], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        self.tls_files = {k: str(v) for k, v in paths.items()}


# --- process helpers --------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if rest[0] == "Z" else rest


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None and int(st[2]) == pgid:
                out.append(int(d))
    return out


def _tree(roots: list[int]) -> list[tuple[int, int]]:
    """``roots`` and all their live descendants, as (pid, start time) so that a reused pid is never signalled."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(d))
                starts[int(d)] = int(st[19])
    out, todo, seen = [], list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in starts:
            continue
        seen.add(pid)
        out.append((pid, starts[pid]))
        todo.extend(children.get(pid, []))
    return out


def _same(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and int(st[19]) == start


def _still_running(procs: list[tuple[int, int]]) -> bool:
    return any(_same(pid, start) for pid, start in procs)


def _signal_procs(procs: list[tuple[int, int]], sig: int) -> None:
    for pid, start in procs:
        if _same(pid, start):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --- CLI --------------------------------------------------------------------------------------------------------
def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster/local_cluster.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=str(DEFAULT_STATE), help=f"state file (default {DEFAULT_STATE})")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a head and N worker nodes, write the state file")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--cpus-per-node", type=float, default=1)
    s.add_argument("--head-cpus", type=float, default=None, help="default: --cpus-per-node")
    s.add_argument("--object-store-mb", type=int, default=300)
    s.add_argument("--auth", choices=("token", "disabled"), default="token")
    s.add_argument("--tls", action="store_true", help="gRPC TLS with a self-signed certificate (testing only)")
    s.add_argument("--fast-health-checks", action="store_true", help="declare a dead node dead in ~5 s")
    a = sub.add_parser("add-worker", help="start one more worker node (e.g. after killing one)")
    a.add_argument("--cpus", type=float, default=None)
    k = sub.add_parser("kill-node", help="SIGKILL one node's processes (simulate a node failure)")
    k.add_argument("name", help="worker1, worker2, ... (or head)")
    sub.add_parser("stop", help="stop exactly the processes this script started")
    sub.add_parser("status", help="print the state and which nodes are alive")
    sub.add_parser("env", help='print export lines for a shell: eval "$(... env)"')
    args = p.parse_args(argv)
    state = Path(args.state)

    if args.cmd == "start":
        if state.exists():
            print(
                f"error: {state} exists: a cluster started by this script is running (stop it first)", file=sys.stderr
            )
            return 1
        c = LocalCluster(
            workers=args.workers,
            cpus_per_node=args.cpus_per_node,
            head_cpus=args.head_cpus,
            object_store_mb=args.object_store_mb,
            auth_mode=args.auth,
            tls=args.tls,
            node_env=FAST_HEALTH_CHECKS if args.fast_health_checks else None,
            state_file=state,
            keep_files=True,
        )
        try:
            c.start()
        except BaseException:
            c.stop()
            raise
        print(f"started {len(c.nodes)} nodes; address {c.address}; dashboard {c.dashboard_url}")
        print(f'state: {state}\nnext: eval "$(python {sys.argv[0]} env)"')
        return 0
    if not state.exists():
        print(f"error: no state file {state}: nothing started by this script", file=sys.stderr)
        return 1
    c = LocalCluster.from_state(state)
    if args.cmd == "stop":
        try:
            c.stop()
        except ClusterError as e:
            print(f"error: {e} (run stop again)", file=sys.stderr)
            return 1
        print(f"stopped (logs kept under {c.root})")
    elif args.cmd == "status":
        for n in c.nodes:
            print(
                f"{n.name:10s} pgid {n.pgid:7d} {'alive' if _alive(n.pid) else 'dead '} "
                f"{len(c.node_processes(n.name))} processes  temp {n.temp_dir}"
            )
        print(f"address {c.address}  dashboard {c.dashboard_url}  auth {c.auth_mode}")
    elif args.cmd == "env":
        env = c.client_env({})
        for key in (
            "RAY_ADDRESS",
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN_PATH",
            "RAY_USE_TLS",
            "RAY_TLS_SERVER_CERT",
            "RAY_TLS_SERVER_KEY",
            "RAY_TLS_CA_CERT",
        ):
            if key in env:
                print(f"export {key}={env[key]}")
        print(f"export RAY_API_SERVER_ADDRESS={c.dashboard_url}")  # the job server, for `ray job submit`
    elif args.cmd == "kill-node":
        pids = c.kill_node(args.name)
        print(f"killed {args.name}: {len(pids)} processes")
    elif args.cmd == "add-worker":
        n = c.add_worker(cpus=args.cpus)
        print(f"started {n.name}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
