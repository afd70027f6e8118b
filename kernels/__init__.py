"""Dispatch for the two hot spots of the GPT: causal attention and the (linear + cross-entropy) loss.

model.py calls only the two functions below. On CUDA they run the Triton kernels of this folder; on
any other device they run the plain PyTorch reference, which has the same signature and semantics.
Set SPT_KERNELS=triton to force the Triton path (on CPU together with TRITON_INTERPRET=1, which is how
the tests check the kernels without a GPU) or SPT_KERNELS=torch to force the reference everywhere.
"""
import os

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _use_triton(device: torch.device) -> bool:
    choice = os.environ.get("SPT_KERNELS", "auto")
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"SPT_KERNELS={choice!r}: use auto, triton or torch")
    if choice == "auto":
        return device.type == "cuda"
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("SPT_KERNELS=triton off CUDA needs TRITON_INTERPRET=1, set before kernels/ loads")
    return choice == "triton"


# ---------------------------------------------------------------------------------------------
# References: the definitions the Triton kernels must match.

def attention_reference(q, k, v, scale=None):
    """Causal softmax attention on (batch, heads, seq, head_dim) tensors."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _chunk_loss_sum(hidden, weight, targets, ignore_index):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")


def linear_cross_entropy_reference(hidden, weight, targets, ignore_index=-1, chunk_size=4096):
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets, skipping ignore_index.

    The N x V logits of a GPT-2 vocabulary are the largest activation of a small model, so the
    reference never holds them all: it walks token chunks and recomputes each chunk's logits in the
    backward pass (activation checkpointing) instead of keeping them.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        if hidden.requires_grad or weight.requires_grad:
            total = total + checkpoint(_chunk_loss_sum, hidden[sl], weight, targets[sl], ignore_index,
                                       use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hidden[sl], weight, targets[sl], ignore_index)
    count = (targets != ignore_index).sum().clamp(min=1)
    return total / count


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
