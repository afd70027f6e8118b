"""Causal flash attention in Triton: the FlashAttention-2 algorithm, forward and backward.

Plain attention computes S = scale * Q K^T (a T x T matrix per head), P = softmax(S) and O = P V.
For T = 4096 that is 16M scores per head, written to and read back from GPU memory several times;
the arithmetic is cheap next to that traffic. Flash attention never materialises S or P: each program
keeps one tile of queries in registers and streams tiles of keys and values past it.

The online softmax. softmax needs the row maximum (for stability) and the row sum of exp before it
can normalise, but we see a row's scores one tile at a time. So we keep a running maximum m, a
running sum l = sum_j exp(s_j - m) and an unnormalised output acc = sum_j exp(s_j - m) v_j. When a
new tile raises the maximum to m', the old terms were all computed relative to m, and multiplying
l and acc by exp(m - m') re-expresses them relative to m'. After the last tile, O = acc / l: exact,
not an approximation. We work in base 2 (exp2 is the hardware instruction; exp(x) = exp2(x log2 e)),
so scores are pre-multiplied by scale * log2(e).

The log-sum-exp. The forward pass also stores one number per query row, lse = m + log2(l) (in base-2
units). With it the backward pass recomputes any tile of P directly, P = exp2(S log2 e - lse), with
no second pass over the row: this is how attention's backward avoids storing the T x T matrix.

The backward. With D_i = rowsum(dO * O)_i (a small preprocessing kernel),
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ = scale * dS K,   dK = scale * dS^T Q.
dK and dV are sums over query rows, dQ is a sum over key rows. One could loop over key tiles and
add into dQ with atomics, but float atomics make the result depend on scheduling (not bitwise
reproducible) and contend on memory. Instead, as in FlashAttention-2, two kernels each own their
output: one program per key tile loops over the query tiles that can see it (from the diagonal
down) and accumulates dK, dV in registers; another program per query tile loops over the key tiles
it sees (up to the diagonal) and accumulates dQ. P is recomputed in both: extra flops, no atomics.

Causality. Key tiles entirely above the diagonal are never visited; tiles that straddle the
diagonal (and the partial tile at the end of a sequence whose length is not a multiple of the
block) go through a masked version of the same loop; all the others run without any masking.

Layout is (batch, heads, seq, head_dim) with arbitrary strides except a unit stride on head_dim;
outputs are allocated in (batch, seq, heads, head_dim) memory order so that the usual
`y.transpose(1, 2).reshape(B, T, C)` after attention is free. Inputs may be fp32, fp16 or bf16; all
accumulation is fp32 (fp32 inputs use true-fp32 "ieee" dots, not tf32).
"""
import math
import os

import torch
import triton
import triton.language as tl

from kernels import TRITON_OPTIONS

# The interpreter (TRITON_INTERPRET=1, used by the CPU tests) runs every program in Python: one small
# config keeps it fast. Triton reads the flag when a kernel is decorated, i.e. when this module is
# imported, so the flag must be set before that.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# Tile configs (BLOCK_M, BLOCK_N, num_warps, num_stages) per head_dim, read off the compiler's own
# reports: `python kernels/compile_report.py` compiles each for sm_80 and sm_90 (no GPU needed) and
# prints its registers, spills, shared memory and tensor-core instruction. A program keeps its tiles
# and fp32 accumulators in registers, and past 255 per thread they spill to off-chip memory. With
# Triton 3.6 and 3.9 the 16-bit configs below spill at most 32 bytes per thread on sm_90 unless marked,
# and at most 264 on sm_80. The backward kernels hold four tiles (dK/dV: K, V and two accumulators), so
# for head_dim 128 only narrow tiles stay in registers; their lists also offer a wider tile that spills
# a little, and autotuning measures which wins. On sm_90 the matmuls become Hopper's wgmma, except in
# the three configs whose own tile has 32 rows (head_dim 128: dK/dV 32x32 and 16x32, dQ 32x32), which
# get Ampere's mma.sync: the price of not spilling, which autotuning weighs too. All use at most 80 KB
# of shared memory (A100: 163 KB, H100: 227 KB). fp32 inputs are a correctness path (true-fp32 dots
# run on plain FMA units, twice the bytes per tile): they get one small config, as does the
# interpreter (which runs every program in Python).
_FWD = {  # BLOCK_M queries per program, streaming BLOCK_N keys at a time (BLOCK_M % BLOCK_N == 0)
    64: [(128, 128, 8, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3)],
    128: [(128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 8, 3), (128, 64, 8, 3)],  # the last: 8-64 bytes
    "fp32": [(64, 32, 8, 2)],
}
_DKDV = {  # BLOCK_N keys per program, streaming BLOCK_M queries at a time (BLOCK_N % BLOCK_M == 0)
    64: [(32, 128, 8, 3), (16, 128, 8, 3), (32, 64, 8, 3), (64, 64, 8, 3)],
    128: [(32, 32, 8, 3), (16, 32, 8, 3), (16, 64, 8, 3), (32, 64, 8, 3)],  # the last: 40-184 bytes
    "fp32": [(16, 32, 8, 2)],
}
_DQ = {  # BLOCK_M queries per program, streaming BLOCK_N keys at a time (BLOCK_M % BLOCK_N == 0)
    64: [(128, 64, 8, 3), (128, 32, 8, 3), (128, 16, 8, 3), (64, 64, 4, 3)],
    128: [(64, 32, 8, 3), (64, 16, 8, 3), (32, 32, 8, 3), (128, 32, 8, 3)],  # the last: 56-88 bytes
    "fp32": [(32, 16, 4, 2)],
}
_INTERPRETER_CONFIG = (16, 16, 4, 1)
_PREPROCESS_BLOCK = 16 if INTERPRET else 64


def _autotune(table):
    """triton.autotune over every config of `table`, pruned at launch to this input's list.

    Autotuning is keyed on the sequence length and head dimension (the autotuner adds the dtypes).
    Every kernel writes all of its outputs and accumulates only in registers, so running it several
    times while benchmarking configs cannot corrupt the result.
    """
    tuples = [_INTERPRETER_CONFIG] if INTERPRET else list(dict.fromkeys(t for ts in table.values() for t in ts))
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in tuples]

    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        if INTERPRET:
            return configs
        wanted = table["fp32" if q.dtype == torch.float32 else 64 if q.shape[-1] <= 64 else 128]
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]

    return triton.autotune(configs=configs, key=["T", "HEAD_DIM"], prune_configs_by={"early_config_prune": prune})


# ---------------------------------------------------------------------------------------------
# Loads. Full tiles (all rows < T) load without a mask: no compares, no predicated loads.


@triton.jit
def _load_rows(base, rows, stride, cols, T, MASK: tl.constexpr):
    """The tile base[rows, cols] of a (T, head_dim) matrix with row stride `stride`; with MASK, rows at
    or past T read as zeros."""
    ptrs = base + rows[:, None] * stride + cols[None, :]
    if MASK:
        tile = tl.load(ptrs, mask=rows[:, None] < T, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _load_row_stats(base, rows, T, MASK: tl.constexpr):
    """base[rows] of a per-row fp32 vector of length T (log-sum-exp or delta); zeros past T with MASK."""
    if MASK:
        x = tl.load(base + rows, mask=rows < T, other=0.0)
    else:
        x = tl.load(base + rows)
    return x


# ---------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, offs_d, lo, hi, T, qk_scale,
               MASK: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Fold key/value tiles [lo, hi) into the running (acc, l, m) of one query tile."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, stride_kt, offs_d, T, MASK)
        v = _load_rows(V, offs_n, stride_vt, offs_d, T, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASK:  # causal; it also hides keys >= T from every real query row
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # base-2 units: scores times scale * log2(e)
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated relative to the old maximum
        p = tl.exp2(s * qk_scale - m_new[:, None])  # the scaling folds into one fused multiply-add
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@_autotune(_FWD)
@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
              stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
              H, T, qk_scale,
              HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Causal rows near the end of the sequence have the most work: launch them first so the short
    # ones fill the gaps at the end instead of leaving a long tail.
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    LSE += bh.to(tl.int64) * T

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q, offs_m, stride_qt, offs_d, T, True)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Keys left of the diagonal block: every query sees all of them, and all are < T. No masks.
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, offs_d,
                               0, start_m, T, qk_scale, False, BLOCK_N, PRECISION)
    # The diagonal block: causal mask. Its first key (start_m) is visible to every row, so no row is
    # ever all -inf, and the running maximum is finite before any fully masked row appears.
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kt, stride_vt, offs_m, offs_d,
                               start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, True, BLOCK_N, PRECISION)

    tl.store(LSE + offs_m, m_i + tl.log2(l_i), mask=offs_m < T)
    o = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * stride_ot + offs_d[None, :], o.to(O.dtype.element_ty), mask=offs_m[:, None] < T)


# ---------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh, stride_dot,
                    H, T, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """DELTA = rowsum(dO * O), the term every dS = P * (dP - DELTA) needs, in fp32."""
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(O + b * stride_ob + h * stride_oh, offs_m, stride_ot, offs_d, T, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, T, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dot, offs_n, offs_d, lo, hi, T, qk_scale,
                MASK: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate into dK, dV of one key tile the contributions of query tiles [lo, hi).

    Works with transposed tiles (keys along rows) so the results land in dK/dV's own layout.
    """
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q, offs_m, stride_qt, offs_d, T, MASK)
        do = _load_rows(DO, offs_m, stride_dot, offs_d, T, MASK)
        lse = _load_row_stats(LSE, offs_m, T, MASK)
        delta = _load_row_stats(DELTA, offs_m, T, MASK)
        sT = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        if MASK:  # causal, and query rows past the end must not leak into the sums over rows
            sT = tl.where((offs_m[None, :] >= offs_n[:, None]) & (offs_m[None, :] < T), sT, float("-inf"))
        pT = tl.exp2(sT * qk_scale - lse[None, :])  # P recomputed from the saved log-sum-exp
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@_autotune(_DKDV)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                   H, T, sm_scale, qk_scale,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N  # the first key tiles see the most queries: launched first
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    LSE += bh.to(tl.int64) * T
    DELTA += bh.to(tl.int64) * T

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n[:, None] < T
    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kt, offs_d, T, True)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vt, offs_d, T, True)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    # Queries in the diagonal block: causal mask.
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dot, offs_n, offs_d,
                         start_n, tl.minimum(start_n + BLOCK_N, T), T, qk_scale, True, BLOCK_M, PRECISION)
    # Queries below it see the whole key tile: full query tiles run unmasked...
    lo = start_n + BLOCK_N
    mid = lo + tl.maximum(T - lo, 0) // BLOCK_M * BLOCK_M
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dot, offs_n, offs_d,
                         lo, mid, T, qk_scale, False, BLOCK_M, PRECISION)
    # ...and the partial tile at the end of the sequence, if any, is masked.
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qt, stride_dot, offs_n, offs_d,
                         mid, T, T, qk_scale, True, BLOCK_M, PRECISION)

    dk *= sm_scale  # S = scale * Q K^T, so dK = scale * dS^T Q
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=mask_n)
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask_n)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, offs_m, offs_d, lo, hi, T, qk_scale,
              MASK: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate into dQ of one query tile the contributions of key tiles [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, stride_kt, offs_d, T, MASK)
        v = _load_rows(V, offs_n, stride_vt, offs_d, T, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASK:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        p = tl.exp2(s * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@_autotune(_DQ)
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                 stride_dqb, stride_dqh, stride_dqt,
                 H, T, sm_scale, qk_scale,
                 HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # longest rows first, as in forward
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    LSE += bh.to(tl.int64) * T
    DELTA += bh.to(tl.int64) * T

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m[:, None] < T
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, offs_d, T, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, T, True)
    lse = _load_row_stats(LSE, offs_m, T, True)
    delta = _load_row_stats(DELTA, offs_m, T, True)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dq = _dq_tiles(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, offs_m, offs_d,
                   0, start_m, T, qk_scale, False, BLOCK_N, PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, K, V, stride_kt, stride_vt, offs_m, offs_d,
                   start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, True, BLOCK_N, PRECISION)
    dq *= sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=mask_m)


# ---------------------------------------------------------------------------------------------
# Launchers and the autograd wrapper

LOG2E = 1.4426950408889634


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _empty_bthd(like):
    """An empty (B, H, T, D) tensor stored in (B, T, H, D) order, like the projections it came from."""
    B, H, T, D = like.shape
    return torch.empty(B, T, H, D, dtype=like.dtype, device=like.device).transpose(1, 2)


def _check(q, k, v):
    assert q.dim() == 4 and q.shape == k.shape == v.shape, "q, k, v: same (batch, heads, seq, head_dim) shape"
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
    D = q.shape[-1]
    assert D in (16, 32, 64, 128), f"head_dim {D}: the kernels support 16, 32, 64 or 128"


def _precision(x):
    return "ieee" if x.dtype == torch.float32 else "tf32"  # the latter is ignored for 16-bit inputs


def attention_forward(q, k, v, scale, o, lse):
    """Write softmax(scale * q k^T, causal) v into o and the base-2 log-sum-exp of each row into lse.

    o: (B, H, T, D) like q, any strides with unit stride on D; lse: contiguous fp32 (B, H, T).
    """
    B, H, T, D = q.shape
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _attn_fwd[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, T, scale * LOG2E, HEAD_DIM=D, PRECISION=_precision(q), **TRITON_OPTIONS)


def attention_backward(q, k, v, o, lse, do, scale, dq, dk, dv, delta):
    """Write the gradients of attention_forward into dq, dk, dv; delta is an fp32 (B, H, T) scratch."""
    B, H, T, D = q.shape
    grid_pre = (triton.cdiv(T, _PREPROCESS_BLOCK), B * H)
    _bwd_preprocess[grid_pre](o, do, delta, *_strides(o), *_strides(do), H, T,
                              HEAD_DIM=D, BLOCK=_PREPROCESS_BLOCK, **TRITON_OPTIONS)
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    grid_kv = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)
    _attn_bwd_dkdv[grid_kv](q, k, v, do, dk, dv, lse, delta, *common, *_strides(dk), *_strides(dv),
                            H, T, scale, scale * LOG2E, HEAD_DIM=D, PRECISION=_precision(q), **TRITON_OPTIONS)
    grid_q = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _attn_bwd_dq[grid_q](q, k, v, do, dq, lse, delta, *common, *_strides(dq),
                         H, T, scale, scale * LOG2E, HEAD_DIM=D, PRECISION=_precision(q), **TRITON_OPTIONS)


# The autograd wrapper is a pair of custom operators rather than a torch.autograd.Function: to
# torch.compile an operator is opaque (it calls it, it does not trace into Triton's launcher), so a
# compiled model keeps the kernels and their autotuning, with no graph break. The fake versions tell
# the compiler the outputs' shapes and strides without running anything.


@torch.library.custom_op("spt::flash_attention_forward", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    B, H, T, D = q.shape
    o, lse = _empty_bthd(q), torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    attention_forward(q, k, v, scale, o, lse)
    return o, lse


@_forward_op.register_fake
def _(q, k, v, scale):
    return _empty_bthd(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("spt::flash_attention_backward", mutates_args=())
def _backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 do: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, do = (_unit_last_stride(t) for t in (q, k, v, do))
    dq, dk, dv = _empty_bthd(q), _empty_bthd(k), _empty_bthd(v)
    attention_backward(q, k, v, o, lse, do, scale, dq, dk, dv, torch.empty_like(lse))
    return dq, dk, dv


@_backward_op.register_fake
def _(q, k, v, o, lse, do, scale):
    return _empty_bthd(q), _empty_bthd(k), _empty_bthd(v)


def _save_for_backward(ctx, inputs, output):
    q, k, v, scale = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale = scale


def _backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    return (*_backward_op(q, k, v, o, lse, do, ctx.scale), None)


_forward_op.register_autograd(_backward, setup_context=_save_for_backward)


def flash_attention(q, k, v, scale=None):
    """Causal attention over (batch, heads, seq, head_dim); scale defaults to 1/sqrt(head_dim)."""
    _check(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    assert scale > 0, "the kernels mask scores with -inf before scaling them: the scale must be positive"
    return _forward_op(q, k, v, scale)[0]
