"""A live `lamina serve` on the real SmolLM2-135M-Instruct, shared by the API and web-page tests:
uvicorn on a free localhost port in a thread of the test process, the same app the CLI runs."""

import contextlib
import socket
import threading
import time

import pytest

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL_NAME = "smollm2-135m-instruct"


def metrics(url: str) -> dict[str, float]:
    """The server's unlabelled Prometheus samples, read with prometheus_client's own parser."""
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx2.get(url + "/metrics", headers=AUTH).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def wait_idle(url: str, timeout: float = 30) -> dict[str, float]:
    """Metrics once no request runs or waits."""
    deadline = time.monotonic() + timeout
    while (m := metrics(url))["lamina_running_requests"] or m["lamina_queue_depth"]:
        assert time.monotonic() < deadline, "the server never became idle"
        time.sleep(0.05)
    return m


@contextlib.contextmanager
def running(app):
    """Serve `app` on 127.0.0.1 (a port the OS picks) until the block ends; yields the base URL."""
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def server(smollm2_llm):
    """(base URL, app) of a server with an API key, 8 slots of 512 tokens, a 64-request queue."""
    from lamina.serve import BatcherConfig
    from lamina.serve.api import ServeConfig, create_app
    app = create_app(smollm2_llm, ServeConfig(
        api_key=API_KEY, model_name=MODEL_NAME, request_timeout_s=120,
        engine=BatcherConfig(max_slots=8, max_len=512, max_queue=64)))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
