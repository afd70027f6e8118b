"""The Triton kernels against float64 PyTorch references, on CPU under the Triton interpreter.

The interpreter runs each Triton program as numpy code, so these tests need no GPU; they use fp32
and fp16 (its tl.dot gives garbage for bf16; bf16 is checked on a GPU by kernels/bench.py). Every
float buffer the kernels allocate starts as NaN (see `poison`), so an element a kernel forgets to
write fails the comparison, and the inputs are fresh random numbers each run (the seed is printed).
"""
import os
import subprocess
import sys

# Triton reads TRITON_INTERPRET when it defines a @triton.jit function, and it defines its own standard
# library (tl.sum, tl.max, ...) on import: the flag must be set before triton is first imported.
INTERPRETER_READY = os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

if not INTERPRETER_READY:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run this file in its own process "
                "or with TRITON_INTERPRET=1 in the environment", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

import kernels  # noqa: E402
import kernels.attention as attention  # noqa: E402
import kernels.cross_entropy as cross_entropy  # noqa: E402

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@pytest.fixture(autouse=True)
def seed():
    s = int.from_bytes(os.urandom(4), "little")
    print(f"seed {s}")  # shown by pytest when a test fails
    torch.manual_seed(s)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Make torch.empty / torch.empty_like return NaN-filled float tensors while a test runs."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_filled(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_filled(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(empty_like(*a, **k)))


def check(actual, expected, dtype, name, precision=None):
    """actual has the given dtype and matches expected to within what `precision` (default: dtype) allows."""
    assert actual.dtype == dtype, f"{name}: dtype {actual.dtype}, expected {dtype}"
    torch.testing.assert_close(actual.double(), expected, **TOL[precision or dtype], msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# Attention


def qkv(B, H, T, D, dtype, layout):
    if layout == "bhtd":
        return [torch.randn(B, H, T, D, dtype=dtype, requires_grad=True) for _ in range(3)]
    # as a GPT makes them: one (B, T, 3, H, D) projection split into strided (B, H, T, D) views
    x = torch.randn(B, T, 3, H, D, dtype=dtype, requires_grad=True)
    return [x[:, :, i].transpose(1, 2) for i in range(3)]


def check_attention(B, H, T, D, dtype, layout="bhtd", scale=None):
    q, k, v = qkv(B, H, T, D, dtype, layout)
    o = attention.flash_attention(q, k, v, scale)
    do = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o64 = kernels.attention_reference(q64, k64, v64, scale)
    dq64, dk64, dv64 = torch.autograd.grad(o64, (q64, k64, v64), do.double())
    for name, a, e in (("o", o, o64), ("dq", dq, dq64), ("dk", dk, dk64), ("dv", dv, dv64)):
        check(a, e, dtype, name)


@pytest.mark.parametrize("B,H,T,D,dtype", [
    (1, 2, 1, 32, torch.float32),
    (2, 2, 17, 64, torch.float32),
    (1, 2, 40, 128, torch.float32),
    (1, 2, 64, 32, torch.float16),
    (2, 1, 33, 64, torch.float16),
    (1, 1, 48, 128, torch.float16),
])
def test_attention(B, H, T, D, dtype):
    check_attention(B, H, T, D, dtype)


def test_attention_strided_inputs_and_scale():
    check_attention(2, 3, 29, 32, torch.float32, layout="bt3hd", scale=0.3)


@pytest.mark.parametrize("fwd,dkdv,dq,T", [((32, 16), (16, 32), (32, 16), 70), ((64, 32), (16, 64), (64, 16), 100),
                                            ((128, 16), (16, 128), (128, 16), 150)])
def test_attention_unequal_tiles(monkeypatch, fwd, dkdv, dq, T):
    """The GPU configs use BLOCK_M != BLOCK_N, which the interpreter's single 16 x 16 config doesn't."""
    for kernel, (bm, bn) in ((attention._attn_fwd, fwd), (attention._attn_bwd_dkdv, dkdv), (attention._attn_bwd_dq, dq)):
        monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn})])
    check_attention(1, 2, T, 32, torch.float32)


# ---------------------------------------------------------------------------------------------
# Cross-entropy


def targets_for(N, V, ignore_index, ignored):
    t = torch.randint(0, V, (N,))
    t[torch.rand(N) < ignored] = ignore_index
    return t


@pytest.mark.parametrize("N,d,V,chunk,dtype,ignore_index,ignored", [
    (37, 16, 131, 16, torch.float32, -1, 0.2),     # 3 chunks, the last partial; V not a power of two
    (37, 16, 131, 16, torch.float16, -100, 0.2),
    (40, 32, 64, 8, torch.bfloat16, -1, 0.3),      # V a multiple of the kernel's block
    (20, 16, 97, None, torch.float32, -1, 0.0),    # default chunking, nothing ignored
    (9, 16, 50, 4, torch.float32, -1, 1.0),        # every target ignored: loss and gradients 0
])
def test_fused_linear_cross_entropy(N, d, V, chunk, dtype, ignore_index, ignored):
    h = torch.randn(N, d, dtype=dtype, requires_grad=True)
    w = (torch.randn(V, d) / d**0.5).to(dtype).requires_grad_()
    t = targets_for(N, V, ignore_index, ignored)
    g = torch.rand(()) + 0.5  # a grad_output other than 1
    loss = cross_entropy.fused_linear_cross_entropy(h, w, t, ignore_index, chunk_size=chunk, block_v=32)
    dh, dw = torch.autograd.grad(loss * g, (h, w))

    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss64 = F.cross_entropy(h64 @ w64.t(), t, ignore_index=ignore_index, reduction="sum") / (t != ignore_index).sum().clamp(min=1)
    dh64, dw64 = torch.autograd.grad(loss64 * g.double(), (h64, w64))
    check(loss, loss64, torch.float32, "loss", precision=dtype)  # fp32, from logits of the input dtype
    check(dh, dh64, dtype, "dh")
    check(dw, dw64, dtype, "dW")


def test_fused_linear_cross_entropy_autocast_and_frozen_weight():
    """Under bf16 autocast the matmuls run in bf16 but the gradients come back in fp32, dW included;
    a weight that needs no gradient gets none (and no dW buffer is built)."""
    N, d, V = 24, 16, 70
    h = torch.randn(N, d, requires_grad=True)
    w = torch.randn(V, d, requires_grad=True) / d**0.5
    t = targets_for(N, V, -1, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cross_entropy.fused_linear_cross_entropy(h, w, t, chunk_size=8, block_v=32)
    dh, dw = torch.autograd.grad(loss, (h, w))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss64 = F.cross_entropy(h64 @ w64.t(), t, ignore_index=-1)
    dh64, dw64 = torch.autograd.grad(loss64, (h64, w64))
    check(loss, loss64, torch.float32, "loss", precision=torch.bfloat16)
    check(dh, dh64, torch.float32, "dh", precision=torch.bfloat16)
    check(dw, dw64, torch.float32, "dW", precision=torch.bfloat16)

    frozen = w.detach()
    loss = cross_entropy.fused_linear_cross_entropy(h, frozen, t, chunk_size=8, block_v=32)
    (dh,) = torch.autograd.grad(loss, (h,))
    check(dh, torch.autograd.grad(F.cross_entropy(h64 @ frozen.double().t(), t, ignore_index=-1), (h64,))[0],
          torch.float32, "dh with frozen weight")


def test_fused_linear_cross_entropy_no_grad():
    h, w, t = torch.randn(19, 16), torch.randn(33, 16), targets_for(19, 33, -1, 0.2)
    with torch.no_grad():
        loss = cross_entropy.fused_linear_cross_entropy(h, w, t, chunk_size=8, block_v=16)
    check(loss, F.cross_entropy(h.double() @ w.double().t(), t, ignore_index=-1), torch.float32, "loss")


def test_cross_entropy_takes_targets_of_any_layout_and_refuses_out_of_range_ones():
    """The kernels read the target of row r at TGT + r: strided targets (every other token, say) must
    not shift rows, and a target outside the vocabulary must fail instead of reading other memory."""
    h, w = torch.randn(12, 16), torch.randn(50, 16)
    every_other = torch.randint(0, 50, (24,))[::2]
    expected = F.cross_entropy(h.double() @ w.double().t(), every_other)
    check(cross_entropy.fused_linear_cross_entropy(h, w, every_other, block_v=16), expected, torch.float32, "fused")
    for bad, ignore_index in (([3, 7, 50, 1], -1), ([3, -1, 9, 1], -100)):
        with pytest.raises(RuntimeError, match="targets must be in"):
            cross_entropy.fused_linear_cross_entropy(h[:4], w, torch.tensor(bad), ignore_index)


def test_operators_pass_torch_library_checks_for_odd_layouts():
    """opcheck compares each operator's fake (meta) version with the real one, strides included, and
    its registration with what the compiler expects: a transposed hidden or key must not break them."""
    q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
    k_t = torch.randn(1, 20, 2, 16).transpose(1, 2).requires_grad_()
    for args in ((q, k, v, 0.25), (q, k_t, v, 0.25)):
        torch.library.opcheck(torch.ops.spt.flash_attention_forward.default, args)
    hidden = torch.randn(16, 12).t()  # (12, 16), column-major
    weight, targets = torch.randn(30, 16), torch.randint(0, 30, (12,))
    torch.library.opcheck(torch.ops.spt.linear_cross_entropy.default,
                          (hidden, weight, targets, -1, 8, 16, torch.float32, True, True))


# ---------------------------------------------------------------------------------------------
# torch.compile


def test_compiled_model_keeps_the_kernels_in_one_graph():
    """The kernels are custom operators, opaque to torch.compile: a fullgraph compile (no graph
    break allowed) of attention followed by the fused loss gives eager's loss and gradients."""
    B, H, T, D, V = 2, 2, 24, 32, 97
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    hidden, weight = torch.randn(B * T, H * D, requires_grad=True), torch.randn(V, H * D, requires_grad=True)
    targets = targets_for(B * T, V, -1, 0.2)

    def loss_fn(q, k, v, hidden, weight):
        o = attention.flash_attention(q, k, v)
        return cross_entropy.fused_linear_cross_entropy(hidden + o.transpose(1, 2).reshape(B * T, H * D), weight, targets)

    eager = loss_fn(q, k, v, hidden, weight)
    compiled = torch.compile(loss_fn, fullgraph=True)(q, k, v, hidden, weight)
    inputs = (q, k, v, hidden, weight)
    for name, a, b in zip("q k v hidden weight".split(), torch.autograd.grad(compiled, inputs),
                          torch.autograd.grad(eager, inputs)):
        torch.testing.assert_close(a, b, msg=name)
    torch.testing.assert_close(compiled, eager)


# ---------------------------------------------------------------------------------------------
# Dispatch and the model


def test_model_under_16bit_autocast_matches_with_kernels_on_and_off(monkeypatch):
    """The GPU's bf16 path in miniature: the whole GPT under autocast (fp16 here, the interpreter's dots
    being wrong in bf16) feeds the kernels 16-bit q, k, v and the loss; loss and every gradient must
    match the PyTorch path."""
    from model import GPT, PRESETS, GPTConfig
    cfg = GPTConfig(**{**PRESETS["cpu-tiny"], "vocab_size": 97})
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1))
    results = {}
    for mode in ("triton", "torch"):
        monkeypatch.setenv("SPT_KERNELS", mode)
        torch.manual_seed(0)
        model = GPT(cfg)
        with torch.autocast("cpu", dtype=torch.float16):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        results[mode] = loss, {name: p.grad for name, p in model.named_parameters()}
    (loss, grads), (ref_loss, ref_grads) = results["triton"], results["torch"]
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)  # seen: <1e-5
    for name, ref in ref_grads.items():
        assert ((grads[name] - ref).norm() / ref.norm()).item() < 3e-3, name  # seen: <7e-4 (fp16 rounding)


def test_dispatch_follows_spt_kernels(monkeypatch):
    monkeypatch.setattr(attention, "flash_attention", lambda *args: "triton")
    monkeypatch.setattr(cross_entropy, "fused_linear_cross_entropy", lambda *args: "triton")
    q = torch.randn(1, 1, 4, 16)
    h, w, t = torch.randn(4, 16), torch.randn(8, 16), torch.zeros(4, dtype=torch.long)
    monkeypatch.setenv("SPT_KERNELS", "triton")
    assert kernels.causal_attention(q, q, q) == "triton" and kernels.linear_cross_entropy(h, w, t) == "triton"
    for choice in ("torch", "auto"):  # auto: the reference off CUDA
        monkeypatch.setenv("SPT_KERNELS", choice)
        assert torch.is_tensor(kernels.causal_attention(q, q, q)) and torch.is_tensor(kernels.linear_cross_entropy(h, w, t))


def test_every_gpu_config_compiles_for_ampere_and_hopper():
    """The configs autotuning tries on a GPU, compiled by the real compiler (which needs no GPU): each
    must compile for sm_80 and sm_90 and fit in the shared memory of an A100 and an H100, and on
    Hopper the forward kernel's matmuls must use its warpgroup MMA."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join("kernels", "compile_report.py"), "--arch", "80,90", "--dtype", "bf16",
           "--head_dim", "128"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("sm_")]
    per_arch = len(attention._FWD[128]) + len(attention._DKDV[128]) + len(attention._DQ[128])
    assert len(rows) == 2 * per_arch and all(row.endswith(" ok") for row in rows), result.stdout
    hopper_forward = [row for row in rows if row.startswith("sm_90") and " attn fwd " in row]
    assert hopper_forward and all(" wgmma " in row for row in hopper_forward), result.stdout  # Hopper's MMA


def test_gpu_bench_script_runs_end_to_end_at_smoke_sizes():
    """kernels/bench.py is the one script a GPU session runs: at tiny sizes on the interpreter it must
    pass its own correctness checks and print every row of its table."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join("kernels", "bench.py"), "--smoke"], cwd=root,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "FAIL" not in out and out.rstrip().endswith("all checks passed"), out[-3000:]
    table = out[out.index("benchmark  "):]
    for name in ("attention", "fwd TFLOP/s", "bwd TFLOP/s", "linear CE", "peak GB"):
        assert name in table, f"{name!r} missing from the table:\n{table}"


def test_training_step_benchmark_runs_with_the_kernels_on_and_off():
    """scripts/bench.py --kernels, the kernels inside a whole training step (a GPU session runs it after
    kernels/bench.py): at tiny sizes on the interpreter the losses with kernels on and off must agree
    and every row of its table must be there."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join("scripts", "bench.py"), "--kernels", "--model", "cpu-tiny", "--vocab_size",
           "256", "--batch_size", "2", "--seq_len", "64", "--steps", "2", "--warm_steps", "1"]
    result = subprocess.run(cmd, cwd=root, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "FAIL" not in out and "ok   loss @ 3: kernels on" in out, out[-3000:]
    table = out[out.index("loop "):]
    for name in ("tokens/s", "MFU", "peak GB", "loss @ 3", "bare PyTorch loop", "train.py loop", "SPT_KERNELS=triton",
                 "SPT_KERNELS=torch"):
        assert name in table, f"{name!r} missing from the table:\n{table}"
