"""`lamina serve` as a user runs it: a separate process on the packaged model, its API key from
the environment, and bad flags ending in one `lamina: error:` line."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx2
import openai
import pytest

from lamina.cli import main

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    """Until the server's /health says ready (failing if the process exits or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "lamina serve did not come up"
        try:
            if httpx2.get(url + "/health").status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)                   # not up yet, or up and still starting (503)


def interactive_sigint() -> None:
    """Deliver Ctrl-C as a terminal does: a test run started in the background of a
    non-interactive shell (`.ci/run &`) hands its children SIGINT ignored, and Python keeps that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_lamina_serve_runs_with_the_key_from_the_environment_and_stops_on_a_signal(stop):
    port = free_port()
    env = {**os.environ, "LAMINA_API_KEY": "from-env", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", "serve", MODEL, "--port", str(port),
                             "--max-concurrency", "2", "--max-len", "256", "--threads", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=interactive_sigint)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        assert httpx2.get(url + "/v1/models").status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0)
        assert client.models.list().data[0].id == MODEL
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                      temperature=0)
        assert r.usage.completion_tokens == 4 and r.choices[0].text
        with pytest.raises(openai.BadRequestError, match="context length is 256"):
            client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=255)
    finally:
        proc.send_signal(stop)   # the engine computes on the main thread, HTTP on another
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"lamina: serving {MODEL} at http://127.0.0.1:{port}" in out


def test_a_port_in_use_is_one_error_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", MODEL, "--port", str(port), "--max-len", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"lamina: error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("argv,message", [
    (["/no/such/model"], "no such file"),
    ([MODEL, "--max-concurrency", "0"], "max concurrency must be at least 1"),
    ([MODEL, "--timeout", "0"], "timeout must be positive"),
    ([MODEL, "--port", "70000"], "not a TCP port"),
    ([MODEL, "--api-key", ""], "API key (--api-key or LAMINA_API_KEY) is empty"),
    ([MODEL, "--api-key", "clé-secrète"], "non-ASCII characters"),
    ([MODEL, "--api-key", "key "], "leading or trailing spaces"),
])
def test_bad_serve_flags_end_in_one_error_line(capsys, argv, message):
    assert main(["serve", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamina: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("key,message", [("", "is empty"), ("ключ", "non-ASCII characters")])
def test_an_api_key_from_the_environment_that_cannot_work_is_refused_at_start(capsys, monkeypatch, key, message):
    """An empty LAMINA_API_KEY would serve without a key; a non-ASCII one would refuse everyone."""
    monkeypatch.setenv("LAMINA_API_KEY", key)
    assert main(["serve", MODEL, "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamina: error: the API key") and message in err and "\n" not in err


@pytest.mark.slow
def test_sigterm_drains_running_requests_refuses_new_ones_and_health_says_so():
    """What a rolling restart behind a load balancer needs: on SIGTERM a streaming reply in flight
    still ends normally, while /health and new requests answer 503 until the process exits."""
    import threading
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", "serve", MODEL, "--port", str(port),
                             "--max-concurrency", "2", "--max-len", "256", "--threads", "2", "--drain-timeout", "120"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "LAMINA_API_KEY": "k"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    try:
        wait_ready(proc, url)
        stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=120, temperature=0,
                                           stream=True)
        pieces, first = [], threading.Event()

        def read():
            for chunk in stream:
                pieces.append(chunk)
                first.set()
        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        health = httpx2.get(url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
        assert e.value.status_code == 503 and "shutting down" in str(e.value)
        reader.join(120)
        assert pieces[-1].choices[0].finish_reason == "length"
        assert sum(1 for p in pieces if p.choices and p.choices[0].text) > 20
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "finishing the running requests" in proc.stdout.read()
