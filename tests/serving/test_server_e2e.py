"""End to end on a real tritonserver (nvidia-pytriton's, python backend) on loopback.

The server is started once for the module on free ports and stopped at the end; every request
count and duration is bounded.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from helpers import TINY, make_tiny_model, request

from onerank_export.cli.main import main
from onerank_export.errors import RequestError
from onerank_export.parity.cases import default_cases
from onerank_export.parity.runners import EagerDenseRunner
from onerank_export.parity.suite import run_parity
from onerank_export.parity.triton_runner import TritonRunner
from onerank_export.serving.client import OneRankClient
from onerank_export.serving.server import TritonServer, free_port, resolve_repository, servable_models

pytestmark = pytest.mark.slow  # a real tritonserver per module, ~30 s on 2 cores

LOAD_SECONDS = 10.0
LOAD_CLIENTS = 8


@pytest.fixture(scope="module")
def build_dir(cpu_build):
    """A cpu-target build (tests/serving/conftest.py): the python-backend model and an onnxruntime_onnx one."""
    load, skipped = servable_models(resolve_repository(cpu_build))
    assert load == ["onerank"] and [name for name, _ in skipped] == ["onerank_onnx_fp32"]
    return cpu_build


@pytest.fixture(scope="module")
def server(build_dir):
    with TritonServer(resolve_repository(build_dir), models=["onerank"], startup_timeout=90) as s:
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_parity_with_eager_through_the_server(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    model = make_tiny_model()
    report = run_parity(EagerDenseRunner(model), [(TritonRunner(url, protocol=protocol), "fp32")],
                        default_cases(TINY, seed=3), {})
    assert report.passed, [(c.case, o.max_abs) for c in report.cases for o in c.outputs]
    assert max(o.max_abs for c in report.cases for o in c.outputs) <= 1e-5
    assert len(report.cases) == len(default_cases(TINY, seed=3))


def _bad_requests():
    ok = request(TINY, 2, 9, 5, seed=1)
    over = request(TINY, 1, 9, TINY.max_candidates + 1, seed=2)
    cases = {
        "wrong dtype": ({**ok, "cand_features": ok["cand_features"].astype(np.float64)}, "cand_features"),
        "wrong rank": ({**ok, "context_ids": ok["context_ids"][:, None, :]}, "context_ids"),
        "missing input": ({k: v for k, v in ok.items() if k != "hist_action_ids"}, "hist_action_ids"),
        "N=0": ({**ok, "cand_item_ids": ok["cand_item_ids"][:, :0], "cand_features": ok["cand_features"][:, :0]},
                "num_candidates=0"),
        "N past max": (over, f"num_candidates={TINY.max_candidates + 1}"),
        "id past vocab": ({**ok, "cand_item_ids": np.where(ok["cand_item_ids"] > 0, TINY.item_vocab_size,
                                                            0)}, "item_vocab_size"),
    }
    return ok, cases


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("validate", [True, False], ids=["client-validates", "server-validates"])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, protocol, validate):
    url = server.http_url if protocol == "http" else server.grpc_url
    ok, cases = _bad_requests()
    with OneRankClient(url, protocol=protocol, validate=validate) as client:
        expected = client.score(ok)
        for what, (feed, needle) in cases.items():
            with pytest.raises(RequestError) as err:
                client.score(feed)
            message = str(err.value)
            assert needle in message, f"{what}: {message}"
            assert "\n" not in message
            np.testing.assert_array_equal(client.score(ok), expected)  # still serving, same answer
    assert server.process.poll() is None


def test_concurrent_requests_batched_together_each_get_their_own_scores(server):
    """Requests of one shape that arrive together run as one ONNX Runtime call in the python model
    (the throughput profile's batching delay lets them meet); each answer must be its own request's
    scores, and a bad request among them gets its own error without failing the others."""
    model = make_tiny_model()
    feeds = [request(TINY, 1 + i % 2, 20, 33, seed=100 + i) for i in range(12)]
    expected = []
    with EagerDenseRunner(model) as eager:
        expected = [eager.infer(f)["scores"] for f in feeds]
    bad = {**feeds[0], "cand_item_ids": np.full_like(feeds[0]["cand_item_ids"], TINY.item_vocab_size)}

    def send(i: int):
        with OneRankClient(server.http_url, validate=False) as client:
            if i == len(feeds):
                with pytest.raises(RequestError, match="item_vocab_size"):
                    client.score(bad)
                return None
            return client.score(feeds[i])

    def executions_and_requests() -> tuple[int, int]:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/onerank/stats", timeout=10) as r:
            stats = json.load(r)["model_stats"][0]
        return int(stats["execution_count"]), int(stats["inference_stats"]["success"]["count"])

    executions0, requests0 = executions_and_requests()
    for _ in range(5):  # rounds until the batcher has stacked requests (it is up to timing), at most 5
        with concurrent.futures.ThreadPoolExecutor(len(feeds) + 1) as pool:
            got = list(pool.map(send, range(len(feeds) + 1)))
        for i, scores in enumerate(got[:-1]):
            assert scores.shape == expected[i].shape
            assert float(np.abs(scores - expected[i]).max()) <= 1e-5, i
        executions, requests = executions_and_requests()
        if executions - executions0 < requests - requests0:
            break
    assert executions - executions0 < requests - requests0, "the batcher never handed over two requests together"


def test_bounded_load_run_has_no_errors_and_no_memory_growth(server):
    feeds = [request(TINY, 1, int(L), int(N), seed=i) for i, (L, N) in
             enumerate(zip(np.linspace(1, 64, 16), np.linspace(1, 64, 16)[::-1], strict=True))]
    with OneRankClient(server.http_url) as warm:
        for feed in feeds * 3:
            warm.score(feed)
    rss_before = server.rss_bytes()

    def client_loop(seed: int) -> tuple[int, int, list[float]]:
        done = errors = 0
        latencies = []
        protocol = "grpc" if seed % 2 else "http"
        with OneRankClient(server.grpc_url if seed % 2 else server.http_url, protocol=protocol) as client:
            deadline = time.monotonic() + LOAD_SECONDS
            i = seed
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    scores = client.score(feeds[i % len(feeds)])
                    errors += int(not np.isfinite(scores).all())
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - t0)
                done += 1
                i += 1
        return done, errors, latencies

    with concurrent.futures.ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        results = list(pool.map(client_loop, range(LOAD_CLIENTS)))
    rss_after = server.rss_bytes()
    total = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    lat = np.array([x for r in results for x in r[2]]) * 1e3
    print(f"\nload: {LOAD_CLIENTS} clients x {LOAD_SECONDS:.0f} s: {total} requests, {errors} errors, "
          f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert errors == 0 and total >= LOAD_CLIENTS * 10
    # A leak of even 1 KiB per request would show: allow allocator slack, not growth with traffic.
    assert rss_after - rss_before < max(32 * 2**20, 0.1 * rss_before), (rss_before, rss_after)


def test_verify_cli_against_the_server(server, build_dir, tmp_path, capsys):
    code = main(["verify", "--checkpoint", str(build_dir / "checkpoint"), "--triton", server.http_url,
                 "--reports", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "0 failed" in out.out and (tmp_path / "parity.json").is_file()


def test_verify_cli_with_no_server_fails_in_one_line(build_dir, tmp_path, capsys):
    code = main(["verify", "--checkpoint", str(build_dir / "checkpoint"), "--triton", f"127.0.0.1:{free_port()}",
                 "--reports", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: Triton server at 127.0.0.1:") and err.count("\n") == 1
    assert "onerank-export serve" in err


def test_serve_cli_starts_answers_and_stops_on_interrupt(build_dir):
    assert (build_dir / "manifest.json").is_file()  # a build dir: serve picks its model_repository
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onerank_export.cli.main", "serve", "--repository",
                             str(build_dir), "--http-port", str(http), "--grpc-port", str(grpc)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops the server" in line or not line:
                break
        assert any(line.startswith("ready") for line in lines), "".join(lines) + proc.stderr.read()
        with OneRankClient(f"127.0.0.1:{grpc}", protocol="grpc") as client:
            assert client.score(request(TINY, 1, 4, 3)).shape == (1, 3, TINY.num_tasks)
        proc.send_signal(2)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_cli_refuses_a_repository_the_bundled_server_cannot_load(gpu_repository, capsys):
    code = main(["serve", "--repository", str(gpu_repository)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "onerank_onnx_fp32 (platform onnxruntime_onnx)" in err
    assert "has the python backend only" in err
