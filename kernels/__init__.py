"""Dispatch for the two hot spots of the GPT: causal attention and the (linear + cross-entropy) loss.

model.py calls only the two functions below. On CUDA they run the Triton kernels of this folder; on
any other device they run the plain PyTorch reference, which has the same signature and semantics.
Set SPT_KERNELS=triton to force the Triton path (on CPU together with TRITON_INTERPRET=1, which is how
the tests check the kernels without a GPU) or SPT_KERNELS=torch to force the reference everywhere.
"""
import os

import torch
import torch.nn.functional as F


def _use_triton(device: torch.device) -> bool:
    choice = os.environ.get("SPT_KERNELS", "auto")
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"SPT_KERNELS={choice!r}: use auto, triton or torch")
    if choice == "auto":
        return device.type == "cuda"
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("SPT_KERNELS=triton off CUDA needs TRITON_INTERPRET=1, set before kernels/ loads")
    return choice == "triton"


# Compile options of every Triton launch (and of compile_report.py). FP fusion lets the compiler turn
# a * b + c into one fused multiply-add: faster, and rounded once instead of twice. Triton up to 3.9
# fuses by default, but 3.10 stops, so the kernels ask for it rather than change with the version.
TRITON_OPTIONS = {"enable_fp_fusion": True}


# ---------------------------------------------------------------------------------------------
# References: the definitions the Triton kernels must match.

def attention_reference(q, k, v, scale=None):
    """Causal softmax attention on (batch, heads, seq, head_dim) tensors."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


class _LinearCrossEntropy(torch.autograd.Function):
    """The fused algorithm in plain PyTorch: per chunk of tokens, logits -> loss and, right away, the
    gradient d loss / d logits = (softmax - onehot) / count, which turns into dh (chunk rows) and dW
    (accumulated in fp32); the chunk's logits are then dropped. Backward only scales the stored
    gradients by grad_output. One chunk of logits is alive at a time and no matmul is recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size):
        valid = targets != ignore_index
        count = valid.sum().clamp(min=1)
        safe_targets = targets.masked_fill(~valid, 0)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when checking in fp64
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        dh = torch.empty_like(hidden)
        dw = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h, t, keep = hidden[rows], safe_targets[rows], valid[rows]
            logits = (h @ weight.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            loss += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * keep).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad *= (keep / count).to(acc)[:, None]
            dh[rows] = grad.to(weight.dtype) @ weight
            dw.addmm_(grad.t(), h.to(acc))
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_output):
        dh, dw = ctx.saved_tensors
        return dh * grad_output.to(dh.dtype), (dw * grad_output).to(ctx.weight_dtype), None, None, None


def linear_cross_entropy_reference(hidden, weight, targets, ignore_index=-1, chunk_size=1024):
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets, skipping ignore_index.

    The N x V logits of a GPT-2 vocabulary are the largest activation of a small model, so the
    reference never holds them all: it walks chunks of chunk_size tokens (see _LinearCrossEntropy).
    Without gradients it just sums the chunks' losses.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_size)
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for start in range(0, hidden.shape[0], chunk_size):
        logits = hidden[start:start + chunk_size] @ weight.t()
        total += F.cross_entropy(logits.to(total.dtype), targets[start:start + chunk_size],
                                 ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Dispatch: what model.py calls.

def causal_attention(q, k, v, scale=None):
    if _use_triton(q.device):
        from kernels.attention import flash_attention
        return flash_attention(q, k, v, scale)
    return attention_reference(q, k, v, scale)


def linear_cross_entropy(hidden, weight, targets, ignore_index=-1):
    if _use_triton(hidden.device):
        from kernels.cross_entropy import fused_linear_cross_entropy
        return fused_linear_cross_entropy(hidden, weight, targets, ignore_index)
    return linear_cross_entropy_reference(hidden, weight, targets, ignore_index)
