"""`lamina serve` against a hostile client: one request never harms another, every bad value gets
a 4xx in the OpenAI error format (never a 500, a traceback or a hang), unsupported parameters are
named, and the body cap holds for chunked bodies too. A live server over HTTP on a tiny model (the
debug preset with SmolLM2's vocabulary and tokenizer), so that hundreds of requests take seconds."""

import dataclasses
import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.model import Transformer, init_weights, preset
from lamina.serve import LLM, Batcher, BatcherConfig, SamplingParams
from lamina.serve.batcher import Request

from .conftest import running

MODEL = "tiny"
MAX_TOKENS = 8        # the server's cap on max_tokens (and a chat request's default)
MAX_BODY = 64 << 10   # a small body cap, quick to cross
TIMEOUT = 60          # seconds a client waits: past it, the server hung


@pytest.fixture(scope="module")
def tiny(smollm2):
    """The debug preset with SmolLM2's vocabulary: chat prompts are real token ids, steps are fast."""
    config = dataclasses.replace(preset("debug"), vocab_size=smollm2.config.vocab_size)
    return LLM(init_weights(Transformer(config), seed=3, std=0.2), smollm2.tokenizer)


@pytest.fixture(scope="module")
def server(tiny):
    """(base URL, app): 8 slots of 128 tokens, small caps on max_tokens and the body."""
    from lamina.serve.api import ServeConfig, create_app
    app = create_app(tiny, ServeConfig(model_name=MODEL, max_tokens=MAX_TOKENS, default_max_tokens=MAX_TOKENS,
                                       max_body_bytes=MAX_BODY, request_timeout_s=TIMEOUT,
                                       engine=BatcherConfig(max_slots=8, max_len=128, max_queue=256)))
    with running(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def post(url: str, path: str, body) -> httpx2.Response:
    return httpx2.post(url + path, content=json.dumps(body), timeout=TIMEOUT,
                       headers={"Content-Type": "application/json"})


def chat(content: str, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


def assert_openai_error(r: httpx2.Response, status: int | None = None, param: str | None = None) -> dict:
    assert 400 <= r.status_code < 500 and (status is None or r.status_code == status), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


NORMAL = [chat(f"Tell me about {t}.", temperature=0, max_tokens=MAX_TOKENS)
          for t in ("llamas", "the sea", "bread", "rain", "chess", "tea", "the moon", "Paris")]


@pytest.fixture(scope="module")
def alone(url):
    """Each normal request's greedy reply, asked for alone."""
    return [post(url, "/v1/chat/completions", b).json()["choices"][0]["message"]["content"] for b in NORMAL]


def alongside(url: str, hostile: list[dict], rounds: int = 2):
    """Send the normal requests `rounds` times and the hostile ones, mixed, 16 at a time: the set
    of replies each normal request got, and (body, response) of every hostile one."""
    jobs = [("n", b) for b in NORMAL * rounds] + [("h", b) for b in hostile]
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(lambda job: (job[0], job[1], post(url, "/v1/chat/completions", job[1])), jobs))
    normal = {}
    for kind, body, r in done:
        if kind == "n":
            assert r.status_code == 200, r.text
            normal.setdefault(NORMAL.index(body), set()).add(r.json()["choices"][0]["message"]["content"])
    return [normal[i] for i in range(len(NORMAL))], [(body, r) for kind, body, r in done if kind == "h"]


# -- 1. one request never ends another ----------------------------------------------------------

def test_a_tiny_temperature_samples_greedily_and_harms_no_other_request(url, alone):
    hostile = [dict(b, temperature=t) for b in NORMAL[:2] for t in (1e-300, 5e-324, 1e-40, 1e-6)]
    normal, answers = alongside(url, hostile)
    assert normal == [{a} for a in alone]
    for body, r in answers:   # below 1e-5 a temperature is its limit: greedy
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == alone[NORMAL.index(dict(body, temperature=0))]


def test_a_seed_torch_cannot_take_is_refused_and_the_widest_seeds_work(url, alone):
    for seed in (2**64, -2**63 - 1, 10**30):
        assert_openai_error(post(url, "/v1/chat/completions", chat("Hi", temperature=1, seed=seed)), 400, "seed")
    hostile = [chat("Hi", temperature=1, seed=s, max_tokens=MAX_TOKENS) for s in (2**64 - 1, -2**63, 0, -1)]
    normal, answers = alongside(url, hostile * 2)
    assert normal == [{a} for a in alone]
    by_seed = {}
    for body, r in answers:
        assert r.status_code == 200, r.text
        by_seed.setdefault(body["seed"], set()).add(r.json()["choices"][0]["message"]["content"])
    assert len(by_seed) == 4 and all(len(v) == 1 for v in by_seed.values())   # each seed repeats


@pytest.fixture(scope="module")
def debug_model():
    return init_weights(Transformer(preset("debug")), seed=3, std=0.2)


def run_batcher(batcher: Batcher) -> None:
    while batcher.running or batcher.waiting or batcher.chunked:
        batcher.step()


def greedy_alone(model, tokenizer, prompt: list[int], n: int) -> list[int]:
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=1, max_len=64))
    r = b.submit(Request(prompt, SamplingParams(temperature=0, max_new_tokens=n)))
    run_batcher(b)
    return r.tokens


def test_an_error_in_one_row_ends_that_request_alone_and_every_request_is_answered(debug_model, smollm2):
    """Values that slip past validation and a client callback that raises: each ends its own
    request with "error"; the requests beside them, in the same step, get what they get alone."""
    tok = smollm2.tokenizer
    b = Batcher(debug_model, tok, BatcherConfig(max_slots=4, max_len=64))
    outputs: dict[int, list] = {}

    def submit(prompt, params=SamplingParams(temperature=0, max_new_tokens=12), on_output=None):
        r = Request(prompt, params)
        r.on_output = on_output or (lambda out, r=r: outputs.setdefault(r.id, []).append(out))
        return b.submit(r)

    first = submit([1, 2, 3])
    b.step()                                   # running before the trouble starts
    bad_seed = SamplingParams(temperature=1, max_new_tokens=12)
    object.__setattr__(bad_seed, "seed", 2**64)           # what the API now refuses at the door
    seeded = submit([5, 6], bad_seed)
    beside = submit([7, 8, 9])                 # admitted in the same step as the bad seed

    def explode(out):
        raise RuntimeError("the client's callback failed")
    failing = submit([11, 12], on_output=explode)
    run_batcher(b)

    assert seeded.finish_reason == "error" and outputs[seeded.id][-1].finish_reason == "error"
    assert failing.finish_reason == "error"
    for r, prompt in ((first, [1, 2, 3]), (beside, [7, 8, 9])):
        assert r.finish_reason == "length"
        assert r.tokens == greedy_alone(debug_model, tok, prompt, 12)
        assert "".join(o.text for o in outputs[r.id]) == tok.decode(r.tokens)
    assert b.stats["errors"] == 2 and not b.running and not b.waiting


def test_a_failed_prefill_answers_its_whole_group_and_the_running_requests_go_on(debug_model, smollm2):
    tok = smollm2.tokenizer
    b = Batcher(debug_model, tok, BatcherConfig(max_slots=4, max_len=64))
    answers: dict[int, str] = {}

    def submit(prompt):
        r = Request(prompt, SamplingParams(temperature=0, max_new_tokens=10))
        r.on_output = lambda out, r=r: out.finish_reason and answers.setdefault(r.id, out.finish_reason)
        return b.submit(r)

    first = submit([1, 2, 3])
    b.step()
    vocab = debug_model.config.vocab_size
    group = [submit([4, vocab + 5]), submit([6, 7])]   # prefilled together; one token id is no token
    run_batcher(b)
    assert [answers[r.id] for r in group] == ["error", "error"]
    assert first.tokens == greedy_alone(debug_model, tok, [1, 2, 3], 10)
    after = submit([6, 7])                     # the slots are whole again
    run_batcher(b)
    assert after.tokens == greedy_alone(debug_model, tok, [6, 7], 10)


def test_sampling_params_cap_seed_and_take_tiny_temperatures_as_greedy():
    assert SamplingParams(temperature=5e-324).greedy and not SamplingParams(temperature=1e-4).greedy
    for bad in ({"seed": 2**64}, {"seed": -2**63 - 1}, {"temperature": float("nan")},
                {"temperature": float("inf")}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# -- 2. the body cap holds whatever the framing -------------------------------------------------

def test_a_chunked_body_is_counted_as_it_arrives_and_stopped_at_the_cap(url, client):
    sent = 0

    def body(total: int):
        nonlocal sent
        head = json.dumps(chat("Hi", temperature=0, max_tokens=2)).encode()
        yield head[:-1]
        sent = len(head) - 1
        while sent < total:                    # JSON whitespace: a valid body, only long
            yield b" " * 8192
            sent += 8192
        yield b"}"

    # No Content-Length: httpx sends a generator as `Transfer-Encoding: chunked`.
    def send(total: int) -> httpx2.Response:
        return httpx2.post(url + "/v1/chat/completions", content=body(total), timeout=TIMEOUT,
                           headers={"Content-Type": "application/json"})
    small = send(MAX_BODY // 2)
    assert small.status_code == 200 and small.request.headers["transfer-encoding"] == "chunked", small.text
    big = send(256 << 20)
    error = assert_openai_error(big, 413)
    assert error["code"] == "request_too_large" and str(MAX_BODY) in error["message"]
    assert sent < 64 << 20                     # the server stopped reading long before 256 MB
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=2).usage.completion_tokens == 2


def test_a_content_length_over_the_cap_is_refused_before_reading(url):
    r = httpx2.post(url + "/v1/completions", content=b"{" + b" " * MAX_BODY + b"}", timeout=TIMEOUT,
                    headers={"Content-Type": "application/json"})
    assert assert_openai_error(r, 413)["code"] == "request_too_large"


# -- 3. unsupported parameters are named ---------------------------------------------------------

UNSUPPORTED = [("best_of", 3), ("functions", [{"name": "f"}]), ("function_call", {"name": "f"})]
NO_OPS = [("best_of", 1), ("response_format", {"type": "text"}), ("tools", []), ("tool_choice", "none"),
          ("tool_choice", "auto"), ("best_of", None)]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("param,value", UNSUPPORTED, ids=[p for p, _ in UNSUPPORTED])
def test_an_unsupported_parameter_is_refused_by_name(url, path, param, value):
    base = chat("Hi") if path == "/v1/chat/completions" else {"model": MODEL, "prompt": "Hi"}
    error = assert_openai_error(post(url, path, {**base, param: value}), 400, param)
    assert error["message"].startswith(f"{param}: not supported yet"), error


def test_suffix_is_refused_by_name(url):
    error = assert_openai_error(post(url, "/v1/completions", {"model": MODEL, "prompt": "Hi", "suffix": "!"}),
                                400, "suffix")
    assert "not supported yet" in error["message"]


@pytest.mark.parametrize("path,param,value,says", [
    ("/v1/chat/completions", "n", 17, "at most 16"),
    ("/v1/chat/completions", "n", 0, "greater than or equal to 1"),
    ("/v1/chat/completions", "top_logprobs", 21, "less than or equal to 20"),
    ("/v1/chat/completions", "top_logprobs", 3, "needs logprobs: true"),
    ("/v1/chat/completions", "presence_penalty", 2.5, "less than or equal to 2"),
    ("/v1/chat/completions", "logit_bias", {"hello": 1}, "keys must be token ids"),
    ("/v1/chat/completions", "logit_bias", {"5": 101}, "values must be in [-100, 100]"),
    ("/v1/chat/completions", "logit_bias", {"99999999": 1}, "token ids below"),
    ("/v1/completions", "logprobs", 21, "less than or equal to 20"),
    ("/v1/completions", "max_tokens", 0, "0 only with echo"),
    ("/v1/completions", "prompt", ["a"] * 65, "at most 64"),
])
def test_a_bad_value_of_a_supported_parameter_is_a_400_naming_it(url, path, param, value, says):
    base = chat("Hi") if path == "/v1/chat/completions" else {"model": MODEL, "prompt": "Hi"}
    error = assert_openai_error(post(url, path, {**base, param: value}), 400, param)
    assert says in error["message"], error


def test_unsupported_parameters_at_their_no_op_values_are_accepted(url):
    for param, value in NO_OPS:
        r = post(url, "/v1/chat/completions", chat("Hi", max_tokens=2, **{param: value}))
        assert r.status_code == 200, (param, value, r.text)
    r = post(url, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "echo": False,
                                       "suffix": ""})
    assert r.status_code == 200, r.text


def test_the_sdk_sees_an_unsupported_parameter_refused_by_name(client):
    with pytest.raises(openai.BadRequestError, match="best_of: not supported yet") as e:
        client.completions.create(model=MODEL, prompt="Hi", best_of=3)
    assert e.value.param == "best_of"


# -- any value of any parameter: 200 or a 4xx, never a 500 or a hang ---------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
EDGES = st.sampled_from([0, 1, -1, 0.0, -0.0, 1e-300, 5e-324, 1e308, 2**63, 2**64, -2**63 - 1, 10**40,
                         "", "0", "\x00", "\ud800", "a\udfffb", "<|im_end|>", [], {}, [1, 2], [""] * 5,
                         {"type": "text"}])
VALUES = JSON | EDGES
SHARED = ["model", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "stream", "stream_options",
          "n", "best_of", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias",
          "response_format", "tools", "tool_choice", "user"]
CHAT_PARAMS = SHARED + ["messages", "max_completion_tokens"]
COMPLETION_PARAMS = SHARED + ["prompt", "echo", "suffix"]


def assert_answered_well(r: httpx2.Response) -> None:
    """A 4xx in the OpenAI error format, or a 200 whose stream (if any) ends in [DONE], no error."""
    if r.status_code != 200:
        assert_openai_error(r)
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in r.text.splitlines() if line]
        assert events[-1] == "data: [DONE]", events
        assert not any('"error"' in e for e in events), events
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def hostile_bodies(base: dict, params: list[str]):
    return st.dictionaries(st.sampled_from(params), VALUES, min_size=1, max_size=3).map(lambda d: {**base, **d})


@settings(max_examples=100, deadline=None, database=None)
@given(body=hostile_bodies(chat("Hi", temperature=0, max_tokens=2), CHAT_PARAMS))
def test_any_value_of_any_chat_parameter_gets_a_200_or_an_openai_4xx(url, body):
    assert_answered_well(post(url, "/v1/chat/completions", body))


@settings(max_examples=100, deadline=None, database=None)
@given(body=hostile_bodies({"model": MODEL, "prompt": "Hi", "temperature": 0, "max_tokens": 2},
                           COMPLETION_PARAMS))
def test_any_value_of_any_completion_parameter_gets_a_200_or_an_openai_4xx(url, body):
    assert_answered_well(post(url, "/v1/completions", body))


# -- load: hostile-but-valid values mixed into normal traffic ------------------------------------

HOSTILE = [   # valid JSON, mostly valid requests, each aimed at a weak spot
    {"temperature": 1e-300}, {"temperature": 5e-324, "top_p": 1e-300}, {"temperature": 2, "top_k": 10**30},
    {"temperature": 1, "seed": 2**64 - 1}, {"temperature": 1, "seed": -2**63}, {"seed": 2**64},
    {"temperature": 1, "top_p": 5e-324, "top_k": 1}, {"stop": ["", "\x00", "\ud7ff" * 50, "a" * 2000]},
    {"stream": True, "temperature": 1e-300, "stream_options": {"include_usage": True}},
    {"max_tokens": 10**30}, {"n": 2}, {"logprobs": True}, {"temperature": 2, "top_p": 1, "top_k": 0},
]


def test_hostile_requests_mixed_into_normal_load_at_concurrency_16_harm_no_normal_reply(url, alone):
    """160 requests at concurrency 16, one in ten hostile: every normal one gets its greedy reply."""
    rng = random.Random(1)
    hostile = [chat(f"Tell me about {rng.choice(['tea', 'rain', 'x' * 300])}.",
                    **{"max_tokens": MAX_TOKENS, **rng.choice(HOSTILE)}) for _ in range(16)]
    normal, answers = alongside(url, hostile, rounds=18)
    assert normal == [{a} for a in alone]
    for _, r in answers:
        assert_answered_well(r)
    assert sum(r.status_code == 200 for _, r in answers) >= 8


def test_no_request_of_this_module_failed_in_the_engine(server, tiny):
    """Everything above, hypothesis's hundreds of bodies included, was refused at the door or
    served: no request ended with an engine error, and the engine still answers as the model does."""
    url, app = server
    r = post(url, "/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 3, "temperature": 0})
    assert r.json()["choices"][0]["text"] == tiny.generate("Once", temperature=0, max_new_tokens=3,
                                                           stop_token_ids=())
    assert app.state.batcher.stats["errors"] == 0
