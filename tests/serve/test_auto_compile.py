"""Fast by default (issue 22): the decode step's default compile mode, "auto", answers eagerly at
once while a thread compiles the step, then runs the compiled step, with the same tokens."""

import threading

import pytest
import torch

from lamina.errors import LaminaError
from lamina.model import Transformer, init_weights, preset
from lamina.serve import Batcher, BatcherConfig
from lamina.serve.batcher import Request
from lamina.serve.engine import Engine, compile_mode
from lamina.serve.sampling import SamplingParams


@pytest.fixture(scope="module")
def model():
    return init_weights(Transformer(preset("debug")), seed=3, std=0.2).eval()


def _tokens(engine, prompts, n=12):
    outs = [[] for _ in prompts]
    for step in engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=n)):
        for row, t in zip(outs, step):
            if t is not None:
                row.append(t)
    return outs


def _counting(steps) -> list:
    """Count the decode steps that run the compiled graph (the compile's own run is on its thread)."""
    calls, compiled = [], steps.step

    def counted(*args):
        if threading.current_thread() is threading.main_thread():
            calls.append(1)
        return compiled(*args)
    steps.step = counted
    return calls


def test_compile_modes_and_their_default(monkeypatch):
    monkeypatch.delenv("LAMINA_COMPILE", raising=False)
    assert compile_mode(None) == "auto"
    assert (compile_mode(True), compile_mode(False), compile_mode("on")) == ("on", "off", "on")
    monkeypatch.setenv("LAMINA_COMPILE", "off")
    assert compile_mode(None) == "off"
    for bad in ("yes", "fast"):
        with pytest.raises(LaminaError, match="use auto, on or off"):
            compile_mode(bad)
    with pytest.raises(LaminaError):
        BatcherConfig(compile="sometimes")


@pytest.mark.slow
def test_the_engine_answers_eagerly_then_runs_the_compiled_step(model):
    prompts = [[1, 5, 9, 2], [7, 3]]
    eager = _tokens(Engine(model, compile="off"), prompts)
    auto = Engine(model, compile="auto")
    calls = _counting(auto.steps)
    assert _tokens(auto, prompts) == eager          # started eagerly: the compile has barely begun
    assert auto.steps.wait(timeout=600) and auto.steps.failed is None
    assert auto.steps.ready == {(2, 256)}
    with torch._dynamo.config.patch(error_on_recompile=True):      # the graph compiled aside fits the real steps
        assert _tokens(auto, prompts) == eager
    assert len(calls) == 11                          # every decode step after the prompt's


@pytest.mark.slow
def test_the_batcher_serves_at_once_and_compiles_its_batches_aside(model, smollm2):
    prompts = [[1, 5, 9, 2], [7, 3], [4, 4, 4, 4, 4, 8, 6]]

    def serve(b):
        reqs = [b.submit(Request(p, SamplingParams(temperature=0, max_new_tokens=8 + i))) for i, p in enumerate(prompts)]
        while b.running or b.waiting or b.chunked:
            b.step()
        return [r.tokens for r in reqs]
    eager = serve(Batcher(model, smollm2.tokenizer, BatcherConfig(max_slots=2, max_len=64, compile="off")))
    b = Batcher(model, smollm2.tokenizer, BatcherConfig(max_slots=2, max_len=64, compile="auto"))
    calls = _counting(b.steps)
    b.warmup()                                       # returns at once: the compiles run aside
    assert serve(b) == eager
    assert b.steps.wait(timeout=600) and b.steps.ready == {(1, 64), (2, 64)}
    before = len(calls)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert serve(b) == eager
    assert len(calls) - before > 10
