"""LoRA adapters per request (`lamina serve --lora NAME=DIR`): rows of one batch computed with
different adapters equal PEFT's model for each; the engine, the batcher and the HTTP API pick the
adapter by name; and the real openai SDK drives several adapters on SmolLM2 at once."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.checkpoint import read_hf, write_hf
from lamina.model import ModelConfig, Transformer, from_state_dict, init_weights, weights
from lamina.post.lora import LoRAConfig, adapter_parameters, apply_lora, save_adapter
from lamina.serve import LLM, Batcher, BatcherConfig, SamplingParams
from lamina.serve.adapters import Adapters, parse_lora_flags
from lamina.serve.batcher import Request

from .conftest import running

TOLERANCE = 1e-4   # max abs logit difference in float32
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(base model directory, tokenizer, {name: adapter folder}): a tiny Llama with SmolLM2's
    tokenizer, and two adapters PEFT made on it: all projections at rank 4, and three at rank 8
    with rank-stabilised scaling."""
    from lamina.tokenizer import load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("lora-serve")
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=tok.vocab_size,
                         max_seq_len=256, tie_embeddings=True, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    base = write_hf(root / "base", config, weights(init_weights(Transformer(config), seed=1)), tok)
    folders = {}
    for name, seed, config in [("alpha", 3, LoraConfig(r=4, lora_alpha=16, target_modules=ALL)),
                               ("beta", 4, LoraConfig(r=8, lora_alpha=8, use_rslora=True,
                                                      target_modules=["q_proj", "v_proj", "down_proj"]))]:
        peft = get_peft_model(hf(base), config)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, p in peft.named_parameters():
                if "lora_" in key:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
        peft.save_pretrained(root / name)
        folders[name] = root / name
    return base, tok, folders


def lamina_model(base) -> Transformer:
    ck = read_hf(base)
    return from_state_dict(ck.config, ck.weights)


def hf(base) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def served(tiny) -> LLM:
    base, tok, folders = tiny
    return LLM(lamina_model(base), tok, lora=folders)


@torch.no_grad()
def test_rows_with_different_adapters_in_one_batch_equal_peft(tiny):
    base, _, folders = tiny
    llm = served(tiny)
    tokens = torch.randint(llm.model.config.vocab_size, (5, 20), generator=torch.Generator().manual_seed(0))
    rows = [0, 1, 2, 1, 0]        # base, alpha, beta, alpha, base
    with llm.adapters.select(rows):
        ours = llm.model(tokens)
    reference = {0: hf(base)}
    for name in folders:
        reference[llm.adapters.index(name)] = PeftModel.from_pretrained(hf(base), folders[name]).eval()
    for i, k in enumerate(rows):
        theirs = reference[k](tokens[i:i + 1]).logits[0]
        assert (ours[i] - theirs).abs().max() <= TOLERANCE, f"row {i} (adapter {k})"
    # the adapters do change the model, each its own way
    assert (ours[1] - reference[0](tokens[1:2]).logits[0]).abs().max() > 100 * TOLERANCE
    assert (ours[2] - reference[1](tokens[2:3]).logits[0]).abs().max() > 100 * TOLERANCE
    # a batch all of one adapter (no gather) computes the same as the mixed one
    with llm.adapters.select([1] * 5):
        assert (llm.model(tokens)[[1, 3]] - ours[[1, 3]]).abs().max() <= 1e-5
    # outside a selection the model is its base
    assert (llm.model(tokens[:1])[0] - reference[0](tokens[:1]).logits[0]).abs().max() <= TOLERANCE


def test_the_batcher_serves_each_request_with_its_own_adapter(tiny):
    llm = served(tiny)
    prompt = llm.tokenizer.encode("The quick brown fox")
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=())
    alone = {name: llm.generate("The quick brown fox", adapter=name, max_new_tokens=12, temperature=0,
                                stop_token_ids=()) for name in ["alpha", "beta"]}
    alone[None] = llm.generate("The quick brown fox", max_new_tokens=12, temperature=0, stop_token_ids=())
    assert len(set(alone.values())) == 3, "the adapters must each change the reply"
    batcher = Batcher(llm.model, llm.tokenizer, BatcherConfig(max_slots=4, max_len=64), llm.adapters)
    # the same prompt for every adapter, joining together: one prefill group, never shared across adapters
    requests = {name: batcher.submit(Request(list(prompt), params,
                                             adapter=0 if name is None else llm.adapters.index(name)))
                for name in ["alpha", None, "beta"]}
    while batcher.running or batcher.waiting or batcher.chunked:
        batcher.step()
    for name, r in requests.items():
        assert llm.tokenizer.decode(r.tokens) == alone[name], name
    with pytest.raises(LaminaError, match="no LoRA adapter 3"):
        batcher.submit(Request(list(prompt), params, adapter=3))


def test_adapters_refuse_what_they_cannot_serve(tiny, tmp_path):
    base, tok, folders = tiny
    with pytest.raises(LaminaError, match="adapter name"):
        LLM(lamina_model(base), tok, lora={"bad name!": folders["alpha"]})
    with pytest.raises(LaminaError, match="not a PEFT adapter folder"):
        LLM(lamina_model(base), tok, lora={"a": tmp_path})
    with pytest.raises(LaminaError, match="eagerly"):
        LLM(lamina_model(base), tok, lora=folders, compile=True)
    with pytest.raises(LaminaError, match="no LoRA adapter named 'gamma'"):
        served(tiny).generate("hi", adapter="gamma", max_new_tokens=2)
    # an adapter of another model is refused before the model changes
    model = lamina_model(base)
    foreign = Transformer(dataclasses.replace(model.config, dim=32, n_heads=2, n_kv_heads=1, head_dim=0, ffn_dim=64))
    apply_lora(foreign, LoRAConfig(r=2, alpha=4))
    save_adapter(foreign, tmp_path / "foreign", base_ref="elsewhere")
    names = {n for n, _ in model.named_modules()}
    with pytest.raises(LaminaError, match="another base model"):
        Adapters(model, {"foreign": tmp_path / "foreign"})
    assert {n for n, _ in model.named_modules()} == names
    assert parse_lora_flags(["a=/x", "b=y=z"]) == {"a": Path("/x"), "b": Path("y=z")}
    for bad, message in [(["a"], "NAME=DIR"), (["=x"], "NAME=DIR"), (["a=x", "a=y"], "given twice")]:
        with pytest.raises(LaminaError, match=message):
            parse_lora_flags(bad)


def test_serve_command_refuses_bad_lora_flags(capsys):
    assert main(["serve", "smollm2-135m-instruct", "--lora", "nodir", "--port", "0"]) == 1
    assert "NAME=DIR" in capsys.readouterr().err
    assert main(["serve", "smollm2-135m-instruct", "--lora", "a=x", "--compile", "--port", "0"]) == 1
    assert "leave out --compile" in capsys.readouterr().err
    assert main(["serve", "smollm2-135m-instruct", "--lora", "smollm2-135m-instruct=x", "--port", "0"]) == 1
    assert "served name" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# SmolLM2 with two adapters behind the real openai SDK

BASE = "smollm2"
QUESTION = [{"role": "user", "content": "Name a colour of the sky."}]


@pytest.fixture(scope="module")
def smollm2_adapters(smollm2, tmp_path_factory):
    """Two adapters on the real SmolLM2-135M-Instruct, saved in PEFT's format: one on attention,
    one on the feed-forward layers, their B drawn small enough that the model still writes text."""
    root = tmp_path_factory.mktemp("smollm2-lora")
    for name, targets, seed, size in [("terse", ("wq", "wv"), 1, 0.05), ("odd", ("w1", "w2", "w3"), 2, 0.02)]:
        model = from_state_dict(smollm2.config, smollm2.weights)
        apply_lora(model, LoRAConfig(r=8, alpha=16, targets=targets, seed=seed))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adapter_parameters(model)[1::2]:      # the B matrices
                p.copy_(size * torch.randn(p.shape, generator=g))
        save_adapter(model, root / name, base_ref="smollm2-135m-instruct")
    return {"terse": root / "terse", "odd": root / "odd"}


@pytest.fixture(scope="module")
def lora_server(smollm2, smollm2_adapters):
    from lamina.serve.api import ServeConfig, create_app
    llm = LLM(from_state_dict(smollm2.config, smollm2.weights), smollm2.tokenizer, lora=smollm2_adapters)
    app = create_app(llm, ServeConfig(model_name=BASE, engine=BatcherConfig(max_slots=4, max_len=256)))
    with running(app) as url:
        yield url, llm


@pytest.fixture(scope="module")
def lora_client(lora_server):
    import openai
    return openai.OpenAI(base_url=lora_server[0] + "/v1", api_key="none", max_retries=0, timeout=120)


def test_models_lists_the_adapters_with_their_base(lora_client):
    cards = {m.id: m for m in lora_client.models.list().data}
    assert list(cards) == [BASE, "terse", "odd"]
    assert cards[BASE].parent is None and cards["terse"].parent == cards["odd"].parent == BASE
    assert lora_client.models.retrieve("odd").id == "odd"


def test_the_request_model_picks_the_adapter_and_mixed_requests_share_a_batch(lora_server, lora_client):
    _, llm = lora_server

    def ask(model: str) -> str:
        reply = lora_client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0)
        assert reply.model == model
        return reply.choices[0].message.content

    expected = {model: llm.generate(QUESTION[0]["content"], chat=True, max_new_tokens=16, temperature=0,
                                    adapter=None if model == BASE else model)
                for model in [BASE, "terse", "odd"]}
    assert len(set(expected.values())) == 3, "each adapter must answer its own way"
    # two of each at once: rows of three adapters in the running batch together
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, [BASE, "terse", "odd"] * 2))
    assert got == [expected[m] for m in [BASE, "terse", "odd"] * 2]
    # streamed, and as a text completion too
    stream = lora_client.chat.completions.create(model="odd", messages=QUESTION, max_tokens=16, temperature=0,
                                                 stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected["odd"]
    text = lora_client.completions.create(model="terse", prompt="The sky is", max_tokens=8, temperature=0)
    assert text.choices[0].text == llm.generate("The sky is", adapter="terse", max_new_tokens=8, temperature=0)


def test_an_unknown_adapter_is_refused_naming_model(lora_client):
    import openai
    with pytest.raises(openai.NotFoundError) as e:
        lora_client.chat.completions.create(model="tersee", messages=QUESTION, max_tokens=4)
    assert e.value.body["param"] == "model" and "terse" in e.value.body["message"]
    # the server keeps serving
    assert lora_client.chat.completions.create(model="terse", messages=QUESTION, max_tokens=2).choices


def test_the_anthropic_sdk_picks_the_adapter_too(lora_server):
    import anthropic
    client = anthropic.Anthropic(base_url=lora_server[0], api_key="none", max_retries=0)
    reply = client.messages.create(model="terse", max_tokens=16, messages=QUESTION,
                                   extra_body={"temperature": 0})
    assert reply.model == "terse"
    assert reply.content[0].text == lora_server[1].generate(QUESTION[0]["content"], chat=True, adapter="terse",
                                                            max_new_tokens=16, temperature=0)
