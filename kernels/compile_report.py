"""Compile every autotune config of the kernels for Ampere and Hopper, without a GPU, and report
what the compiler gives each: registers per thread, bytes spilled, shared memory, and which
tensor-core instruction its matmuls became.

    python kernels/compile_report.py                    # sm_80 and sm_90, bf16 and fp32, head_dim 64 and 128
    python kernels/compile_report.py --arch 90 --dtype bf16 --head_dim 128

Triton compiles for any target on any machine: its wheel carries NVIDIA's ptxas. So the tile configs in
attention.py are chosen from these reports rather than guessed: a program keeps its tiles and fp32
accumulators in registers, and once it needs more than the 255 a thread may hold, the rest spill to
local memory, off chip; such a config is rarely the fastest. A config that needs more shared memory
than the chip has would fail at launch, on the GPU, in the middle of autotuning. Code generation
changes between Triton versions: run this after upgrading Triton. Exits with 1 if a config fails to
compile or does not fit in shared memory.

The instruction column: `mma` is the warp-level mma.sync of Ampere, which Hopper also runs; `wgmma` is
Hopper's asynchronous warpgroup MMA (128 threads multiply tiles straight from shared memory), the one
that reaches Hopper's peak. Triton emits wgmma on sm_90 only where a tile shape allows it (in these
kernels, 64 or more rows per dot), so on Hopper a narrow tile can cost more than its registers suggest.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_report.py compiles for the GPU, which the interpreter does not: unset TRITON_INTERPRET")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import TRITON_OPTIONS, attention, cross_entropy  # noqa: E402

# Shared memory one block may use (the opt-in maximum): A100 163 KB, H100/H200 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
FP32_POINTERS = {"LSE", "DELTA", "LOSS", "INV_COUNT"}  # fp32 whatever the input dtype
FP32_SCALARS = {"qk_scale", "sm_scale"}
INT_SCALARS = {"H", "T", "ignore_index"}  # and every stride_*; V is a size in the CE kernel
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def signature(jit_fn, dtype, constexprs, sizes=()):
    """Triton's type string for every argument: pointers are the upper-case names that are not sizes."""
    ints = INT_SCALARS | set(sizes)
    sig = {}
    for p in jit_fn.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name == "TGT":
            sig[name] = "*i64"
        elif name.isupper() and name not in ints:
            sig[name] = "*fp32" if name in FP32_POINTERS else "*" + TYPE_NAMES[dtype]
        else:
            assert name in FP32_SCALARS or name in ints or name.startswith("stride"), name
            sig[name] = "fp32" if name in FP32_SCALARS else "i32"
    assert set(constexprs) <= {n for n, t in sig.items() if t == "constexpr"}
    return sig


def resource_usage(cubin: bytes):
    """(registers per thread, spilled bytes per thread) as cuobjdump reads them off the binary."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return int(m.group(1)), int(m.group(2))


def compile_config(jit_fn, dtype, constexprs, arch, num_warps, num_stages, sizes=()):
    """One row of the report: compile for sm_<arch> and read registers, spills and shared memory."""
    src = ASTSource(jit_fn, signature(jit_fn, dtype, constexprs, sizes), constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages, **TRITON_OPTIONS))
    registers, spilled = resource_usage(compiled.asm["cubin"])
    shared = compiled.metadata.shared
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "-"
    return dict(registers=registers, spilled=spilled, shared=shared, mma=mma, fits=shared <= SHARED_LIMIT[arch])


def kernel_configs(dtype, head_dim):
    """(name, compile_config's keyword arguments) for every config autotuning would try."""
    q = torch.empty(1, 1, 1, head_dim, dtype=dtype)
    for name, kernel in (("attn fwd", attention._attn_fwd), ("attn dK dV", attention._attn_bwd_dkdv),
                         ("attn dQ", attention._attn_bwd_dq)):
        for c in kernel.early_config_prune(kernel.configs, {"Q": q}):
            constexprs = dict(HEAD_DIM=head_dim, PRECISION=attention._precision(q), **c.kwargs)
            yield (f"{name} {c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}",
                   dict(jit_fn=kernel.fn, constexprs=constexprs, num_warps=c.num_warps, num_stages=c.num_stages))
    if head_dim == 64:  # the cross-entropy kernel has no head_dim: report it once
        for grad in (True, False):
            yield (f"CE rows grad={grad}", dict(jit_fn=cross_entropy._cross_entropy_rows, sizes=("V",),
                   constexprs=dict(COMPUTE_GRAD=grad, BLOCK_V=cross_entropy._BLOCK_V),
                   num_warps=cross_entropy.NUM_WARPS, num_stages=1))


def report(archs, dtypes, head_dims):
    """Print one line per compiled config; return how many failed to compile or to fit."""
    failures = 0
    print(f"triton {triton.__version__}: registers per thread (255 at most), bytes spilled per thread, shared memory, "
          "tensor-core instruction")
    for arch in archs:
        for dtype in dtypes:
            for head_dim in head_dims:
                for name, kw in kernel_configs(dtype, head_dim):
                    where = (f"sm_{arch} {TYPE_NAMES[dtype]} D{head_dim:<3d} {name:<22s} "
                             f"w{kw['num_warps']} s{kw['num_stages']}")
                    try:
                        r = compile_config(dtype=dtype, arch=arch, **kw)
                    except Exception as e:  # report every config, then fail
                        failures += 1
                        print(f"{where}  FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                        continue
                    failures += not r["fits"]
                    verdict = "ok" if r["fits"] else f"too much shared memory (limit {SHARED_LIMIT[arch] // 1024} KB)"
                    spill = f"spills {r['spilled']:>4d} B" if r["spilled"] else "no spill    "
                    print(f"{where}  {r['registers']:>3d} regs  {spill}  {r['shared'] // 1024:>3d} KB  {r['mma']:<5s}  "
                          f"{verdict}", flush=True)
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="80,90", help="compute capabilities, comma-separated (default: %(default)s)")
    p.add_argument("--dtype", default="bf16,fp32",
                   help="input dtypes, comma-separated: bf16, fp16, fp32 (default: %(default)s)")
    p.add_argument("--head_dim", default="64,128", help="head dimensions, comma-separated (default: %(default)s)")
    args = p.parse_args()
    by_name = {v: k for k, v in TYPE_NAMES.items()}
    failures = report([int(a) for a in args.arch.split(",")], [by_name[d] for d in args.dtype.split(",")],
                      [int(d) for d in args.head_dim.split(",")])
    print(f"{failures} config(s) failed" if failures else "every config compiles and fits")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
