"""Processes: one run spread over many, with PyTorch's own engines, and what each process holds.

    torchrun --standalone --nproc_per_node 8 train.py --config configs/olmo-1b.json --domain_frac 0.05
    torchrun --standalone --nproc_per_node 8 train.py --config configs/olmo-3b.json --domain_frac 0.05  # FSDP
    python scripts/memory_plan.py                  # every preset's plan (train.py prints its run's at start-up)

train.py's loop does not change with the number of processes: the global batch is the same, each of
N ranks takes its share of the micro-batches (data.Mixture.get_batch), and the losses are reduced over
the ranks. What changes is here, read after train.py:
- setup_runtime: one process, or one of torchrun's (RANK/WORLD_SIZE set): the device, the compute
  dtype and the process group (NCCL on GPUs, gloo on CPUs, so that the tests run 2 ranks on a CPU).
- wrap_model, the one place a model is made ready for several processes (train.py and finetune.py
  call it). Two engines (README "Scaling up" says which preset needs which):
  --parallel ddp (the default): every process keeps the whole model and gradients are all-reduced;
    checkpoints are one file written by rank 0.
  --parallel fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) shards parameters, gradients and
    optimizer state over the processes, gathering one block's weights at a time (in bf16 on GPUs,
    reducing gradients in fp32); checkpoints are folders of shards that resume on any number of
    processes (run_folder.py).
  --act_ckpt (model.py) recomputes each block in backward instead of keeping its activations, with either.
- The memory plan: what each process holds at the peak of a step, known before anything is allocated,
  so that a run that cannot fit is refused in one line that names the flag that makes it fit.
"""
import contextlib
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig
from settings import TrainError

DTYPES = ("auto", "float32", "bfloat16", "float16")
GB = 1e9


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def setup_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """One process, or one of torchrun's (RANK/WORLD_SIZE set): NCCL on GPUs, gloo on CPUs. Every script
    turns its --device into torch's here, before it writes anything, so it is checked here (a dtype is
    one of DTYPES, which the flag's parser has checked)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
        raise TrainError(f"--device {device}: use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and int(device[5:] or 0) >= torch.cuda.device_count():
        raise TrainError(f"--device {device}: {torch.cuda.device_count()} CUDA GPUs are visible here; "
                         f"use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise TrainError("--device mps: no Apple GPU here; use --device auto or cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        if device == "cuda":
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    dev = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(rank, world_size, dev, getattr(torch, dtype))


def teardown_runtime(rt: Runtime):
    """Leave the process group together: a rank that tears down while rank 0 is still writing its
    last checkpoint can abort at exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_geometry(batch_size: int, grad_accum: int, world_size: int):
    """The global batch splits into grad_accum equal micro-batches, shared evenly by the processes."""
    if batch_size % grad_accum or grad_accum % world_size:
        raise TrainError(f"batch_size {batch_size} must split into grad_accum {grad_accum} micro-batches, "
                         f"a multiple of the {world_size} processes: set --batch_size/--grad_accum")


# ---------------------------------------------------------------------------------------------
# The engines

def wrap_model(model: GPT, rt: Runtime, parallel: str = "ddp", compile: bool = False):
    """The model the loop calls. fsdp: `model` is sharded in place (and each block compiled, if asked)
    and is itself what the loop calls. ddp: compiled whole, if asked, and on several processes wrapped
    in DDP. Either way `model` stays the GPT whose parameters the optimizer, the weight average and the
    checkpoints use: only the forward pass goes through the wrappers."""
    if parallel == "fsdp":
        shard_model(model, rt, compile_blocks=compile)
        return model
    if compile:
        model = torch.compile(model)
    if rt.world_size > 1:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model


def shard_model(model: GPT, rt: Runtime, compile_blocks: bool = False):
    """FSDP2, applied as torchtitan does: each block is its own unit (its weights are gathered just
    before it runs and freed after), then the root holds the rest (embedding, output layer). Weights
    stay fp32 shards (the optimizer updates those); on a GPU each block computes with bf16 copies and
    gradients are reduced in fp32. The last block keeps its weights after forward, since backward
    starts there. Inputs are not cast: the residual stream stays fp32 as under DDP's autocast, and the
    RoPE tables keep their precision. The model is sharded in place: still a GPT, with DTensor
    parameters. torch.compile, if asked, compiles each block (compiling across the hooks would not)."""
    if not dist.is_initialized():  # one process: a group of one, so that the same code and checkpoints run
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    mesh = init_device_mesh(rt.device.type, (rt.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=None if rt.dtype == torch.float32 else rt.dtype,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
    for i, block in enumerate(model.blocks):
        if compile_blocks:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(model.blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def reshard(model):
    """Put FSDP's gathered weights back into their shards (a no-op for a model that is not sharded)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU. None where unknown (and on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12)):
        if key in name:
            return flops
    return None


# ---------------------------------------------------------------------------------------------
# Memory plan: what each process holds at the peak of a step, known before anything is allocated
#
# Per parameter: fp32 weights (4 bytes), fp32 gradients (4) and AdamW's two moments (8), each split
# over the processes by FSDP. Per token of a micro-batch, the activations that backward needs, counted
# tensor by tensor from model.py (a = bytes of the compute dtype: 2 under bf16 autocast, 4 in fp32):
#   block input x and attention output x + attn (fp32 residual stream)        8 d
#   normed inputs of qkv and gate_up, qkv (v keeps it whole), RoPE'd q and k,
#   attention output and its (B, T, d) copy for proj                          9 a d
#   gate_up output (silu keeps it whole), silu(gate), the product for proj     4 a f
#   softmax statistics (4 per head), norm statistics (2 x 2 x 4)              4 h + 16
# With --act_ckpt a block keeps only x (4 d) and one block's activations live again during backward.
# After the last block: the final residual (4 d), the fused loss's d loss/d hidden (4 d, saved from
# the forward) and d loss/d W (the output layer's size, in the weights' dtype).

def count_params(mc: GPTConfig) -> int:
    block = 4 * mc.d_model ** 2 + 3 * mc.d_model * mc.d_ff  # qkv, proj; gate_up, proj
    return mc.n_layer * block + mc.padded_vocab * mc.d_model * (1 if mc.tie_embeddings else 2)


def memory_plan(mc: GPTConfig, micro_batch: int, world_size: int, parallel: str, act_ckpt: bool,
                dtype: torch.dtype, device_type: str, ema: bool = False) -> dict[str, float]:
    """Bytes per process by what holds them. "total" is the plan: what lives through the whole step,
    plus the larger of what forward and backward hold and what the optimizer step adds."""
    d, f, h, L, V = mc.d_model, mc.d_ff, mc.n_head, mc.n_layer, mc.padded_vocab
    params, block_params, output_params = count_params(mc), 4 * d * d + 3 * d * f, V * d
    shards = world_size if parallel == "fsdp" else 1
    a = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    tokens = micro_batch * mc.seq_len
    per_block = tokens * (8 * d + 9 * a * d + 4 * a * f + 4 * h + 16)
    blocks = L * tokens * 4 * d + per_block if act_ckpt else L * per_block
    weight_bytes = a if parallel == "fsdp" else 4  # FSDP gathers the weights in the compute dtype
    whole_step = {"parameters": 4 * params / shards, "gradients": 4 * params / shards,
                  "optimizer": 8 * params / shards}
    if ema:  # --ema: the average, sharded like the weights
        whole_step["weight average"] = 4 * params / shards
    if parallel == "ddp" and world_size > 1:
        whole_step["gradient buckets"] = 4 * params  # DDP all-reduces a flat copy of the gradients
    passes = {"activations": blocks + tokens * 8 * d + weight_bytes * output_params}
    if device_type == "cuda":  # kernels/cross_entropy.py: <= 256 MiB of logits, inputs in the compute dtype
        passes["loss chunk"] = min(tokens * V * a, 2 ** 28) + a * tokens * d + (a * V * d if weight_bytes > a else 0)
    else:  # the kernels' reference: 1024 tokens of fp32 logits, their gradient made in their place
        passes["loss chunk"] = min(tokens, 1024) * V * 4
    if parallel == "fsdp":  # the root's weights (embedding) and two blocks' (one running, one prefetched),
        # and the largest unit's whole gradient before it is reduce-scattered (in fp32 too)
        passes["gathered weights"] = (0 if shards == 1 and a == 4 else a * (output_params + 2 * block_params)
                                      + (a + 4) * max(block_params, output_params))
    elif a < 4:  # autocast's copies of the block weights, kept for backward
        passes["weight copies"] = a * L * block_params
    # AdamW is fused on a GPU; on a CPU it goes tensor by tensor, with two temporaries of the largest
    step = 0 if device_type == "cuda" else 2 * 4 * max(output_params, 2 * d * f) / shards
    if device_type == "cuda":  # the CUDA context, kernels and NCCL's buffers (the allocator's slack is not counted)
        whole_step["cuda runtime"] = 2e9
    plan = {**whole_step, **passes, "optimizer step": step}
    plan["total"] = sum(whole_step.values()) + max(sum(passes.values()), step)
    return plan


def check_memory(cfg, mc: GPTConfig, rt: Runtime):
    """Print the plan of a train.TrainConfig's run (rank 0) and refuse, in one line with the fix, a run
    that cannot fit its memory: --memory_gb, or else the GPU's own. On a CPU without --memory_gb nothing
    is checked."""
    micro = cfg.batch_size // cfg.grad_accum

    def total(parallel=cfg.parallel, act_ckpt=cfg.act_ckpt, micro_batch=micro):
        return memory_plan(mc, micro_batch, rt.world_size, parallel, act_ckpt, rt.dtype, rt.device.type,
                           cfg.ema > 0)["total"]

    plan = memory_plan(mc, micro, rt.world_size, cfg.parallel, cfg.act_ckpt, rt.dtype, rt.device.type, cfg.ema > 0)
    budget = cfg.memory_gb * GB or (torch.cuda.get_device_properties(rt.device).total_memory
                                     if rt.device.type == "cuda" else 0)
    if rt.master:
        print(format_plan(plan, mc, micro, cfg, rt, budget))
    if not budget or plan["total"] <= budget:
        return
    options = [f"--grad_accum {cfg.batch_size // m}" for m in range(micro - 1, 0, -1)
               if cfg.batch_size % m == 0 and (cfg.batch_size // m) % rt.world_size == 0
               and total(micro_batch=m) <= budget][:1]
    changes = (("--act_ckpt", dict(act_ckpt=True)), ("--parallel fsdp", dict(parallel="fsdp")),
               ("--parallel fsdp --act_ckpt", dict(parallel="fsdp", act_ckpt=True)))
    options += [flags for flags, change in changes  # the ones that change something and fit
                if any(getattr(cfg, k) != v for k, v in change.items()) and total(**change) <= budget]
    fix = " or ".join(options) or "use more GPUs with --parallel fsdp --act_ckpt, or a smaller --model"
    raise TrainError(f"the memory plan needs {plan['total'] / GB:.3g} GB per process but "
                     f"{'--memory_gb gives' if cfg.memory_gb else 'the GPU has'} {budget / GB:.3g} GB: {fix}")


def format_plan(plan: dict, mc: GPTConfig, micro: int, cfg, rt: Runtime, budget: float) -> str:
    unit, name = (GB, "GB") if plan["total"] >= GB else (1e6, "MB")
    head = (f"memory plan per process: {count_params(mc) / 1e6:.1f}M parameters, {cfg.parallel} on {rt.world_size} "
            f"x {rt.device.type}, micro-batch {micro} x {mc.seq_len} ({cfg.grad_accum // rt.world_size} micro-steps "
            f"per step of {cfg.batch_size}), {str(rt.dtype).removeprefix('torch.')} compute, activation "
            f"checkpointing {'on' if cfg.act_ckpt else 'off'}")
    phase = {"optimizer step": "  (optimizer step)", "activations": "  (forward/backward)",
             "loss chunk": "  (forward/backward)", "gathered weights": "  (forward/backward)",
             "weight copies": "  (forward/backward)"}
    rows = [f"  {key:<18}{value / unit:9.2f} {name}{phase.get(key, '')}" for key, value in plan.items() if key != "total" and value]
    total = f"  {'total':<18}{plan['total'] / unit:9.2f} {name}" + (f" of {budget / unit:.1f} {name}" if budget else "")
    return "\n".join([head, *rows, "  " + "-" * 30, total])
