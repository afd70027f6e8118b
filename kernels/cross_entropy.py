"""Fused linear + cross-entropy: the loss of a language model without its N x V logits.

The last layer of a GPT maps N hidden states (N = batch * seq tokens, width d) to V vocabulary
logits. With N = 16384 tokens and V = 50304 the logits are 824M numbers: 1.6 GB in bf16, 3.3 GB once
upcast to fp32 for a stable softmax, and the same again for their gradient. For a 124M-parameter
model that is the largest activation in the network, by far. But the loss needs only one number per
row, and the gradient has a closed form, so the logits can be produced, used and discarded a chunk of
rows at a time:

    logits = h W^T                                   (one chunk of rows, in the input dtype)
    lse    = log sum_j exp(logits_j)                 (per row: the log-sum-exp)
    loss   = lse - logits[target]                    (per row: -log softmax[target])
    dlogits = (softmax - onehot(target)) / n_valid   (softmax = exp(logits - lse))
    dh = dlogits W,    dW += dlogits^T h

The log-sum-exp trick: exp overflows for large logits, so lse is computed as m + log sum exp(x - m)
with m the row maximum. A Triton kernel finds it in one pass over the row with the online update
that flash attention also uses (when the running maximum grows from m to m', the running sum is
rescaled by exp(m - m')), then makes a second pass that writes the gradient over the logits in
place: no extra buffer. Everything inside the kernel is fp32; the target column's gradient,
softmax - 1, is formed in fp32 too and rounded only when stored (forming softmax in bf16 first and
then subtracting 1 would lose most of its bits when the model is confident).

Because the loss is the last operation of the forward pass, the gradients are computed right there
(for a loss of grad_output = 1) and the backward pass only rescales them: the logits are computed
once, not twice as with activation checkpointing. dW sums over every token of the batch, chunk by
chunk; it is accumulated in an fp32 buffer, because adding many chunk contributions into a bf16
accumulator rounds away the small ones (a known bug of fused-loss libraries that accumulated in the
weight's dtype). The mean divides by the number of non-ignored targets, counted on the device: no
.item(), so the host never waits for the GPU.
"""
import os

import torch
import triton
import triton.language as tl

from kernels import TRITON_OPTIONS

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_BLOCK_V = 64 if INTERPRET else 4096  # vocabulary columns per step of the row loop
NUM_WARPS = 1 if INTERPRET else 8  # one program per row: 8 warps stream it (1 in the interpreter: faster)
_CHUNK_BYTES = 256 * 2**20  # budget for one chunk of logits


@triton.jit
def _cross_entropy_rows(X, G, TGT, LOSS, INV_COUNT, stride_x, stride_g, V, ignore_index,
                        COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """One program per row of logits X: LOSS[row] = lse - x[target]; G[row] = d(mean loss)/dx.

    G may be X itself (the gradient then overwrites the logits). Rows whose target is ignore_index get
    a loss and a gradient of zero. INV_COUNT points to 1 / (number of non-ignored rows).
    """
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    target = tl.load(TGT + row)
    cols = tl.arange(0, BLOCK_V)

    # Pass 1: online log-sum-exp over the row, BLOCK_V columns at a time.
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        x = tl.load(X + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)

    valid = target != ignore_index
    x_target = tl.load(X + target, mask=valid, other=0.0).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))

    # Pass 2: the gradient, softmax - onehot, scaled for the mean (zero for ignored rows).
    if COMPUTE_GRAD:
        G += row * stride_g
        scale = tl.where(valid, tl.load(INV_COUNT), 0.0)
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            x = tl.load(X + offs, mask=offs < V, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(offs == target, 1.0, 0.0)) * scale
            tl.store(G + offs, g.to(G.dtype.element_ty), mask=offs < V)


def cross_entropy_rows(logits, targets, loss, grad, inv_count, ignore_index, block_v=None):
    """Launch the row kernel: per-row losses into `loss` (fp32, N) and, unless grad is None, the
    gradient of the mean loss into `grad` (may be `logits`, for in place). inv_count: fp32 scalar
    tensor holding 1 / (number of non-ignored targets)."""
    N, V = logits.shape
    assert logits.stride(1) == 1 and (grad is None or grad.stride(1) == 1)
    _cross_entropy_rows[(N,)](logits, logits if grad is None else grad, targets, loss, inv_count,
                              logits.stride(0), logits.stride(0) if grad is None else grad.stride(0), V, ignore_index,
                              COMPUTE_GRAD=grad is not None, BLOCK_V=block_v or _BLOCK_V,
                              num_warps=NUM_WARPS, **TRITON_OPTIONS)


def _inv_count(targets, ignore_index):
    return 1.0 / (targets != ignore_index).sum().clamp(min=1).float()


def _check_targets(targets, V, ignore_index):
    """The kernel reads the logit at each target: one out of range would read other memory. The check
    runs on the device without waiting for it (a failure surfaces at the next synchronisation)."""
    in_range = ((targets >= 0) & (targets < V)) | (targets == ignore_index)
    torch._assert_async(in_range.all(), f"cross-entropy targets must be in [0, {V}) or ignore_index {ignore_index}")


# ---------------------------------------------------------------------------------------------
# Fused linear + cross-entropy


def _chunk_rows(N, V, dtype):
    """Rows per chunk: a power of two whose logits fit in _CHUNK_BYTES (e.g. 2048 rows of a bf16
    50304-word vocabulary, 206 MB), since a matmul of that height still runs at full speed."""
    rows = max(1, _CHUNK_BYTES // (V * torch.finfo(dtype).bits // 8))
    return min(1 << (rows.bit_length() - 1), triton.next_power_of_2(N))


# A custom operator, not an autograd.Function: torch.compile calls it as it is instead of tracing
# into Triton's launcher (see the same note in attention.py).
@torch.library.custom_op("spt::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                             chunk: int, block_v: int, dtype: torch.dtype, need_dh: bool,
                             need_dw: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, d loss/d hidden, d loss/d weight), the gradients empty unless asked for. The matmuls
    run in `dtype` (under autocast, the autocast dtype, like the nn.Linear they replace); dW comes back
    in weight's dtype, rounded once from its fp32 accumulator."""
    N = hidden.shape[0]
    _check_targets(targets, weight.shape[0], ignore_index)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(dtype), weight.to(dtype)
        inv_count = _inv_count(targets, ignore_index)
        loss = torch.empty(N, dtype=torch.float32, device=hidden.device)
        dh = torch.empty(hidden.shape if need_dh else 0, dtype=hidden.dtype, device=hidden.device)  # contiguous,
        # whatever hidden's strides: the fake version below must describe the same layout
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        for start in range(0, N, chunk):
            rows = slice(start, start + chunk)
            logits = h[rows] @ w.t()
            grad = logits if (need_dh or need_dw) else None  # written over the logits
            cross_entropy_rows(logits, targets[rows], loss[rows], grad, inv_count, ignore_index, block_v)
            if need_dh:
                dh[rows] = grad @ w
            if need_dw:
                dw += grad.t() @ h[rows]  # rounded once per chunk, accumulated in fp32
    return loss.sum() * inv_count, dh, weight.new_empty(0) if dw is None else dw.to(weight.dtype)


@_linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk, block_v, dtype, need_dh, need_dw):
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty(hidden.shape if need_dh else 0),
            weight.new_empty(weight.shape if need_dw else 0))


def _save_gradients(ctx, inputs, output):
    _, dh, dw = output
    ctx.mark_non_differentiable(dh, dw)
    ctx.save_for_backward(dh, dw)
    ctx.need_dh, ctx.need_dw = inputs[-2:]


def _scale_gradients(ctx, grad_loss, _grad_dh, _grad_dw):
    dh, dw = ctx.saved_tensors
    return (dh * grad_loss.to(dh.dtype) if ctx.need_dh else None, dw * grad_loss.to(dw.dtype) if ctx.need_dw else None,
            None, None, None, None, None, None, None)


_linear_cross_entropy_op.register_autograd(_scale_gradients, setup_context=_save_gradients)


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-1, chunk_size=None, block_v=None):
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets, skipping ignore_index.

    hidden (..., d), weight (V, d), targets (...) of int64; returns an fp32 scalar. chunk_size (rows)
    and block_v (vocabulary block of the kernel) are for tests; by default they are sized for speed.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).contiguous()  # the kernel reads TGT + row
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    grad = torch.is_grad_enabled()
    chunk = chunk_size or _chunk_rows(hidden.shape[0], weight.shape[0], dtype)
    # Because the loss is the last step of the forward pass, the operator computes the gradients
    # right away; backward only scales them by the incoming gradient (1 for loss.backward()).
    loss, _, _ = _linear_cross_entropy_op(hidden, weight, targets, ignore_index, chunk, block_v or _BLOCK_V, dtype,
                                          grad and hidden.requires_grad, grad and weight.requires_grad)
    return loss
