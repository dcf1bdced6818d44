"""The policy server and client in the reference REST protocol (vla_spec.serve, vla_spec.rest).

The sim-tier tests start ``vla-spec serve tiny-openvla`` as a real process on 127.0.0.1 (a free
port; torn down after the module): the HTTP policy gives the in-process policy's actions, bad input
gets a 4xx and the next request is answered, a bounded load test forms batches and answers every
request with its own action, and a short LIBERO rollout through the server equals the in-process one.
Two more use the application in process (FastAPI's test client): a server that drops
``unnorm_key`` fails exactly its conformance claims, and a model error is a 500. The cpu tier pins
the wire format and the command-line mistakes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests.goldens import GOLDEN_IMAGES, load_image

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "tiny-openvla"
INSTRUCTION = "put the bowl on the stove"
KEY = "libero_spatial"
MAX_BODY_MB = 1.0  # a 256 x 256 frame is 0.35 MB as json-numpy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(checkpoint: str, log: Path) -> Iterator[str]:
    """The URL of a real ``vla-spec serve CHECKPOINT`` process on a free loopback port, stopped on exit."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "vla_spec.cli", "serve", checkpoint, "--port", str(port), "--threads", "1",
               "--max-batch-size", "8", "--max-wait-ms", "20", "--max-body-mb", str(MAX_BODY_MB)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"vla-spec serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vla-spec serve did not answer within 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A server of tiny-openvla for the module."""
    pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
    with running_server(CHECKPOINT, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def native():  # type: ignore[no-untyped-def]
    from vla_spec.adapters import NativeImpl

    return NativeImpl(CHECKPOINT)


def model_images() -> list[np.ndarray]:
    from vla_spec.images import model_image

    return [model_image(load_image(name)) for name in GOLDEN_IMAGES]


@pytest.mark.sim
@pytest.mark.parametrize("double_encode", [False, True], ids=["json-numpy", "double-encoded"])
def test_http_policy_gives_the_in_process_actions(server, native, double_encode) -> None:  # type: ignore[no-untyped-def]
    from vla_spec.adapters import HTTPImpl

    client = HTTPImpl(server, double_encode=double_encode)
    for key in ("libero_spatial", "libero_object"):
        for image in model_images():
            remote, local = client.act(image, INSTRUCTION, key).action, native.act(image, INSTRUCTION, key).action
            assert remote.dtype == np.float64 and remote.shape == (7,)
            assert np.array_equal(remote, local), (key, remote, local)


def _post(url: str, body: bytes) -> tuple[int, str]:
    import httpx

    response = httpx.post(url + "/act", content=body, headers={"content-type": "application/json"}, timeout=60)
    return response.status_code, response.text


def _body(**payload) -> bytes:  # type: ignore[no-untyped-def]
    import json_numpy

    return json_numpy.dumps(payload).encode()


BLACK = np.zeros((224, 224, 3), np.uint8)
# Bodies built when a test runs (json-numpy is in the serve extra, which a model-only venv lacks).
BAD_INPUT = {
    "not JSON": (b"hello", 400, "not JSON"),
    "a JSON list": (b"[1, 2]", 400, "JSON object"),
    "float image": (partial(_body, image=BLACK.astype(np.float32), instruction=INSTRUCTION), 400, "dtype float32"),
    "grey image": (partial(_body, image=BLACK[..., 0], instruction=INSTRUCTION), 400, "shape (224, 224)"),
    "plain-list image": (json.dumps({"image": BLACK.tolist(), "instruction": INSTRUCTION}).encode(), 400, "json-numpy array"),
    "no instruction": (partial(_body, image=BLACK), 400, "instruction is missing"),
    "unknown key": (partial(_body, image=BLACK, instruction=INSTRUCTION, unnorm_key="no_such_dataset"), 400, "unnorm_key"),
    "encoded and more": (json.dumps({"encoded": "{}", "image": 1}).encode(), 400, "no other key"),
    "oversized": (b"x" * int(2 * MAX_BODY_MB * 1024 * 1024), 413, "limit of 1048576 bytes"),
}


@pytest.mark.sim
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gets_a_4xx_and_the_next_request_is_answered(server, native, case) -> None:  # type: ignore[no-untyped-def]
    from vla_spec.rest import decode_action, encode_request

    body, status, reason = BAD_INPUT[case]
    body = body() if callable(body) else body
    code, text = _post(server, body)
    detail = json.loads(text)["detail"]
    assert (code, reason in detail, "\n" in detail) == (status, True, False), (code, detail)
    code, text = _post(server, encode_request(BLACK, INSTRUCTION, KEY).encode())
    assert code == 200 and np.array_equal(decode_action(text), native.act(BLACK, INSTRUCTION, KEY).action)


def distinguishable_requests(native, count: int) -> list[tuple[np.ndarray, str, str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """(image, instruction, unnorm_key, in-process action) for ``count`` requests whose actions all
    differ (the tiny model maps many inputs to one action, so candidates are filtered); the keys
    alternate, so batches mix keys."""
    from vla_spec.conformance import scene

    objects = ("bowl", "plate", "stove", "drawer", "basket", "cabinet", "ketchup", "soup")
    found: dict[bytes, tuple[np.ndarray, str, str, np.ndarray]] = {}
    for seed in range(16):
        image = scene(100 + seed)
        for i, (a, b) in enumerate(zip(objects, objects[1:] + objects[:1])):
            instruction, key = f"put the {a} on the {b}", ("libero_spatial", "libero_object")[(seed + i) % 2]
            action = native.act(image, instruction, key).action
            found.setdefault(action.tobytes(), (image, instruction, key, action))
            if len(found) == count:
                return list(found.values())
    raise AssertionError(f"only {len(found)} distinguishable requests among 128 candidates, {count} needed")


@pytest.mark.sim
def test_load_every_request_answered_with_its_own_action(server, native) -> None:  # type: ignore[no-untyped-def]
    """16 clients x 25 requests over 16 requests whose actions all differ (two keys): none lost, none
    answered with another's action, batches formed; prints the batch sizes and p50/p99 latency."""
    import httpx

    from vla_spec.rest import decode_action, encode_request

    clients, per_client = 16, 25
    requests = distinguishable_requests(native, 16)
    expected = [action for *_, action in requests]
    bodies = [encode_request(image, instruction, key).encode() for image, instruction, key, _ in requests]
    before = httpx.get(server + "/stats").json()
    latencies: list[float] = []
    wrong: list[tuple[int, int]] = []
    errors: list[str] = []

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as session:
            for j in range(per_client):
                which = (index + j) % len(requests)
                started = time.perf_counter()
                try:
                    response = session.post(server + "/act", content=bodies[which], headers={"content-type": "application/json"})
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200 or not np.array_equal(decode_action(response.text), expected[which]):
                        wrong.append((index, j))
                except httpx.HTTPError as error:
                    errors.append(f"client {index} request {j}: {error!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    wall = time.perf_counter() - started
    after = httpx.get(server + "/stats").json()
    formed = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    formed = {size: n for size, n in sorted(formed.items()) if n}
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (float("nan"), float("nan"))
    print(f"\nload: {clients} clients x {per_client} requests in {wall:.1f} s ({len(latencies) / wall:.0f} req/s); "
          f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; batches formed {{size: count}} {formed}")
    assert not any(thread.is_alive() for thread in threads), "a client did not finish within 300 s"
    assert errors == [] and wrong == [] and len(latencies) == clients * per_client
    assert after["requests"] - before["requests"] == clients * per_client
    assert max(formed) > 1, "no batch of more than one request was formed"


@pytest.mark.sim
def test_rollout_through_the_server_equals_the_in_process_rollout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The trained tiny VLA served by its own server: the first 10 policy steps of libero_object
    task 1 init 1 (an episode it solves), once per policy from the same state, are the same actions."""
    pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
    from vla_spec.rollout import start_episode
    from vla_spec.sim.env import POLICY_CAMERAS, drop_env, get_env
    from vla_spec.sim.http_policy import HTTPPolicy
    from vla_spec.sim.interface import TaskContext, make_observation
    from vla_spec.sim.openvla_policy import OpenVLAPolicy
    from vla_spec.sim.suites import init_states, task_info

    checkpoint, suite, task, init, steps = "tiny-vla-libero-object", "libero_object", 1, 1, 10
    info = task_info(suite, task)
    env = get_env(suite, task, cameras=POLICY_CAMERAS)
    runs = []
    try:
        with running_server(checkpoint, tmp_path / "server.log") as url:
            remote = HTTPPolicy(url)
            assert remote.check_setup([suite])["unnorm_key"] == {suite: suite}
            for policy in (OpenVLAPolicy(checkpoint), remote):
                obs = start_episode(env, init_states(suite, task)[init])
                policy.reset(TaskContext(suite, task, info.instruction, init, info.max_steps, env=None))
                actions = []
                for step in range(steps):
                    action = policy.act(make_observation(obs, step)).action
                    actions.append(action)
                    obs, _reward, _done, _info = env.step(action.tolist())
                runs.append(np.array(actions))
    finally:
        drop_env(suite, task, cameras=POLICY_CAMERAS)
    assert runs[0].shape == (steps, 7) and np.array_equal(runs[0], runs[1])
    assert len({row.tobytes() for row in runs[0]}) > 1, "the policy must not repeat one action (a vacuous comparison)"


@pytest.mark.sim
def test_rollout_names_an_unreachable_server_in_one_line(tmp_path) -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "vla_spec.cli", "rollout", "--suite", "libero_object", "--tasks", "0", "--inits", "0",
         "--policy", f"http://127.0.0.1:{port}", "--log", str(tmp_path / "h.jsonl")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and not (tmp_path / "h.jsonl").exists()
    assert result.stderr.startswith(f"vla-spec rollout: error: --url: cannot use the server at http://127.0.0.1:{port}/act")
    assert len(result.stderr.strip().splitlines()) == 1


class DropsUnnormKey:
    """A deployment that ignores the request's unnorm_key and always decodes with its first key."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model, self.key = model, sorted(model.norm_stats)[0]

    def predict_action(self, images, instructions, unnorm_key=None):  # type: ignore[no-untyped-def]
        return self.model.predict_action(images, instructions, self.key)

    def action_processor(self, unnorm_key):  # type: ignore[no-untyped-def]
        return self.model.action_processor(self.key)


@pytest.mark.sim
def test_a_server_that_drops_unnorm_key_fails_exactly_its_claims(native) -> None:  # type: ignore[no-untyped-def]
    """Through the real server application and HTTP client, in process (FastAPI's test client)."""
    pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from vla_spec.adapters import HTTPImpl
    from vla_spec.conformance import run_claims
    from vla_spec.serve import create_app

    with TestClient(create_app(DropsUnnormKey(native.model()))) as client:
        verdicts = {v.claim.name: v for v in run_claims(HTTPImpl("http://testserver", client=client))}
    failed = {name for name, v in verdicts.items() if v.status == "fails"}
    assert failed == {"policy.on-grid", "policy.unnorm-key", "policy.unknown-key"}, {n: verdicts[n].detail for n in failed}
    held = {name for name, v in verdicts.items() if v.status == "holds"}
    assert held == {"policy.finite", "policy.image-used", "policy.instruction-used", "policy.lowercase", "policy.deterministic"}


class FailingModel:
    """Statistics like a checkpoint's, but every forward pass raises."""

    def __init__(self) -> None:
        from vla_spec.normalization import shipped_norm_stats

        self.norm_stats = shipped_norm_stats()

    def action_processor(self, unnorm_key):  # type: ignore[no-untyped-def]
        from vla_spec.actions import ActionProcessor

        return ActionProcessor.select(self.norm_stats, unnorm_key)

    def predict_action(self, images, instructions, unnorm_key=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory (simulated)")


@pytest.mark.sim
def test_a_model_error_is_a_500_with_its_reason_and_a_logged_traceback(caplog) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from vla_spec.rest import encode_request
    from vla_spec.serve import create_app

    with TestClient(create_app(FailingModel())) as client:
        response = client.post("/act", content=encode_request(BLACK, INSTRUCTION, KEY))
        again = client.post("/act", content=encode_request(BLACK, INSTRUCTION, KEY))
    assert response.status_code == again.status_code == 500
    assert response.json()["detail"] == "the model failed: RuntimeError: CUDA out of memory (simulated)"
    logged = [r for r in caplog.records if r.name == "vla_spec.serve" and r.exc_info]
    assert len(logged) == 2 and "the model failed on a batch of 1" in logged[0].getMessage()


@pytest.mark.cpu
def test_the_wire_format_is_json_numpy_and_its_double_encoded_variant() -> None:
    """deploy.py's body: json-numpy arrays {"__numpy__": base64 bytes, "dtype", "shape"}; the
    double-encoded body is {"encoded": that JSON text}, answered with the action's text as a string."""
    pytest.importorskip("json_numpy", reason="the protocol needs the serve extra: pip install -e '.[serve]'")
    from vla_spec.rest import decode_action, decode_request, encode_action, encode_request

    image = np.array([[[1, 2, 3]]], np.uint8)
    body = encode_request(image, "Open The Drawer", "libero_goal")
    assert json.loads(body) == {
        "image": {"__numpy__": "AQID", "dtype": "|u1", "shape": [1, 1, 3]},
        "instruction": "Open The Drawer",
        "unnorm_key": "libero_goal",
    }
    double = encode_request(image, "Open The Drawer", double_encode=True)
    assert list(json.loads(double)) == ["encoded"] and "unnorm_key" not in json.loads(json.loads(double)["encoded"])
    for text, key, encoded in ((body, "libero_goal", False), (double, None, True)):
        request = decode_request(text.encode())
        assert (request.instruction, request.unnorm_key, request.double_encoded) == ("Open The Drawer", key, encoded)
        assert np.array_equal(request.image, image) and request.image.flags.writeable
    action = np.array([0.5, -0.25, 0, 0, 0, 0, 1.0])
    packed = base64.b64encode(struct.pack("<7d", *action)).decode()
    assert json.loads(encode_action(action)) == {"__numpy__": packed, "dtype": "<f8", "shape": [7]}
    assert isinstance(json.loads(encode_action(action, double_encode=True)), str)
    assert np.array_equal(decode_action(encode_action(action, double_encode=True), double_encoded=True), action)


@pytest.mark.cpu
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["serve", "no-such-checkpoint"], "vla-spec serve: error: CHECKPOINT: checkpoint 'no-such-checkpoint' is neither"),
        (["serve", CHECKPOINT, "--max-batch-size", "0"], "vla-spec serve: error: batch size and body limit must be >= 1"),
        (["serve", CHECKPOINT, "--trust-remote-code", "--decoder", "naive"], "vla-spec serve: error: --decoder applies to the native model"),
        (["conform", "not-a-module:make"], "vla-spec conform: error: IMPL: 'not-a-module:make': cannot import module"),
        (["conform", "--double-encode"], "vla-spec conform: error: --double-encode applies to a server URL"),
        (["conform", CHECKPOINT, "--norm-stats", CHECKPOINT], "vla-spec conform: error: --norm-stats applies to a server URL"),
        (["conform", "http://127.0.0.1:1", "--norm-stats", "no-such"], "vla-spec conform: error: --norm-stats: checkpoint 'no-such'"),
    ],
)
def test_serve_and_conform_mistakes_are_one_line_and_exit_2(argv, expected, capsys) -> None:  # type: ignore[no-untyped-def]
    from vla_spec.cli import main
    from vla_spec.rest import require_serve_extra

    try:
        require_serve_extra()
    except ImportError as error:
        pytest.skip(str(error))

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
