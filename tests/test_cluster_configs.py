"""The cluster configurations, without starting anything: the Ray cluster launcher YAML against the schema that
ships inside Ray, the KubeRay RayJob's required fields, the MLflow server script, the security defaults they
share, and that checkpoints and models load without unpickling."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


# --- Ray cluster launcher -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())


def test_launcher_yaml_validates_against_rays_schema(launcher):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(launcher, schema)
    # and the way `ray up` does it: provider defaults filled in, then Ray's own validation
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(launcher))


def test_launcher_yaml_rejects_a_broken_config(launcher):
    """The schema check has teeth: a misspelled node-type field fails."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    bad = json.loads(json.dumps(launcher))
    bad["available_node_types"]["worker.gpu"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_launcher_cpu_head_gpu_workers_autoscaling_bounds(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert gpu_types, "no worker node type"
    for t in gpu_types:
        assert t["resources"]["GPU"] >= 1
        assert 0 <= t["min_workers"] <= t["max_workers"] <= launcher["max_workers"]
    assert launcher["idle_timeout_minutes"] > 0


def test_launcher_installs_the_project_on_every_node(launcher):
    mounts = launcher["file_mounts"]
    assert mounts.get("~/flowgmm-ray") == ".", "the repository is copied to every node"
    setup = " ".join(launcher["setup_commands"])  # setup_commands run on the head and on every worker
    assert "pip install" in setup and "-e ~/flowgmm-ray" in setup
    assert "ray[default" in setup and "==2.60.0" in setup
    assert not launcher.get("worker_setup_commands") and not launcher.get("head_setup_commands")


def test_launcher_security_defaults(launcher):
    head = " ".join(launcher["head_start_ray_commands"])
    workers = " ".join(launcher["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmds in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--disable-usage-stats" in head and "--disable-usage-stats" in workers
    # one token for the whole cluster, copied to every node
    assert launcher["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    # nothing but SSH opened from outside
    perms = launcher["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in perms for r in p["IpRanges"])


# --- KubeRay ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()) if d]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_rayjob_required_fields(kuberay):
    import ray

    jobs = [d for d in kuberay if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    entry = spec["entrypoint"]
    assert "pipeline/run.py" in entry and "--config mnist" in entry and "--tracking-uri http" in entry
    assert "--home /mnt/flowgmm" in entry
    yaml.safe_load(spec["runtimeEnvYAML"])  # a valid YAML mapping
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert _containers(head)[0]["image"]
    head_res = _containers(head)[0]["resources"]
    assert "nvidia.com/gpu" not in head_res.get("limits", {}), "the head is a CPU pod"
    assert head["rayStartParams"].get("num-gpus") == "0"


def test_kuberay_gpu_worker_group(kuberay):
    job = next(d for d in kuberay if d.get("kind") == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = _containers(g)[0]
        assert c["image"] == _containers(cluster["headGroupSpec"])[0]["image"], "one image for the whole cluster"
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1
        assert c["resources"]["requests"].get("nvidia.com/gpu", gpus) == gpus
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/mnt/flowgmm" in mounts, "the shared home is mounted on the workers too"
    assert cluster["enableInTreeAutoscaling"] is True


def test_kuberay_security(kuberay):
    job = next(d for d in kuberay if d.get("kind") == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    pods_label = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    for g in cluster["workerGroupSpecs"]:
        assert g["template"]["metadata"]["labels"] == pods_label
    policies = [d for d in kuberay if d.get("kind") == "NetworkPolicy"]
    assert policies, "the Ray pods' ports are fenced by a NetworkPolicy"
    pol = policies[0]
    assert pol["apiVersion"] == "networking.k8s.io/v1"
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= pods_label.items()
    assert "Ingress" in pol["spec"]["policyTypes"]


def test_dockerfile_matches_the_ray_version():
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-")
    assert "pip install" in text and "-e ." in text


# --- MLflow server script ------------------------------------------------------------------------------------------
def test_mlflow_server_script_defaults():
    script = CLUSTER / "mlflow_server.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert 'MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"' in text
    assert "export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in text
    assert "--backend-store-uri" in text and "--artifacts-destination" in text and "--serve-artifacts" in text
    out = subprocess.run(["bash", str(script), "bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


# --- local cluster script (no Ray started) ------------------------------------------------------------------------
def test_local_cluster_cli_without_a_cluster(tmp_path):
    script = CLUSTER / "local_cluster.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "start" in out.stdout and "stop" in out.stdout
    state = tmp_path / "state.json"
    for cmd in ("stop", "env", "status"):
        out = subprocess.run(
            [sys.executable, str(script), "--state", str(state), cmd], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 1 and "nothing started" in out.stderr


def test_local_cluster_state_round_trip(tmp_path):
    sys.path.insert(0, str(REPO))
    from cluster.local_cluster import LocalCluster, Node

    c = LocalCluster(
        workers=2, cpus_per_node=1, object_store_mb=300, temp_root=tmp_path / "root", state_file=tmp_path / "state.json"
    )
    c.gcs_port, c.dashboard_port, c.token_path = 1234, 5678, str(tmp_path / "root" / "auth_token")
    c.nodes = [
        Node("head", 111, "/tmp/h", "/tmp/h.log", {"gcs": 1234}, {"flowgmm_node_head": 1.0}),
        Node("worker1", 222, "/tmp/w1", "/tmp/w1.log", {}, {"flowgmm_node_worker1": 1.0}),
    ]
    c.write_state()
    d = LocalCluster.from_state(tmp_path / "state.json")
    assert [n.pgid for n in d.nodes] == [111, 222]
    assert d.address.endswith(":1234") and d.dashboard_url == "http://127.0.0.1:5678"
    env = d.client_env({})
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"].endswith("auth_token")
    assert d.object_store_bytes == 300_000_000


# --- checkpoints and models load without unpickling ----------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f"{f.value.id}.{f.attr}"
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                else getattr(f, "id", getattr(f, "attr", ""))
            )
            yield name, node


def test_checkpoints_and_models_load_without_unpickling():
    """Every torch.load in the project passes weights_only=True; nothing calls pickle/cloudpickle/joblib load."""
    offenders = []
    for pkg in ("flowgmm", "pipeline", "tune", "cluster"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for name, node in _calls(tree):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if name == "torch.load":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    if not ok:
                        offenders.append(f"{where}: torch.load without weights_only=True")
                if name in (
                    "pickle.load",
                    "pickle.loads",
                    "cloudpickle.load",
                    "cloudpickle.loads",
                    "joblib.load",
                    "dill.load",
                    "dill.loads",
                ):
                    offenders.append(f"{where}: {name}")
    assert not offenders, offenders


# --- the docs name files that exist ---------------------------------------------------------------------------------
def test_cluster_docs_reference_existing_files():
    doc = (REPO / "docs" / "CLUSTER.md").read_text()
    assert "Run it on a cluster" in doc
    for rel in sorted(set(re.findall(r"\b(cluster/[\w./-]+\.(?:py|sh|yaml|md)|cluster/Dockerfile)", doc))):
        assert (REPO / rel).exists(), rel


# --- KubeRay RayService (online serving) ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rayservice() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayservice.yaml").read_text()) if d]


def test_kuberay_rayservice_serves_the_app_with_valid_args(rayservice):
    import importlib

    import ray

    svc = next(d for d in rayservice if d.get("kind") == "RayService")
    assert svc["apiVersion"] == "ray.io/v1" and svc["metadata"]["name"]
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    built = builder(app["args"])  # the args are the command line's options, checked the same way
    assert type(built).__name__ == "Application"
    assert app["args"]["model"].startswith("models:/") and app["args"]["tracking_uri"].startswith("http")
    cluster = svc["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["authOptions"]["mode"] == "token"
    head = _containers(cluster["headGroupSpec"])[0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    for g in cluster["workerGroupSpecs"]:
        assert int(_containers(g)[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert _containers(g)[0]["image"] == head["image"]


def test_kuberay_rayservice_fences_the_serve_port(rayservice):
    svc = next(d for d in rayservice if d.get("kind") == "RayService")
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    port = config["http_options"]["port"]
    labels = svc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    (pol,) = [d for d in rayservice if d.get("kind") == "NetworkPolicy"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    serve_rules = [r for r in pol["spec"]["ingress"] if any(p.get("port") == port for p in r.get("ports", []))]
    assert serve_rules, "Serve's HTTP port is reachable only as the policy says"
    for r in serve_rules:
        assert all("namespaceSelector" not in f and f.get("podSelector", {}).get("matchLabels") for f in r["from"])


def test_serve_app_builder_rejects_bad_args():
    from pipeline.results.serve_app import BadModel, app_builder

    for args, message in [
        ({"model": "models:/m@champion"}, "'tracking_uri' is required"),
        ({"model": "m", "tracking_uri": "t", "replica": "2"}, "unknown key 'replica'"),
        ({"model": "m", "tracking_uri": "t", "gpus_per_replica": "-1"}, "--gpus-per-replica -1.0: expected 0 or more"),
    ]:
        with pytest.raises(BadModel, match=re.escape(message)):
            app_builder(args)
