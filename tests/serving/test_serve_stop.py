"""`onerank-export serve` as a real subprocess: it skips what the bundled server cannot load, and it
stops within the issue's 5 s bound on SIGINT / SIGTERM with an idle keep-alive client connected,
letting a request already on the wire finish first.

Each test starts its own server on free loopback ports; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import TINY, request

from onerank_export import spec
from onerank_export.serving.server import LOOPBACK, free_port

pytestmark = pytest.mark.slow  # a real tritonserver per test, ~5 s each on 2 cores

STOP_BOUND_S = 5.0  # issue 15: "serve stops in under 5 s after SIGINT with an idle keep-alive client"
_DATATYPES = {"int64": "INT64", "float32": "FP32"}


class Serve:
    """`onerank-export serve` in a subprocess, started and waited for readiness."""

    def __init__(self, build_dir) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "onerank_export.cli.main", "serve", "--repository",
                                      str(build_dir), "--http-port", str(self.http), "--grpc-port", str(self.grpc)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self.lines.append(line)
            if "Ctrl-C stops the server" in line or not line:
                break
        assert any(line.startswith("ready") for line in self.lines), "".join(self.lines) + self._stderr()

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def stop_with(self, signum: int) -> tuple[int, float]:
        """(exit code, seconds from the signal to the exit)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(STOP_BOUND_S + 25)  # bounded, but long enough to measure a failure
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return code, time.perf_counter() - t0

    def kill(self) -> None:
        """Stop serve the way a user does, so it stops its server; SIGKILL only if that fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_BOUND_S + 25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(cpu_build):
    started = Serve(cpu_build)
    yield started
    started.kill()


def _keep_alive_connection(port: int) -> socket.socket:
    """An HTTP/1.1 connection that has had one answered request and is kept open, idle."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    sock.sendall(f"GET /v2/health/ready HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
                 "Connection: keep-alive\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before a response: {response!r}"
        response += chunk
    head = response.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 200") and "content-length: 0" in head, head
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_serve_skips_the_models_the_bundled_server_cannot_load(serve):
    skipped = [line.rstrip("\n") for line in serve.lines if line.startswith("skipped:")]
    assert skipped == ["skipped: onerank_onnx_fp32 (platform onnxruntime_onnx: the bundled tritonserver has the "
                       "python backend only; serve this repository with NVIDIA's Triton container to load it)"]
    assert any(line.startswith("ready") and line.rstrip().endswith("models onerank") for line in serve.lines)
    conn = http.client.HTTPConnection(LOOPBACK, serve.http, timeout=10)
    for model, status in (("onerank", 200), ("onerank_onnx_fp32", 400)):  # 400: not loaded
        conn.request("GET", f"/v2/models/{model}/ready")
        response = conn.getresponse()
        response.read()
        assert response.status == status, model
    conn.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_within_the_bound_with_an_idle_keep_alive_client(serve, signum):
    client = _keep_alive_connection(serve.http)
    try:
        code, seconds = serve.stop_with(signum)
        print(f"\n{signal.Signals(signum).name} with an idle keep-alive client: serve exited {code} "
              f"in {seconds:.2f} s")
        assert code == 0, serve._stderr()
        assert seconds < STOP_BOUND_S
        assert _closed_by_peer(client)  # the server is gone, not merely our CLI
        assert _port_closed(serve.http) and _port_closed(serve.grpc)
        assert "stopped in" in serve.proc.stdout.read()
    finally:
        client.close()


def test_a_killed_serve_does_not_leave_its_server_running(serve):
    """SIGKILL cannot be handled by serve; the server learns of it from the kernel (parent-death signal)."""
    serve.proc.kill()
    serve.proc.wait()
    deadline = time.monotonic() + STOP_BOUND_S + 5
    while time.monotonic() < deadline and not (_port_closed(serve.http) and _port_closed(serve.grpc)):
        time.sleep(0.2)
    assert _port_closed(serve.http) and _port_closed(serve.grpc)


def _infer_body(feed: dict[str, np.ndarray]) -> str:
    inputs = [{"name": name, "shape": list(a.shape), "datatype": _DATATYPES[str(a.dtype)],
               "data": a.ravel().tolist()} for name, a in feed.items()]
    return json.dumps({"inputs": inputs, "outputs": [{"name": t.name} for t in spec.OUTPUTS]})


def _scores(response: http.client.HTTPResponse) -> np.ndarray:
    body = json.loads(response.read())
    (out,) = [o for o in body["outputs"] if o["name"] == "scores"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_a_request_in_flight_when_serve_is_stopped_gets_its_answer(serve):
    """tritonserver keeps serving the connections it has accepted while it waits out its exit timeout
    (server http_server.cc HTTPServer::Stop) and drains in-flight inferences before unloading (core
    server.cc InferenceServer::Stop); so a request sent on an established connection just before the
    signal is answered in full, and the stop still meets the bound."""
    feed = request(TINY, 1, TINY.max_hist_len, TINY.max_candidates, seed=4)
    body = _infer_body(feed)
    conn = http.client.HTTPConnection(LOOPBACK, serve.http, timeout=STOP_BOUND_S + 5)
    try:
        conn.request("POST", "/v2/models/onerank/infer", body=body, headers={"Content-Type": "application/json"})
        expected = _scores(conn.getresponse())
        assert expected.shape == (1, TINY.max_candidates, TINY.num_tasks)

        conn.request("POST", "/v2/models/onerank/infer", body=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        serve.proc.send_signal(signal.SIGINT)
        response = conn.getresponse()
        assert response.status == 200
        np.testing.assert_array_equal(_scores(response), expected)
        code = serve.proc.wait(STOP_BOUND_S + 25)
        seconds = time.perf_counter() - t0
        print(f"\nSIGINT with a request in flight: answered, serve exited {code} in {seconds:.2f} s")
        assert code == 0 and seconds < STOP_BOUND_S
    finally:
        conn.close()
