"""Cross-entropy of the output head without its logits tensor.

Training computes softmax cross-entropy over the vocabulary for every token. Done plainly, the
(tokens, vocab) logits are written in full, read by log-softmax, written again as log-probabilities,
and the backward pass reads and writes that much twice more: for SmolLM2's 49k vocabulary and a
batch of 8k tokens that is 1.6 GB of float32 a pass. `linear_cross_entropy` instead walks the
tokens in chunks whose logits stay small, and for each chunk computes the loss and, at once, its
gradients with respect to the hidden states and the head weight: the softmax minus the one-hot target is the gradient of the logits, and two matmuls carry
it to the inputs. The backward pass only scales what forward computed. Same matmuls as the plain
way, the same loss to float rounding, far less memory: on 2 CPU cores the head and loss of the
lamina-speedrun preset (4096 tokens, 4096-token vocabulary) take 290 ms instead of 410 ms forward
and backward; for SmolLM2's 49k vocabulary the time is the same as the plain way's, and the
memory a chunk's. Liger-Kernel's fused linear cross-entropy does the same on GPUs."""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100   # targets equal to this add nothing to the loss (transformers' convention)
# Logits per chunk, and at least MIN_ROWS tokens: fewer rows make the head's matmuls slow (on 2
# CPU cores, 64-row chunks of SmolLM2's head ran 15% slower than the plain way, 1024-row ones as
# fast; for a 4096-token vocabulary 1024 rows are 16 MB of logits and 30% faster than plain).
CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 1 * 2**30}
MIN_ROWS = 1024


@torch.compiler.disable   # a Python loop over chunks: compiled models run it eagerly after their graph
def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy of softmax(h @ weight.T) against `targets`, over the targets that are not
    `ignore_index` (NaN when there are none, like `F.cross_entropy`). h (N, dim), weight
    (vocab, dim), targets (N,). Under autocast the matmuls run in the autocast dtype and the
    softmax in float32, as the plain model forward followed by `.float()` would."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, dtype: torch.dtype):
        # Only the tokens with a target go through the head: in SFT the prompts and the system
        # turn are often half the tokens, and their logits would be computed to be multiplied by 0.
        kept = (targets != ignore_index).nonzero().squeeze(1)
        full = h
        if len(kept) < len(targets):                                        # a copy, only when needed
            h, targets = h.index_select(0, kept), targets.index_select(0, kept)
        n, vocab = h.shape[0], weight.shape[0]
        rows = max(MIN_ROWS, CHUNK_BYTES.get(h.device.type, CHUNK_BYTES["cuda"]) // (4 * vocab))
        w = weight.to(dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, n, rows):
            hc, at = h[start:start + rows].to(dtype), targets[start:start + rows, None]   # (r, dim), (r, 1)
            logp = torch.log_softmax((hc @ w.T).float(), dim=-1)            # (r, vocab)
            total -= logp.gather(1, at).sum()
            if not (want_h or want_w):
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot(target)
            grad = logp.exp_()
            grad.scatter_add_(1, at, torch.full_like(grad[:, :1], -1.0))
            grad = grad.to(dtype)
            if want_h:
                grad_h[start:start + rows] = grad @ w
            if want_w:
                if dtype == torch.float32:
                    grad_w.addmm_(grad.T, hc)
                else:
                    grad_w += grad.T @ hc
        count = torch.tensor(len(kept), dtype=torch.float32, device=h.device)
        if grad_h is not None and h is not full:
            grad_h = torch.zeros_like(full).index_copy_(0, kept, grad_h)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count
        return (grad_h * scale.to(grad_h.dtype) if grad_h is not None else None,
                (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None,
                None, None, None)


# Vocabulary columns per step of `linear_target_logprobs`: 850 rows x 4096 columns of float32 are
# 14 MB, which stay in cache between the matmul that writes them and the reductions that read them.
VOCAB_CHUNK = 4096


@torch.no_grad()
def linear_target_logprobs(h: Tensor, weight: Tensor, targets: Tensor, rows: Tensor | None = None
                           ) -> tuple[Tensor, Tensor]:
    """log_softmax(h @ weight.T)[rows[i], targets[i]] for every target, and whether targets[i] is
    its row's argmax (the first, on ties), without the (rows, vocab) logits: h (n, dim), weight
    (vocab, dim), targets (m,), rows (m,) indices into h (default: m = n, row i for target i)
    -> float32 (m,), bool (m,). Several targets may share a row: the row goes through the
    output layer once (the four endings of a HellaSwag item all score their first token at the
    context's last position).

    What evaluation needs from the output layer. Done plainly, a batch of 850 scored positions
    of SmolLM2 writes 167 MB of logits, then as much again of log-probabilities, then reads them
    for the argmax. Here the vocabulary is walked in `VOCAB_CHUNK` columns: each chunk's logits
    give their maximum (for the argmax and a running log-sum-exp, summed in float64) and the
    target's logit when it falls in the chunk. On 2 CPU cores, for 850 rows of SmolLM2, this
    takes 0.48-0.51 s instead of 0.67-0.68 s (chunks of 2048 columns: 0.52 s, 8192: 0.56 s), and
    the memory of one chunk. The sums of exponentials are kept in float64, which makes the
    log-probabilities more exact than F.log_softmax's (lm-eval's): over 41 tokens of SmolLM2
    their sum is 8e-6 nats from a float64 computation of the whole head, F.log_softmax's 7e-4
    (its float32 sum of 49k exponentials runs about 2e-5 nats a token high)."""
    n, vocab = h.shape[0], weight.shape[0]
    running_max = torch.full((n,), float("-inf"), device=h.device)     # the largest logit so far
    best_at = torch.zeros(n, dtype=torch.long, device=h.device)          # and where it is
    sum_exp = torch.zeros(n, dtype=torch.float64, device=h.device)       # sum of exp(logit - running_max)
    rows = torch.arange(n, device=h.device) if rows is None else rows
    picked = torch.zeros(len(targets), device=h.device)
    for lo in range(0, vocab, VOCAB_CHUNK):
        z = (h @ weight[lo:lo + VOCAB_CHUNK].T).float()                      # (n, c)
        top, at = z.max(dim=1)
        better = top > running_max                                          # an earlier chunk wins ties
        best_at = torch.where(better, at + lo, best_at)
        inside = (targets >= lo) & (targets < lo + z.shape[1])
        picked = torch.where(inside, z[rows, (targets - lo).clamp(0, z.shape[1] - 1)], picked)
        new_max = torch.maximum(running_max, top)
        sum_exp = sum_exp * torch.exp(running_max - new_max).double() + \
            z.sub_(new_max[:, None]).exp_().sum(dim=1, dtype=torch.float64)
        running_max = new_max
    logp = picked.double() - running_max[rows].double() - sum_exp[rows].log()
    return logp.float(), best_at[rows] == targets
