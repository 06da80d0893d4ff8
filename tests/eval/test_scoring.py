"""The prefix-sharing scorer against the plain computation (one causal forward per request), and
the metrics on hand-made items whose right answer is known."""

import dataclasses
import math
import random

import pytest
import torch
import torch.nn.functional as F

from lamina.eval.metrics import aggregate_choice, choice_metrics, extract_gsm8k, mean_stderr, normalize_answer
from lamina.eval.scoring import MIN_PREAMBLE, ScoringRequest, Scorer, encode_pair
from lamina.model import Transformer, init_weights, preset


@pytest.fixture(scope="module")
def debug_model():
    torch.manual_seed(0)
    return init_weights(Transformer(preset("debug")), seed=1, std=0.2).eval()


def plain_loglikelihood(model, r: ScoringRequest, max_len: int) -> tuple[float, bool]:
    """What lm-eval's HF backend does: one row, logits everywhere, slice the continuation."""
    full = list(r.context + r.continuation)[-(max_len + 1):]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([full[:-1]])).float(), -1)[0]
    picked = logp[-len(r.continuation):]
    target = torch.tensor(r.continuation)
    return float(picked.gather(1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all())


def random_requests(seed: int, n_items: int, preamble: int = 0) -> list[ScoringRequest]:
    """Items of 1-4 choices: a shared context (after an optional block-wide preamble), choices
    of 1-9 tokens that sometimes share their first tokens, and some multiple-input items
    (different contexts, one continuation) as in WinoGrande."""
    rng = random.Random(seed)
    tok = lambda n: tuple(rng.randrange(512) for _ in range(n))  # noqa: E731
    head = tok(preamble)
    out = []
    for item in range(n_items):
        ctx = head + tok(rng.randint(1, 40))
        if rng.random() < 0.2:   # multiple input: contexts differ, continuation shared
            cont = tok(rng.randint(1, 6))
            out += [ScoringRequest(ctx + tok(rng.randint(0, 3)), cont, item) for _ in range(2)]
            continue
        stem = tok(rng.randint(0, 2))
        for _ in range(rng.randint(1, 4)):
            out.append(ScoringRequest(ctx, stem + tok(rng.randint(1, 7)), item))
    return out


@pytest.mark.parametrize("preamble", [0, MIN_PREAMBLE + 8])
@pytest.mark.parametrize("batch_size,max_tokens", [(1, 4096), (5, 300)])
def test_shared_prefix_scores_equal_one_forward_per_request(debug_model, preamble, batch_size, max_tokens,
                                                            monkeypatch):
    from lamina.model import loss
    monkeypatch.setattr(loss, "VOCAB_CHUNK", 100)   # the output layer in 6 chunks of the 512-token vocabulary
    requests = random_requests(preamble + batch_size, 16, preamble)
    ours = Scorer(debug_model, batch_size=batch_size, max_tokens=max_tokens).loglikelihood(requests)
    for r, (ll, greedy) in zip(requests, ours):
        ref_ll, ref_greedy = plain_loglikelihood(debug_model, r, debug_model.config.max_seq_len)
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy


def test_plan_finds_the_preamble_and_batches_items_by_length_within_the_budgets(debug_model):
    requests = random_requests(3, 40, preamble=MIN_PREAMBLE + 8)
    [(preamble, batches)] = Scorer(debug_model, batch_size=6, max_tokens=400).plan(requests)   # one block
    assert preamble == list(requests[0].context[:len(preamble)]) and len(preamble) >= MIN_PREAMBLE + 8
    lengths = [it.length for batch in batches for it in batch]
    assert lengths == sorted(lengths, reverse=True)               # longest first, so rows pad little
    assert sorted(i for batch in batches for it in batch for i in it.index) == list(range(len(requests)))
    for batch in batches:
        assert len(batch) <= 6 and (len(batch) == 1 or len(batch) * batch[0].length <= 400)


def test_contexts_longer_than_the_model_are_cut_from_the_left_as_lm_eval_does(debug_model):
    max_len = debug_model.config.max_seq_len
    rng = random.Random(3)
    r = ScoringRequest(tuple(rng.randrange(512) for _ in range(max_len + 40)), (5, 6, 7))
    (ll, _), = Scorer(debug_model).loglikelihood([r])
    assert ll == pytest.approx(plain_loglikelihood(debug_model, r, max_len)[0], abs=1e-4)


def test_greedy_is_true_exactly_when_argmax_decoding_gives_the_continuation(debug_model):
    ctx = (1, 2, 3, 4)
    with torch.no_grad():
        a = int(debug_model(torch.tensor([ctx]))[0, -1].argmax())
        b = int(debug_model(torch.tensor([ctx + (a,)]))[0, -1].argmax())
    (_, greedy), (_, other) = Scorer(debug_model).loglikelihood(
        [ScoringRequest(ctx, (a, b), 0), ScoringRequest(ctx, ((a + 1) % 512, b), 0)])
    assert greedy and not other


def test_encode_pair_moves_trailing_space_to_the_continuation_and_splits_like_lm_eval(smollm2):
    tok = smollm2.tokenizer
    ctx, cont = encode_pair(tok.encode, "Question: 2+2=\nAnswer: ", "4", prefix_id=tok.bos_id)
    assert tok.decode(ctx) == "Question: 2+2=\nAnswer:" and tok.decode(cont) == " 4"
    whole = tok.encode("The cat sat")
    ctx, cont = encode_pair(tok.encode, "", "The cat sat", prefix_id=tok.bos_id)
    assert ctx == (tok.bos_id,) and list(cont) == whole


@pytest.mark.parametrize("task", ["mmlu", "hellaswag", "winogrande", "lambada", "gsm8k"])
def test_requests_encoded_in_one_batch_equal_encode_pair_request_by_request(smollm2_llm, task):
    from lamina.eval.harness import encode_requests
    from lamina.eval.tasks import TASKS
    tok = smollm2_llm.tokenizer
    items = TASKS[task].items(limit=4)
    if task == "gsm8k":    # an empty context: the continuation is cut after the prefix token
        items[0] = dataclasses.replace(items[0], requests=(("", "The cat sat"),))
    expected = [encode_pair(tok.encode, ctx, cont, prefix_id=tok.bos_id if tok.bos_id is not None else tok.eos_id)
                for it in items for ctx, cont in it.requests]
    got = encode_requests(smollm2_llm, items)
    assert [(r.context, r.continuation) for r in got] == expected
    assert [r.item for r in got] == [i for i, it in enumerate(items) for _ in it.requests]


def test_accuracy_and_length_normalized_accuracy_on_known_items():
    # a long right answer loses on total log-likelihood and wins per character
    m = choice_metrics(lls=[-6.0, -8.0], gold=1, lengths=[3, 40])
    assert m == {"acc": 0.0, "acc_norm": 1.0}
    m = choice_metrics(lls=[-6.0, -8.0], gold=0, lengths=[3, 40])
    assert m == {"acc": 1.0, "acc_norm": 0.0}
    agg = aggregate_choice([{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}, {"acc": 1.0}], ["acc"])
    assert agg["acc"] == 0.75
    assert agg["acc_stderr"] == pytest.approx(0.25)   # sample variance 0.25, n = 4


def test_mean_stderr_is_the_sample_standard_error():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    assert mean_stderr(xs) == pytest.approx(math.sqrt(var / len(xs)))


def test_gsm8k_answer_extraction_follows_lm_eval_strict_and_flexible():
    text = " Natalia sold 48/2 = 24 clips in May. 48+24 = 72. The answer is 72.\n\n"
    assert extract_gsm8k(text) == {"strict-match": "72", "flexible-extract": "72."}
    assert extract_gsm8k(" I think it is $1,000 or so")["strict-match"] == "[invalid]"
    assert extract_gsm8k(" I think it is $1,000 or so")["flexible-extract"] == "$1,000"
    assert normalize_answer("$1,000.") == normalize_answer("1000") == "1000"
