"""Serving online (Ray Serve): the answers match the logged pyfunc model and evaluation's posterior on the same rows;
bad requests get HTTP 400 with one line naming the row and field; replicas follow the ``champion`` alias without
dropping requests; the command line's bad settings are one line and exit 2 before Ray starts.

Two small vector models are built, logged through ``tracking.log_model`` and registered by the test itself (no
training: the served path does not care how the weights were found)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.results.serve_rows import BadRequest, parse_body

COLUMNS = ["mean radius", "mean texture", "area", "smoothness"]
NAME = "flowgmm-servetest"


def _spec(seed: int, threshold: float) -> dict:
    return {
        "kind": "vector",
        "shape": [len(COLUMNS)],
        "num_classes": 2,
        "class_names": ["benign", "malignant"],
        "feature_columns": COLUMNS,
        "feature_mean": [14.0, 19.0, 650.0, 0.1],
        "feature_std": [3.5, 4.3, 350.0, 0.014],
        "model": {"num_couplings": 2, "hidden": 8},
        "variance_scale": 1.7,
        "ood_threshold": threshold,
        "seed": seed,
    }


def _register(uri: str, tmp: Path, seed: int, threshold: float) -> tuple[str, dict]:
    from mlflow import MlflowClient

    from flowgmm.spec import build_model, save
    from pipeline.results.registry import register
    from pipeline.results.tracking import log_model, start_run

    spec = _spec(seed, threshold)
    torch.manual_seed(seed)
    save(build_model(spec), spec, tmp / f"m{seed}")
    handle = start_run(tmp, "flowgmm-servetest", f"serve-{seed}", tracking_uri=uri)
    model_uri = log_model(handle, tmp / f"m{seed}", spec)
    metrics = {"final_val_accuracy_calibrated": 0.9 - 0.1 * seed}  # the first one stays champion
    version, _ = register(uri, handle.run_id, model_uri, NAME, metrics)
    handle.end()
    assert str(MlflowClient(tracking_uri=uri).get_model_version_by_alias(NAME, "champion").version) == "1"
    return version, spec


def _rows(n: int = 24, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    spec = _spec(0, 0.0)
    x = np.asarray(spec["feature_mean"]) + rng.normal(size=(n, len(COLUMNS))) * np.asarray(spec["feature_std"])
    x[-1] *= 50  # far from the training data: out of domain
    return [dict(zip(COLUMNS, map(float, r))) for r in x]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    """Serve on a free loopback port, one replica of ``models:/flowgmm-servetest@champion`` polling every 0.5 s."""
    import argparse

    from ray import serve

    from pipeline.results.serve_app import APP_NAME, build_app

    tmp = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    specs = {v: s for v, s in (_register(uri, tmp, 0, -60.0), _register(uri, tmp, 1, -1e9))}
    port = _free_port()
    args = argparse.Namespace(
        model=f"models:/{NAME}@champion",
        replicas=1,
        cpus_per_replica=0.25,
        gpus_per_replica=0.0,
        poll_seconds=0.5,
        max_batch_size=16,
        batch_wait_ms=20.0,
        max_body_bytes=20_000,
        verbose=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args, uri), name=APP_NAME, route_prefix="/", blocking=False)
    yield {"url": f"http://127.0.0.1:{port}/", "tracking_uri": uri, "specs": specs}
    serve.shutdown()


# --- the requests, checked without a server ----------------------------------------------------------------------
TABLE_BAD = [
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"x" * 30_000, "over the limit of 20000 bytes"),
    (b"{not json", "body is not JSON"),
    (b'{"rows": 3}', "must be a JSON list of rows"),
    (b"[]", "no rows"),
    (json.dumps([[1.0, 2.0, 3.0]]).encode(), "row 0: 3 values, the model needs 4"),
    (json.dumps([dict(zip(COLUMNS, [1, 2, 3, 4])), "a"]).encode(), "row 1: a string"),
    (b"[[1, 2, NaN, 4]]", "row 0, field 'area': NaN or infinite value"),
    (b"[[1, 2, 3, Infinity]]", "row 0, field 'smoothness': NaN or infinite value"),
    (json.dumps([[1, "2", 3, 4]]).encode(), "row 0, field 'mean texture': a string (\"2\"), expected a number"),
    (json.dumps([[1, 2, True, 4]]).encode(), "row 0, field 'area': a boolean"),
    (json.dumps([[1, 2, None, 4]]).encode(), "row 0, field 'area': a null"),
    (json.dumps([{**dict(zip(COLUMNS, [1, 2, 3, 4])), "colour": 1}]).encode(), "row 0, field 'colour': unknown column"),
    (json.dumps([{"mean radius": 1}]).encode(), "row 0, field 'mean texture': missing column"),
    (b"[[1, 2, 3, 1e400]]", "row 0, field 'smoothness': NaN or infinite value"),
]


@pytest.mark.parametrize("body,message", TABLE_BAD, ids=[m for _, m in TABLE_BAD])
def test_bad_table_request_is_one_line_naming_row_and_field(body, message):
    with pytest.raises(BadRequest) as e:
        parse_body(body, _spec(0, 0.0), max_bytes=20_000)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_image_rows_are_pixels_and_bad_pixels_are_named():
    spec = {"kind": "image", "shape": [1, 2, 2], "num_classes": 2}
    x = parse_body(b'[[0, 1, 2, 255], {"x": [3, 4, 5, 6]}]', spec)
    assert x.shape == (2, 4) and x[0, 3] == 255 and x[1, 0] == 3
    for body, message in [
        (b"[[0, 1, 2]]", "row 0: 3 values, the model needs 4 pixels"),
        (b"[[0, 1, 2, 256]]", "row 0, field 'x[3]': pixel 256"),
        (b"[[0, 1.5, 2, 3]]", "row 0, field 'x[1]': pixel 1.5"),
        (b'[{"pixels": [0, 1, 2, 3]}]', "row 0, field 'pixels'"),
    ]:
        with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_body(body, spec)


def _png(pixels: np.ndarray, fmt: str = "PNG") -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_encoded_images_are_decoded_to_the_model_pixels_and_bad_ones_are_named():
    grey = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    spec = {"kind": "image", "shape": [1, 2, 2], "num_classes": 2}
    body = json.dumps([{"image": _png(grey)}, [0, 1, 2, 3]]).encode()
    x = parse_body(body, spec)
    np.testing.assert_array_equal(x[0], grey.reshape(-1))
    np.testing.assert_array_equal(x[1], [0, 1, 2, 3])
    big = np.kron(grey, np.ones((4, 4), np.uint8))  # 8x8: shrunk to the model's 2x2, each pixel its block's mean
    np.testing.assert_allclose(
        parse_body(json.dumps([{"image": _png(big)}]).encode(), spec)[0], grey.reshape(-1), atol=1
    )
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 2] = 200  # blue, as JPEG, for a colour model: channels first
    rgb = parse_body(json.dumps([{"image": _png(colour, "JPEG")}]).encode(), {**spec, "shape": [3, 2, 2]})
    assert rgb.shape == (1, 12) and rgb[0, 8:].min() > 150 and rgb[0, :8].max() < 60
    for row, message in [
        ({"image": "not base64!"}, "row 1, field 'image': not base64 text"),
        ({"image": "aGVsbG8="}, "row 1, field 'image': not an image Pillow can decode"),
        ({"image": _png(grey)[:40]}, "row 1, field 'image': not an image Pillow can decode"),
        ({"image": 7}, "row 1, field 'image': a number, expected base64 text"),
        ({"image": _png(grey), "x": [1]}, "row 1, field 'x': an encoded image row is"),
    ]:
        with pytest.raises(BadRequest, match=message) as e:
            parse_body(json.dumps([[0, 1, 2, 3], row]).encode(), spec)
        assert "\n" not in str(e.value)


# --- the running app ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_serve_answers_as_pyfunc_and_evaluation(served):
    import mlflow
    import pandas as pd

    from flowgmm.spec import load
    from pipeline.results.evaluate import posterior
    from pipeline.results.score import load_spec

    rows = _rows()
    status, got = _post(served["url"], json.dumps({"rows": rows}).encode())
    assert status == 200 and got["model_version"] == "1" and len(got["predictions"]) == len(rows)
    served_probs = np.array([[p["probabilities"][c] for c in ("benign", "malignant")] for p in got["predictions"]])
    served_logpx = np.array([p["log_px"] for p in got["predictions"]])

    mlflow.set_tracking_uri(served["tracking_uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(pd.DataFrame(rows))
    model_dir, _ = load_spec(f"models:/{NAME}/1", served["tracking_uri"])
    model, spec = load(model_dir)
    with torch.no_grad():
        z, logdet = model(torch.as_tensor(pd.DataFrame(rows)[COLUMNS].to_numpy(np.float32)))
        eval_probs = posterior(model, z, spec["variance_scale"])
        eval_logpx = (model.mixture.log_prob(z, calibrated=False) + logdet).numpy()
    labels = [p["label"] for p in got["predictions"]]
    assert labels == list(pyfunc["label"]) == list(eval_probs.argmax(1))
    np.testing.assert_allclose(served_probs, pyfunc[["prob_benign", "prob_malignant"]].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(served_probs, eval_probs, atol=1e-5)
    np.testing.assert_allclose(served_logpx, pyfunc["log_px"].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(served_logpx, eval_logpx, atol=1e-5)
    flags = [p["is_ood"] for p in got["predictions"]]
    assert flags == list(eval_logpx < -60.0) and flags[-1] and not all(flags)


@pytest.mark.slow
def test_logged_model_has_input_example_output_columns_and_pinned_requirements(served):
    from importlib.metadata import version

    import mlflow

    mlflow.set_tracking_uri(served["tracking_uri"])
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert info.saved_input_example_info is not None
    outputs = info.signature.outputs.input_names()
    assert {"label", "prob_benign", "prob_malignant", "log_px", "is_ood"} <= set(outputs)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1"))
    reqs = (local / "requirements.txt").read_text().split()
    assert f"torch=={version('torch').split('+')[0]}" in reqs and f"numpy=={version('numpy')}" in reqs


@pytest.mark.slow
def test_bad_requests_get_400_with_one_line_over_http(served):
    for body, message in TABLE_BAD:
        status, got = _post(served["url"], body)
        assert status == 400, (message, got)
        assert message in got["error"] and "\n" not in got["error"] and "Traceback" not in got["error"]
    with urllib.request.urlopen(served["url"] + "health", timeout=30) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["model_uri"] == f"models:/{NAME}@champion"


@pytest.mark.slow
def test_replicas_follow_the_champion_alias_without_dropping_requests(served):
    from mlflow import MlflowClient

    body = json.dumps(_rows(4)).encode()
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, got = _post(served["url"], body)
            seen.append((status, got.get("model_version", got.get("error", ""))))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        MlflowClient(tracking_uri=served["tracking_uri"]).set_registered_model_alias(NAME, "champion", "2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v == "2" for _, v in seen[-3:]):
            time.sleep(0.2)
        time.sleep(1.0)  # requests keep coming after the switch
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(s == 200 for s, _ in seen), [x for x in seen if x[0] != 200][:3]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert all(v in ("1", "2") for v in versions)
    status, got = _post(served["url"], json.dumps(_rows()).encode())
    assert got["model_version"] == "2" and not any(p["is_ood"] for p in got["predictions"])  # v2: threshold -1e9


# --- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "models:/no-such-model@champion"], "models:/no-such-model@champion: no such registered model"),
        (["--model", "models:/m@champion", "--replicas", "0"], "--replicas 0: expected at least 1"),
        (["--model", "models:/m@champion", "--port", "70000"], "--port 70000: expected 1..65535"),
        (["--model", "models:/m@champion", "--cpus-per-replica", "0"], "--cpus-per-replica 0.0: expected more"),
        ([], "--model: a model URI is needed"),
    ],
)
def test_command_line_bad_settings_are_one_line_exit_2(extra, message, tmp_path, capsys):
    from mlflow import MlflowClient

    from pipeline.results.serve_app import main

    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # an empty store
    capsys.readouterr()
    assert main(["--home", str(tmp_path), "--port", str(_free_port()), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_command_line_shutdown_without_a_cluster_is_one_line(monkeypatch, capsys):
    from pipeline.results.serve_app import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--shutdown"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --shutdown: no cluster to stop it on (give --address or set RAY_ADDRESS)"


def test_command_line_without_a_store_is_one_line(tmp_path, capsys):
    from pipeline.results.serve_app import main

    assert main(["--home", str(tmp_path), "--model", "models:/m@champion", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: sqlite:///{tmp_path}/mlflow.db: no MLflow store there (train a model first, or give " + (
        "--home / --tracking-uri)"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_command_line_port_in_use_is_one_line(tmp_path, capsys):
    from pipeline.results.serve_app import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["--home", str(tmp_path), "--model", "models:/m@champion", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in err and "\n" not in err
