"""GPU check and benchmark of the Triton kernels, in one script that finishes in a few minutes.

    python kernels/bench.py                             # on a GPU
    TRITON_INTERPRET=1 python kernels/bench.py --smoke  # tiny sizes, runs anywhere (CPU: interpreter)

1. Correctness at realistic sizes, bf16 and fp32: the relative error (Frobenius norm of the
   difference over the norm of a float64 reference) of the output and of every gradient, next to the
   error of PyTorch's own kernel in the same dtype. Anything not finite fails.
2. One table: attention forward and backward TFLOP/s against scaled_dot_product_attention (the faster
   of its flash and cuDNN backends); fused linear + cross-entropy against
   F.cross_entropy((hidden @ W.T).float(), targets), time and peak memory.
The kernels inside a whole training step (the 124M model with them on and off: tokens/s, MFU, peak
memory, the loss) are measured by scripts/bench.py --kernels, which has the model; this folder
imports nothing of the project.
Every check and benchmark runs even if an earlier one fails (an error is reported and counted), and
each number is printed as soon as it is measured, so one GPU session yields all it can. Exits with
status 1 if a correctness check or a benchmark fails; the table's last column says whether each goal
was met.
"""
import argparse
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Relative-error thresholds per dtype (PyTorch's own kernels land well inside them).
MAX_ERR = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs end to end")
    return p.parse_args()


ARGS = parse_args()
CUDA = torch.cuda.is_available()
if not CUDA and not ARGS.smoke:
    sys.exit("no GPU: the realistic sizes would take hours under the interpreter; use --smoke")
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton path on CPU; set before kernels load

import triton  # noqa: E402

from kernels import attention_reference, linear_cross_entropy_reference  # noqa: E402
from kernels.attention import flash_attention  # noqa: E402
from kernels.cross_entropy import fused_linear_cross_entropy  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
LOWP = torch.bfloat16 if CUDA else torch.float16  # the interpreter's dots are wrong in bf16
if ARGS.smoke:
    S = dict(attn_check=[(1, 2, 40, 32), (1, 2, 33, 64)], ce_check=(37, 16, 131),
             attn_bench=[(1, 2, 40, 32)], ce_bench=dict(N=64, ds=(16,), V=131))
else:
    S = dict(attn_check=[(2, 8, 1024, 64), (2, 8, 1000, 128)], ce_check=(4109, 768, 50304),
             attn_bench=[(16384 // T, 16, T, D) for D in (64, 128) for T in (1024, 2048, 4096)],
             ce_bench=dict(N=16384, ds=(768, 2048), V=50304))


# ---------------------------------------------------------------------------------------------
# Measuring


def sync():
    if CUDA:
        torch.cuda.synchronize()


def ms(fn, grad_to_none=None):
    """Mean milliseconds per call (CPU smoke runs: one call, for the code path, not the number)."""
    if CUDA:
        return triton.testing.do_bench(fn, grad_to_none=grad_to_none)
    fn()
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def peak_bytes(fn):
    """Peak memory allocated while fn runs, above what was allocated before; None off CUDA."""
    if not CUDA:
        fn()
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() - base


def rel_err(x, ref):
    if not torch.isfinite(x).all():
        return math.inf
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


FAILED = []


def guarded(name, fn, *args):
    """Run one check or benchmark; an exception (a compile error, out of memory) is printed and counted
    as a failure instead of ending the script."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - report anything, then go on with the next one
        FAILED.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        print("".join(traceback.format_exc().splitlines(keepends=True)[-12:]), flush=True)
        if CUDA:
            torch.cuda.empty_cache()


def report(name, dtype, errs, torch_errs):
    limit = MAX_ERR[dtype]
    ok = all(e <= limit for e in errs.values())
    if not ok:
        FAILED.append(f"{name} {dtype}")
    detail = "  ".join(f"{k} {errs[k]:.1e} (torch {torch_errs[k]:.1e})" for k in errs)
    print(f"{'ok  ' if ok else 'FAIL'} {name:<34} {str(dtype)[6:]:<8} max {limit:.0e}: {detail}", flush=True)


# ---------------------------------------------------------------------------------------------
# 1. Correctness


def attention_grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    return (o, *torch.autograd.grad(o, (q, k, v), do))


def check_attention(B, H, T, D, dtype):
    args = [torch.randn(B, H, T, D, device=DEVICE, dtype=dtype) for _ in range(4)]  # q, k, v, dO
    ref = attention_grads(attention_reference, *(t.double() for t in args))
    ours, theirs = attention_grads(flash_attention, *args), attention_grads(attention_reference, *args)
    names = ("o", "dq", "dk", "dv")
    report(f"attention B{B} H{H} T{T} D{D}", dtype, {n: rel_err(a, r) for n, a, r in zip(names, ours, ref)},
           {n: rel_err(a, r) for n, a, r in zip(names, theirs, ref)})


def linear_ce_grads(fn, h, w, t):
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    loss = fn(h, w, t)
    return (loss, *torch.autograd.grad(loss, (h, w)))


def check_linear_ce(N, d, V, dtype):
    h, w = torch.randn(N, d, device=DEVICE, dtype=dtype), (torch.randn(V, d, device=DEVICE) / d**0.5).to(dtype)
    t = torch.randint(0, V, (N,), device=DEVICE)
    t[torch.rand(N, device=DEVICE) < 0.1] = -1
    ref = linear_ce_grads(lambda h, w, t: F.cross_entropy(h @ w.t(), t, ignore_index=-1), h.double(), w.double(), t)
    args = (h, w, t)
    ours, theirs = linear_ce_grads(fused_linear_cross_entropy, *args), linear_ce_grads(linear_cross_entropy_reference, *args)
    names = ("loss", "dh", "dW")
    report(f"linear CE N{N} d{d} V{V}", dtype, {n: rel_err(a, r) for n, a, r in zip(names, ours, ref)},
           {n: rel_err(a, r) for n, a, r in zip(names, theirs, ref)})


# ---------------------------------------------------------------------------------------------
# 2. The table

ROWS = []
START = time.perf_counter()


def row(bench, shape, metric, ours, base, base_name, higher_is_better, goal=1.0):
    """One table line; ratio > 1 means Triton is better. goal: the ratio to reach (None: no goal)."""
    if ours is None or base is None:
        ratio, met = None, "n/a"
    else:
        ratio = ours / base if higher_is_better else base / ours
        met = "-" if goal is None or not CUDA else ("yes" if ratio >= goal else "NO")  # CPU: timings mean nothing
    ROWS.append((bench, shape, metric, ours, base, base_name, ratio, met))
    print(f"{time.perf_counter() - START:4.0f}s {bench} {shape} {metric}: triton {fmt(ours)}, {base_name} {fmt(base)}"
          + ("" if ratio is None else f" ({ratio:.2f}x)"), flush=True)


def fmt(x):
    return "n/a" if x is None else (f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}")


def time_attention(fn, q, k, v, do):
    """(forward ms, backward ms) of fn."""
    fwd = ms(lambda: fn(q, k, v))
    o = fn(q, k, v)
    return fwd, ms(lambda: o.backward(do, retain_graph=True), grad_to_none=[q, k, v])


def time_baseline(fn, q, k, v, do):
    try:
        return time_attention(fn, q, k, v, do)
    except RuntimeError:  # this SDPA backend cannot run these inputs (or is not built in)
        return None


def bench_attention(B, H, T, D):
    q, k, v, do = (torch.randn(B, H, T, D, device=DEVICE, dtype=LOWP, requires_grad=True) for _ in range(4))
    baselines = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    if CUDA:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def backend(b):
            def fn(q, k, v):
                with sdpa_kernel(b):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return fn
        baselines = {"sdpa-flash": backend(SDPBackend.FLASH_ATTENTION), "sdpa-cudnn": backend(SDPBackend.CUDNN_ATTENTION)}
    ours = time_attention(flash_attention, q, k, v, do)
    timed = {name: t for name, fn in baselines.items() if (t := time_baseline(fn, q, k, v, do)) is not None}
    flops = 2 * B * H * T * T * D  # forward: 2 matmuls of 2 * T^2 * D flops, halved by causality
    shape = f"B{B} H{H} T{T} D{D}"
    for i, (metric, f) in enumerate((("fwd TFLOP/s", flops), ("bwd TFLOP/s", 2.5 * flops))):
        name, best = min(timed.items(), key=lambda kv: kv[1][i])
        row("attention", shape, metric, f / ours[i] / 1e9, f / best[i] / 1e9, name, higher_is_better=True)


def bench_linear_ce(N, d, V):
    h = torch.randn(N, d, device=DEVICE, dtype=LOWP, requires_grad=True)
    w = (torch.randn(V, d, device=DEVICE) / d**0.5).to(LOWP).requires_grad_()
    t = torch.randint(0, V, (N,), device=DEVICE)

    def step(loss_fn):
        def run():
            h.grad = w.grad = None
            loss_fn().backward()
        return run

    ours = step(lambda: fused_linear_cross_entropy(h, w, t))
    base = step(lambda: F.cross_entropy((h @ w.t()).float(), t))
    shape = f"N{N} d{d} V{V}"
    row("linear CE", shape, "fwd+bwd ms", ms(ours, [h, w]), ms(base, [h, w]), "F.cross_entropy", higher_is_better=False)
    mem_ours, mem_base = peak_bytes(ours), peak_bytes(base)
    gb = lambda b: None if b is None else b / 2**30
    row("linear CE", shape, "peak GB", gb(mem_ours), gb(mem_base), "F.cross_entropy", higher_is_better=False, goal=4.0)


def print_table():
    header = ("benchmark", "shape", "metric", "triton", "baseline", "baseline is", "ratio", "goal met")
    lines = [header] + [(b, s, m, fmt(o), fmt(a), n, "n/a" if r is None else f"{r:.2f}x", g)
                        for b, s, m, o, a, n, r, g in ROWS]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("ratio: how many times better Triton is (higher throughput, or lower time or memory); "
          "goals: attention >= 1x, linear CE time >= 1x and memory >= 4x")


def main():
    name = torch.cuda.get_device_name() if CUDA else "CPU, Triton interpreter"
    print(f"device: {name}; torch {torch.__version__}, triton {triton.__version__}{' (smoke sizes)' if ARGS.smoke else ''}")
    torch.manual_seed(0)
    print("\n== correctness: relative error against float64")
    for dtype in (LOWP, torch.float32):
        for B, H, T, D in S["attn_check"]:
            guarded(f"attention check B{B} H{H} T{T} D{D} {dtype}", check_attention, B, H, T, D, dtype)
        guarded(f"linear CE check {dtype}", check_linear_ce, *S["ce_check"], dtype)

    print(f"\n== benchmarks after {time.perf_counter() - START:.0f} s (the first call of each shape autotunes)", flush=True)
    for B, H, T, D in S["attn_bench"]:
        guarded(f"attention benchmark T{T} D{D}", bench_attention, B, H, T, D)
    for d in S["ce_bench"]["ds"]:
        guarded(f"linear CE benchmark d{d}", bench_linear_ce, S["ce_bench"]["N"], d, S["ce_bench"]["V"])
    print()
    print_table()
    print(f"\n{time.perf_counter() - START:.0f} s; " + (f"FAILED: {', '.join(FAILED)}" if FAILED else "all checks passed"))
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
