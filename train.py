"""Pretraining with a domain mixture: the loop that every experiment in this project runs.

    python train.py --domain_frac 0.05                   # the CPU miniature (--model cpu-mini), anywhere
    python train.py --config configs/gpu-124m.json --domain_frac 0.02 --out_dir out/d0.02   # 124M, one GPU
    torchrun --nproc_per_node 8 train.py --config configs/olmo-1b.json --domain_frac 0.05
    torchrun --nproc_per_node 8 train.py --config configs/olmo-3b.json --domain_frac 0.05   # FSDP
    python train.py --out_dir out/d0.02 --resume          # continue an interrupted run exactly
    python train.py --init_from out/npt/ckpt_90M.pt --domain_frac 0.05 --max_tokens 100e6   # SCPT

Each optimizer step consumes one global batch of `batch_size` sequences from data.Mixture, of which
a `domain_frac` share are domain sequences. The global batch does not depend on the number of
processes: with N torchrun ranks each rank runs grad_accum / N micro-steps, so a run on 8 GPUs and
the same run on one process with accumulation see identical data and give the same losses.

At every eval the loop measures the general validation loss, the domain *train* loss (on a fixed
subset of the training split) and the domain *test* loss (mean_loss, on the same windows every time),
and appends one JSON line to out_dir/log.jsonl; the gap between the last two is the overfitting that
fit_laws.py models.
Checkpoints are written atomically: ckpt_latest.pt (model, optimizer, mixture position, config) every
ckpt_interval steps, for --resume, and once per requested token milestone ckpt_<tokens>.pt with the
weights alone, which finetune.py, evaluate.py and scripts/export_hf.py start from.

Two engines spread a run over processes, both PyTorch's own (README "Scaling up" says which preset
needs which; a memory plan printed at start-up says what each process holds):
- --parallel ddp (the default): every process keeps the whole model, gradients are all-reduced;
  checkpoints are one file written by rank 0.
- --parallel fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) shards parameters, gradients and
  optimizer state over the processes, gathering one block's weights at a time (in bf16 on GPUs,
  reducing gradients in fp32); checkpoints are folders of shards (torch.distributed.checkpoint), each
  rank writing its part, that resume on any number of processes.
--act_ckpt recomputes each block in backward instead of keeping its activations, with either.

A run killed at any moment goes on exactly with the same command plus --resume: log lines written
after its last checkpoint are dropped (a cut-off last line too, with a warning) and made again. A run
killed before its first checkpoint holds nothing worth keeping and starts again, with or without
--resume. A full disk stops the run in one line that says the last checkpoint is intact. Every
setting is checked before anything is written, so a bad value leaves the folder as it was.

Every flag is a field of TrainConfig, whose help line and default `python train.py --help` prints;
the defaults are the CPU miniature's, and a preset file (configs/) sets a larger scale's.
finetune.py reuses this file's pieces (settings, optimizer, Schedule, mean_loss, checkpoints and
train_loop), evaluate.py its losses, and every script loads checkpoints through load_model.
"""
import argparse
import contextlib
import dataclasses
import errno
import glob
import json
import math
import os
import re
import shutil
import sys
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from model import GPT, PRESETS, GPTConfig, config_from_preset

def setting(default, help: str, choices=None):
    """A config field: its default, its one-line meaning for --help and, for an enumeration, the values
    it takes, in one place (build_parser turns each field into a flag)."""
    return field(default=default, metadata={"help": help, "choices": choices})


SCHEDULES = ("cosine_truncated", "cosine", "constant", "wsd")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = setting(data.DEFAULT_DATA_DIR, "dataset folder made by data.py (the default one is "
                            "prepared on first use)")
    out_dir: str = setting("", "run folder for log.jsonl and the checkpoints (default: out/d<domain_frac>)")
    domain_frac: float = setting(0.0, "delta: the share of domain sequences in every batch (0: NPT, general "
                                      "data only)")
    # model: a preset plus optional overrides
    model: str = setting("cpu-mini", "model preset (model.py); the five flags below override one of its sizes",
                         choices=tuple(PRESETS))
    n_layer: int | None = setting(None, "blocks (default: the preset's)")
    n_head: int | None = setting(None, "attention heads (default: the preset's)")
    d_model: int | None = setting(None, "width of the residual stream (default: the preset's)")
    d_ff: int | None = setting(None, "hidden size of the MLP (default: the preset's)")
    seq_len: int | None = setting(None, "context length in tokens (default: the preset's)")
    norm: str | None = setting(None, "norm (default: the preset's, layernorm)", choices=("layernorm", "rmsnorm"))
    # batch: global sequences per optimizer step, split into grad_accum micro-steps (shared by ranks)
    batch_size: int = setting(32, "sequences per optimizer step, whatever the number of processes")
    grad_accum: int = setting(1, "micro-batches per step, shared by the processes (a multiple of their number)")
    max_tokens: float = setting(1e6, "length of the run in tokens (1e6, 1M)")
    # learning rate schedule
    schedule: str = setting("cosine_truncated", "learning rate after warmup: the paper's cosine over horizon_mult "
                                                "x the run, stopped at its end; a cosine over the run; constant; "
                                                "warmup-stable-decay", choices=SCHEDULES)
    lr: float = setting(3e-3, "peak learning rate")
    min_lr: float = setting(3e-4, "learning rate the cosines and wsd decay to")
    warmup_steps: int = setting(20, "steps of linear warmup to lr")
    horizon_mult: float = setting(10.0, "cosine_truncated: the cosine spans horizon_mult x the run (paper: 2T/200B)")
    decay_frac: float = setting(0.2, "wsd: decays linearly over this last share of the run")
    # AdamW (paper defaults)
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-5, "AdamW epsilon")
    weight_decay: float = setting(0.1, "AdamW weight decay, of matrices only")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    ema: float = setting(0.0, "evals and milestones use an exponential moving average of the weights with this "
                              "decay per step (0: the weights themselves)")
    # evaluation, logging and checkpoints
    eval_interval: int = setting(25, "steps between evals, one log.jsonl line each")
    eval_windows: int = setting(64, "fixed windows of each split an eval measures")
    eval_batch_size: int = setting(32, "windows per forward pass of an eval")
    ckpt_tokens: str = setting("", "token milestones for weights-only checkpoints ckpt_<tokens>.pt: 250K,500K,1M")
    ckpt_interval: int = setting(0, "steps between ckpt_latest.pt writes, a multiple of eval_interval (0: every eval)")
    tensorboard: bool = setting(False, "also write the log's numbers to out_dir/tensorboard (needs tensorboard)")
    wandb: str = setting("", "also send them to this Weights & Biases project (needs wandb; WANDB_MODE=offline "
                             "runs without an account)")
    seed: int = setting(0, "seed of the initial weights and of the data order")
    # system
    device: str = setting("auto", "auto (a GPU if there is one), cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "compute dtype (auto: bf16 autocast on a GPU, fp32 on a CPU)", choices=DTYPES)
    parallel: str = setting("ddp", "ddp: a replica of the model per process; fsdp: parameters, gradients and "
                                   "optimizer state sharded over them", choices=("ddp", "fsdp"))
    act_ckpt: bool = setting(False, "activation checkpointing: recompute each block in backward")
    memory_gb: float = setting(0.0, "memory per process the plan must fit (0: the GPU's own; on a CPU: no check)")
    compile: bool = setting(False, "torch.compile the model")
    init_from: str = setting("", "start from this checkpoint's weights, going on with its tokens, schedule and "
                                 "general data (SCPT)")
    resume: bool = setting(False, "continue the run in out_dir exactly, from its ckpt_latest.pt")


class TrainError(Exception):
    """Bad input or a failed run: the message is one line that says what to do."""


class Diverged(TrainError):
    """The training loss is no longer finite (finetune.py records it and goes on with its grid)."""


# ---------------------------------------------------------------------------------------------
# Settings: every value is checked before anything is written (finetune.py's too)

# What each numeric setting must be, by name: check_config applies the entries a config has, so
# train.py and finetune.py share them (finetune.py's lr and warmup are grids, checked where parsed).
RANGES = {
    "domain_frac": (lambda v: 0 <= v < 1, "in [0, 1): the share of domain tokens in pretraining "
                                          "(finetune.py trains on the domain alone)"),
    "replay": (lambda v: 0 <= v < 1, "in [0, 1): the share of general sequences in a finetuning batch"),
    "max_tokens": (lambda v: 0 < v < math.inf, "a token count > 0"),
    "lr": (lambda v: 0 < v < math.inf, "a number > 0"),
    "min_lr": (lambda v: 0 <= v < math.inf, "a number >= 0 (below 0 the schedule ends in gradient ascent)"),
    "min_lr_frac": (lambda v: 0 <= v <= 1, "in [0, 1]: wsd decays to this share of the LR"),
    "horizon_mult": (lambda v: 1 <= v < math.inf, "a number >= 1: the cosine spans horizon_mult x the run"),
    "decay_frac": (lambda v: 0 < v <= 1, "in (0, 1]: wsd decays over this share of the run"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: 0 < v < math.inf, "a number > 0"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: no clipping)"),
    "ema": (lambda v: 0 <= v < 1, "in [0, 1): the weight average's decay per step (0: none)"),
    "max_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "extend_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "eval_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "ckpt_interval": (lambda v: v >= 0, "an integer >= 0 (0: at every eval)"),
    "memory_gb": (lambda v: 0 <= v < math.inf, "a number of GB >= 0 (0: the GPU's memory)"),
    **{name: (lambda v: v >= 1, "a positive integer") for name in (
        "batch_size", "grad_accum", "eval_interval", "eval_windows", "eval_batch_size",
        "patience", "n_layer", "n_head", "d_model", "d_ff", "seq_len")},
}


def check_config(cfg):
    """Every setting of a TrainConfig (or of finetune.py's FinetuneConfig), checked before anything is
    written: a bad value fails at once in one line, not after warmup, and nonsense (a negative min_lr
    trains by gradient ascent) never runs. The flags' parser has checked types and choices (the
    config's own), setup_runtime checks the device, check_geometry the batch split once the number of
    processes is known. None means "not given": a default applies."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in RANGES and field_type(f) in (int, float) and value is not None:
            ok, what = RANGES[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise TrainError(f"--{f.name} {value}: must be {what}")
    if not isinstance(cfg, TrainConfig):
        return
    if cfg.ckpt_interval % cfg.eval_interval:
        raise TrainError(f"--ckpt_interval {cfg.ckpt_interval} is not a multiple of --eval_interval "
                         f"{cfg.eval_interval}: checkpoints are written at evals")
    if cfg.min_lr > cfg.lr:
        raise TrainError(f"--min_lr {cfg.min_lr:g} is above --lr {cfg.lr:g}: the schedule decays from lr to min_lr")
    seq_len = cfg.seq_len or PRESETS[cfg.model]["seq_len"]
    max_tokens = format_tokens(cfg.max_tokens)
    if cfg.max_tokens < cfg.batch_size * seq_len:
        raise TrainError(f"--max_tokens {max_tokens} is less than one step ({cfg.batch_size} x {seq_len} tokens): "
                         f"raise it or lower --batch_size")
    beyond = [m for m in parse_milestones(cfg.ckpt_tokens) if m > cfg.max_tokens]
    if beyond:
        raise TrainError(f"--ckpt_tokens {format_tokens(beyond[0])} is beyond --max_tokens {max_tokens}: the run "
                         f"never gets there; lower it or raise --max_tokens")


# ---------------------------------------------------------------------------------------------
# Processes and devices

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
    last checkpoint can abort at exit (seen with gloo in PyTorch 2.11)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule: shared with finetune.py

def configure_optimizer(model, lr, betas, eps, weight_decay):
    """AdamW with weight decay on matrices only (biases and norms, if any, are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


class WeightAverage:
    """An exponential moving average of a model's weights (--ema): after step t,
        average <- average + (1 - d_t) * (weights - average),  d_t = min(decay, (1 + t) / (10 + t)).
    At a nearly constant learning rate (cosine_truncated) the weights keep jumping around their
    optimum, and a tiny model's loss on a domain it has barely seen jumps with them, by 0.02-0.03 nats
    from one eval to the next; the average over the last ~1 / (1 - decay) steps sits closer to the
    optimum and moves smoothly. d_t grows from 0.1 (TensorFlow's ExponentialMovingAverage rule), so that
    early evals average only the last ~10% of the steps rather than remember the random start. Works
    on sharded weights as on plain ones: each process averages the parameters it holds."""

    def __init__(self, model, decay: float):
        self.model, self.decay, self.steps = model, decay, 0
        self.weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self):
        self.steps += 1
        keep = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, p in self.model.named_parameters():
            self.weights[name].lerp_(p, 1 - keep)

    @contextlib.contextmanager
    @torch.no_grad()
    def in_model(self):
        """The model holds the average inside the with-block and its own weights again after it. (FSDP
        keeps the root's weights gathered after a forward pass: they go back into their shards first,
        so that each copy lands in the shards the optimizer updates and the next forward gathers anew.)"""
        reshard(self.model)
        own = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        for name, p in self.model.named_parameters():
            p.copy_(self.weights[name])
        try:
            yield
        finally:
            reshard(self.model)
            for name, p in self.model.named_parameters():
                p.copy_(own[name])


def reshard(model):
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@dataclass(frozen=True)
class Schedule:
    """The learning rate at each step. Every kind warms up linearly over warmup_steps, then:
    cosine_truncated: the paper's cosine from lr to min_lr over horizon_mult x the run, stopped at
      the end of the run, so every checkpoint is nearly un-annealed and shorter budgets are simply
      earlier checkpoints of one run; cosine: the same cosine over exactly the run; constant;
      wsd: warmup-stable-decay, linear decay to min_lr over the last decay_frac of the run."""
    kind: str
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    horizon_mult: float = 10.0
    decay_frac: float = 0.2

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        if self.kind == "wsd":
            decay_start = self.total_steps * (1 - self.decay_frac)
            if step < decay_start:
                return self.lr
            return self.lr + (self.min_lr - self.lr) * min(1.0, (step - decay_start) /
                                                           max(1.0, self.total_steps - decay_start))
        horizon = self.total_steps * (self.horizon_mult if self.kind == "cosine_truncated" else 1.0)
        progress = min(1.0, (step - self.warmup_steps) / max(1.0, horizon - self.warmup_steps))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Checkpoints: one file or a folder of shards, and the one loader every script uses
#
# A checkpoint is ckpt_<name>.pt either way. With --parallel ddp it is one torch.save file written by
# rank 0. With --parallel fsdp it is a folder: every rank writes its shards of the weights (and
# optimizer state) through torch.distributed.checkpoint (DCP), which reads them back on any number of
# processes, and rank 0 adds info.pt with the rest. ckpt_latest.pt holds everything --resume needs;
# a milestone ckpt_<tokens>.pt holds the weights and what the run was (the keys CHECKPOINT_KEYS
# names), which is all that finetuning, evaluation and export read. Both kinds are written under a
# temporary name and renamed once complete, so a kill or a full disk never leaves half a checkpoint
# under the real name; a folder cannot be renamed over another one, so the old folder steps aside
# first (NAME.old<step>) and is put back by the next start if a kill came between the two renames.

CHECKPOINT_KEYS = {"model", "model_config", "config", "step", "tokens", "general_position"}


def save_checkpoint(path: str, state: dict):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    def write(f):
        try:
            torch.save(state, f)
        except RuntimeError as e:  # torch.save reports a failed write (a full disk) as "unexpected pos"...
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None  # ... with the OSError that says what happened behind it
            raise
    data.atomic_write(path, write)


def save_sharded(path: str, tensors: dict, info: dict, rt: Runtime):
    """Every rank writes its shards of `tensors` ({"model": ..., "optimizer": ...} state dicts) through
    DCP; rank 0 writes `info` (the rest of the checkpoint) and renames the folder into place."""
    tmp, old = f"{path}.tmp{info['step']}", f"{path}.old{info['step']}"
    try:
        dcp.save(tensors, checkpoint_id=tmp)
        if rt.master:
            save_checkpoint(os.path.join(tmp, "info.pt"), info)
    except BaseException as e:
        if rt.master:
            shutil.rmtree(tmp, ignore_errors=True)
        # DCP gathers every rank's failure into one exception: raise the disk's own error (writes_in)
        errors = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
        raise next((error for error in errors if isinstance(error, OSError)), e) from None
    if rt.master:
        set_aside = os.path.exists(path)
        if set_aside:
            os.rename(path, old)
        os.rename(tmp, path)
        if set_aside:
            shutil.rmtree(old)
    dist.barrier()  # no rank goes on (and might read it) before the folder is in place


def shard_contents(path: str) -> set[str]:
    """The tensors a checkpoint folder holds ("model.wte.weight", ...), once every file its index names
    is there in full: a shard that is missing or cut short fails here, in one line, not inside DCP."""
    try:
        index = dcp.FileSystemReader(path).read_metadata()
    except Exception:
        raise TrainError(f"{path} is not a complete checkpoint folder (its .metadata is missing or damaged): "
                         f"copy the whole folder again, or use another checkpoint")
    for where in index.storage_data.values():
        shard = os.path.join(path, where.relative_path)
        if not os.path.isfile(shard) or os.path.getsize(shard) < where.offset + where.length:
            raise TrainError(f"{shard} is missing or cut short: checkpoint {path} is damaged; copy the whole "
                             f"folder again (every rank's shard), or use another checkpoint")
    return set(index.state_dict_metadata)


def load_checkpoint(path: str) -> dict:
    """A checkpoint's dict. Of a folder: what info.pt holds, the tensors staying on disk until
    load_weights or load_training_state reads them into a model (any number of processes)."""
    if not os.path.exists(path):
        raise TrainError(f"checkpoint {path} does not exist")
    sharded = os.path.isdir(path)
    if sharded and not os.path.exists(os.path.join(path, "info.pt")):
        raise TrainError(f"{path} is a folder but not a checkpoint (it has no info.pt): give a ckpt_<tokens>.pt")
    try:
        ckpt = torch.load(os.path.join(path, "info.pt") if sharded else path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrainError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is corrupt or not a checkpoint")
    keys = set(ckpt) if isinstance(ckpt, dict) else set()
    if sharded and any(k.startswith("model.") for k in shard_contents(path)):
        keys.add("model")
    missing = CHECKPOINT_KEYS - keys
    if missing:
        raise TrainError(f"{path} is not a checkpoint of train.py or finetune.py (it lacks {', '.join(sorted(missing))})")
    return ckpt


def check_vocabulary(ckpt: dict, meta: dict, ckpt_path: str, data_dir: str):
    """Where a checkpoint meets a dataset (--resume, --init_from, finetune.py, evaluate.py): the same
    token ids mean different things under another tokenizer, so refuse, in one line."""
    vocab = ckpt["model_config"]["vocab_size"]
    if vocab != meta["vocab_size"]:
        raise data.DataError(f"{ckpt_path} has a {vocab}-token vocabulary but {data_dir} holds {meta['tokenizer']} "
                             f"tokens ({meta['vocab_size']}): use the dataset the model was trained on")


def check_shape(model, ckpt: dict, path: str):
    """A one-line error if the checkpoint holds another shape than `model`; unties `model` if it is untied."""
    expected, found = model.config_dict(), ckpt["model_config"]
    diff = {k: (found.get(k), v) for k, v in expected.items() if k != "tie_embeddings" and found.get(k) != v}
    if diff:  # (a vocabulary of another tokenizer is refused before: check_vocabulary)
        raise TrainError(f"{path} holds a model with " + ", ".join(f"{k}={a} (not {b})" for k, (a, b) in diff.items())
                         + ": use the same --model/overrides as the run that wrote it")
    if not found.get("tie_embeddings", True):
        model.untie()


def load_weights(model, ckpt: dict, path: str):
    """Load a checkpoint's weights into `model` (a GPT, sharded or not), after check_shape."""
    check_shape(model, ckpt, path)
    if os.path.isdir(path):
        # into the model's tensors, in place; collectively if this is one of several processes
        dcp.load({"model": model.state_dict()}, checkpoint_id=path, no_dist=not dist.is_initialized())
    else:
        model.load_state_dict(ckpt["model"])


def load_model(path: str, device="cpu") -> tuple[GPT, dict]:
    """The project's one checkpoint loader: the model of any checkpoint (a file or a folder of shards,
    of train.py or finetune.py, untied if it was), in fp32 on `device`, and the checkpoint's dict."""
    ckpt = load_checkpoint(path)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    load_weights(model, ckpt, path)
    return model.to(device), ckpt


def load_training_state(model, optimizer, ckpt: dict, path: str, average: WeightAverage | None = None):
    """What --resume reads besides the weights: the optimizer state, the weight average (--ema) and the
    random state. A folder's tensors are resharded by DCP to this run's processes; a run saved before its
    first step has no optimizer state (an AdamW state of zeros would count a step that never happened)."""
    if os.path.isdir(path):
        state = {"model": model.state_dict(), **({"ema": average.weights} if average else {})}
        if any(k.startswith("optimizer.") for k in shard_contents(path)):
            state["optimizer"] = get_optimizer_state_dict(model, optimizer)
        dcp.load(state, checkpoint_id=path)  # into the tensors in place
        if "optimizer" in state:
            set_optimizer_state_dict(model, optimizer, state["optimizer"])
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
        if average:
            for name, weights in average.weights.items():
                weights.copy_(ckpt["ema"][name])
    if average:
        average.steps = ckpt["ema_steps"]
    torch.set_rng_state(ckpt["rng"])


def format_tokens(n: float) -> str:
    """A token count, exact and short, for file names and messages: 250000 -> 250K, 2e9 -> 2B, 2048 -> 2048."""
    n = int(n)
    for unit, scale in (("B", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


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


def check_memory(cfg: TrainConfig, mc: GPTConfig, rt: Runtime):
    """Print the plan (rank 0) and refuse, in one line with the fix, a run that cannot fit its memory:
    --memory_gb, or else the GPU's own. On a CPU without --memory_gb nothing is checked."""
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


GB = 1e9


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


# ---------------------------------------------------------------------------------------------
# Metrics beside log.jsonl, where people look: optional, imported only when asked for

def import_metrics(cfg: TrainConfig) -> dict:
    """The packages --tensorboard and --wandb need (neither is a requirement of this project), imported
    before anything is written, so that a missing one is a one-line error that leaves the folder as it was."""
    modules = {}
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard, or drop the flag")
        modules["tensorboard"] = SummaryWriter
    if cfg.wandb:
        try:
            import wandb
        except ImportError:
            raise TrainError("--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline runs without "
                             "an account), or drop the flag")
        modules["wandb"] = wandb
    return modules


def open_metrics(modules: dict, cfg: TrainConfig, out_dir: str, run_info: dict):
    """A function that sends a log record's numbers to TensorBoard (out_dir/tensorboard) and W&B, or
    None. A resumed run sends the evals after its checkpoint again: TensorBoard shows a step's last
    value, and W&B counts each start of the run as a run of its own."""
    sinks = []
    if "tensorboard" in modules:
        writer = modules["tensorboard"](os.path.join(out_dir, "tensorboard"))

        def to_tensorboard(step, numbers):
            for name, value in numbers.items():
                writer.add_scalar(name, value, step)
            writer.flush()
        sinks.append(to_tensorboard)
    if "wandb" in modules:
        run = modules["wandb"].init(project=cfg.wandb, name=os.path.basename(os.path.abspath(out_dir)), dir=out_dir,
                                    config=run_info)
        sinks.append(lambda step, numbers: run.log(numbers, step=step))
    if not sinks:
        return None

    def log(record):
        numbers = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in sinks:
            sink(record["step"], numbers)
    return log


# ---------------------------------------------------------------------------------------------
# Losses on fixed windows: the three numbers of every log line (evaluate.py measures checkpoints with
# the same function, so its losses match the log's)
#
# Every loss is the mean next-token loss over a *fixed* set of windows of a split: the same windows
# at every eval of every run, so that curves are smooth and comparable across runs (they are the raw
# material of fit_laws.py). The windows are evenly spaced over the whole split, which covers all of a
# small held-out split and a representative sample of a large one.

LOSS_SPLITS = (("general_val_loss", "general_val"), ("domain_train_loss", "domain_train"),
               ("domain_test_loss", "domain_test"))


def eval_offsets(n_tokens: int, seq_len: int, n_windows: int) -> np.ndarray:
    """Start offsets of up to n_windows windows of seq_len + 1 tokens, evenly spread over the file."""
    n_possible = (n_tokens - 1) // seq_len
    if n_possible < 1:
        raise ValueError(f"a split of {n_tokens} tokens is shorter than one window of {seq_len + 1}")
    if n_windows >= n_possible:  # small split: every non-overlapping window, i.e. all of it
        return np.arange(n_possible) * seq_len
    return np.linspace(0, n_tokens - seq_len - 1, n_windows).astype(np.int64)


@torch.no_grad()
def mean_loss(model, tokens, seq_len: int, n_windows: int, batch_size: int, device,
              autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> float:
    """Mean token loss of `model` over the fixed windows of `tokens` (a split). Under torchrun the
    windows are shared out across ranks and the sums reduced, so every rank returns the same value."""
    was_training = model.training
    model.eval()
    every = eval_offsets(len(tokens), seq_len, n_windows)
    offsets = every[rank::world_size]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, number of tokens)
    # Every rank runs as many batches (a sharded model's forward is a collective): one with no window
    # of its own left evaluates the first window and counts nothing.
    for start in range(0, len(every[::world_size]), batch_size):
        batch = offsets[start:start + batch_size]
        rows = np.stack([tokens[o:o + seq_len + 1] for o in (batch if len(batch) else every[:1])]).astype(np.int64)
        rows = torch.from_numpy(rows).to(device)
        with autocast():
            _, loss = model(rows[:, :-1], rows[:, 1:])
        n = rows[:, 1:].numel() if len(batch) else 0
        total += torch.stack([loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=device)])
    if world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def make_evaluator(model, rt: Runtime, data_dir: str, seq_len: int, eval_windows: int, eval_batch_size: int,
                   average: WeightAverage | None = None):
    """A function that measures the three losses of a log line (general val, domain train, domain test):
    of the model's weights, or of their `average` (--ema)."""
    splits = {name: data.open_split(data_dir, split) for name, split in LOSS_SPLITS}

    def evaluate():
        with average.in_model() if average else contextlib.nullcontext():
            return {name: mean_loss(model, tokens, seq_len, eval_windows, eval_batch_size, rt.device, rt.autocast,
                                    rt.rank, rt.world_size)
                    for name, tokens in splits.items()}
    return evaluate


# ---------------------------------------------------------------------------------------------
# The loop

def train_loop(model, optimizer, schedule: Schedule, mixture, steps: range, rt: Runtime, evaluate, eval_at, *,
               grad_accum: int, grad_clip: float, desc: str):
    """Take the optimizer steps in `steps` and yield a log record at every eval: before the first step
    of a new run (steps from 0), after every step for which eval_at(step) holds, and after the last.
    The caller writes the record, and stops the run by breaking out of the loop.

    Step s takes the mixture's global batch s, in grad_accum micro-batches shared by the processes, at
    the learning rate schedule(s), with gradients clipped to norm grad_clip (0: not clipped); evaluate()
    gives a record's losses (make_evaluator). The three settings are all the loop needs: what a run
    continues from (its step and token count) is the mixture's, the rest the caller's.
    """
    n_micro = grad_accum // rt.world_size
    ddp = isinstance(model, DDP)
    raw = model.module if ddp else model
    tokens_per_step = mixture.batch_size * mixture.seq_len
    flops_per_token = raw.flops_per_token()
    peak = peak_flops(rt.device)
    t_start = time.time()
    # the train loss and the speed between evals: summed over n_steps steps since the eval after last_step
    loss_sum, n_steps, since, last_step = torch.zeros((), device=rt.device), 0, t_start, steps.start

    def record(done: int) -> dict:
        train_loss = loss_sum.clone()
        if rt.world_size > 1:
            dist.all_reduce(train_loss)
        train_loss = train_loss.item() / n_steps / rt.world_size if n_steps else None
        if train_loss is not None and not math.isfinite(train_loss):
            raise Diverged(f"loss is {train_loss} at step {done}: lower --lr (the last good checkpoint is kept)")
        dt = time.time() - since
        tokens_per_s = (done - last_step) * tokens_per_step / dt if dt > 0 else 0.0
        return {"step": done, "tokens": mixture.tokens(done), "domain_frac": mixture.domain_frac,
                "domain_epochs": mixture.domain_epochs(done), "lr": optimizer.param_groups[0]["lr"],
                "train_loss": train_loss, **evaluate(), "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * flops_per_token / peak if peak else None, "elapsed_s": time.time() - t_start}

    if steps.start == 0:
        first = record(0)
        since = time.time()
        yield first
    bar = tqdm(steps, desc=desc, disable=not rt.master, dynamic_ncols=True)
    shown = time.time()
    try:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            for micro in range(n_micro):
                x, y = mixture.get_batch(step, rt.rank * n_micro + micro, rt.world_size * n_micro)
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                sync = micro == n_micro - 1  # all-reduce gradients once, on the last micro-step
                with (contextlib.nullcontext() if sync or not ddp else model.no_sync()), rt.autocast():
                    _, loss = model(x, y)
                (loss / n_micro).backward()
                loss_sum += loss.detach() / n_micro
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            n_steps += 1
            done = step + 1
            # the bar's loss about once a second: reading it waits for the GPU to finish the step
            if rt.master and time.time() - shown > 1:
                bar.set_postfix(loss=f"{loss_sum.item() / n_steps:.3f}", E=f"{mixture.domain_epochs(done):.2f}",
                                refresh=False)
                shown = time.time()
            if eval_at(done) or done == steps.stop:
                line = record(done)
                loss_sum.zero_()
                n_steps, since, last_step = 0, time.time(), done
                mfu = {"mfu": f"{line['mfu']:.1%}"} if line["mfu"] is not None else {}
                bar.set_postfix(loss=f"{line['train_loss']:.3f}", dom_test=f"{line['domain_test_loss']:.3f}",
                                E=f"{line['domain_epochs']:.2f}", tok_s=f"{line['tokens_per_s']:.0f}", **mfu,
                                refresh=False)
                yield line
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Run folders: the log, what a kill or a full disk leaves, and what a rerun does with it

def append_jsonl(path: str, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_log(path: str) -> list[dict]:
    """The records of a log.jsonl (none if there is no file). A last line cut off by a kill or a full
    disk is dropped with a warning: it is an eval after the last checkpoint, which a rerun makes again."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "step" in record:
            records.append(record)
        elif any(rest.strip() for rest in lines[number:]):
            raise TrainError(f"{path} line {number} is not a log record: the log is damaged; delete that line "
                             f"(its eval is lost) or move the folder away to start over")
        else:
            print(f"warning: {path}: dropping its cut-off last line {number} (that eval is made again)",
                  file=sys.stderr)
    return records


def filter_log(path: str, keep):
    """Rewrite a log.jsonl atomically with only the records for which keep(record) is true: what a
    resumed run (or a rerun finetuning configuration) does with lines its earlier attempt wrote."""
    if os.path.exists(path):
        kept = [record for record in read_log(path) if keep(record)]
        data.atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept), mode="w")


def remove_temporary_files(out_dir: str):
    """What killed atomic writes left (NAME.tmp<pid>, a checkpoint folder's NAME.tmp<step>): a kill -9
    gives them no chance to clean up."""
    for stale in glob.glob(os.path.join(out_dir, "*.tmp[0-9]*")):
        shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)


def restore_set_aside(out_dir: str):
    """A kill between save_sharded's two renames leaves the previous checkpoint folder set aside as
    NAME.old<step> and no NAME: put it back (it is intact) before anything looks for NAME. One left
    beside NAME (a kill after the second rename) is removed."""
    for old in glob.glob(os.path.join(out_dir, "*.old[0-9]*")):
        name = old[:old.rindex(".old")]
        if os.path.exists(name):
            shutil.rmtree(old)
        else:
            os.rename(old, name)


@contextlib.contextmanager
def writes_in(out_dir: str, recovery):
    """Turn a failed write (a full disk, a lost mount) into a one-line error that says what is intact
    and the command that goes on: recovery() -> (intact, command). The atomic writes leave the files
    they were replacing as they were."""
    try:
        yield
    except OSError as e:
        full = e.errno == errno.ENOSPC
        intact, command = recovery()
        raise TrainError(f"cannot write in {out_dir}: {e.strerror}{' (the disk is full)' if full else ''}; "
                         f"{intact}: {'free space' if full else 'fix that'}, then {command}") from e


def run_folder(out_dir: str, resume: bool) -> str:
    """What the run folder allows, decided before anything is written: "new" (no run there), "resume"
    (from its ckpt_latest.pt, only with --resume, so that a mistyped --out_dir never continues another
    run) or "restart". A run killed before its first checkpoint leaves config.json and at most one log
    line (the eval whose checkpoint was being written): nothing worth keeping, so the same command, with
    or without --resume, starts it again. Any other folder is refused with what to do."""
    latest, log_path = os.path.join(out_dir, "ckpt_latest.pt"), os.path.join(out_dir, "log.jsonl")
    if os.path.exists(latest):
        if not resume:
            raise TrainError(f"{out_dir} already holds a run: add --resume to continue it or pick another --out_dir")
        return "resume"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TrainError(f"--out_dir {out_dir} is a file: give a folder")
    if glob.glob(os.path.join(out_dir, "ckpt_*.pt")):
        raise TrainError(f"{out_dir} has milestone checkpoints but no ckpt_latest.pt, and milestones hold weights only: "
                         f"go on from the newest with --init_from and another --out_dir, or move the folder away "
                         f"to start over")
    evals = 0
    if os.path.exists(log_path):
        with open(log_path, "rb") as f:
            evals = sum(1 for line in f if line.strip())
    if evals > 1:
        raise TrainError(f"{log_path} holds {evals} evals but there is no checkpoint to continue them from: "
                         f"move the folder away to start over, or pick another --out_dir")
    if evals or os.path.exists(os.path.join(out_dir, "config.json")):
        return "restart"
    if resume:
        raise TrainError(f"--resume: {out_dir} holds no run to continue; start it without --resume")
    return "new"


# ---------------------------------------------------------------------------------------------

def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "d_model", "d_ff", "seq_len", "norm")}
    return config_from_preset(cfg.model, vocab_size=vocab_size, **overrides)


def build_model(cfg: TrainConfig, vocab_size: int) -> GPT:
    try:
        return GPT(model_config(cfg, vocab_size))
    except ValueError as e:
        raise TrainError(str(e))


def parse_milestones(spec: str) -> list[int]:
    try:
        return sorted(data.token_count(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise TrainError(f"--ckpt_tokens {spec!r}: give comma-separated token counts like 250K,1M or 250e3,1e6")


# What defines the data stream and the schedule: a resumed run must keep them.
RESUME_FIXED = ("domain_frac", "batch_size", "seq_len", "seed", "max_tokens", "schedule", "lr", "min_lr",
                "warmup_steps", "horizon_mult", "decay_frac", "ema")


def check_geometry(batch_size: int, grad_accum: int, world_size: int):
    """The global batch splits into grad_accum equal micro-batches, shared evenly by the processes."""
    if batch_size % grad_accum or grad_accum % world_size:
        raise TrainError(f"batch_size {batch_size} must split into grad_accum {grad_accum} micro-batches, "
                         f"a multiple of the {world_size} processes: set --batch_size/--grad_accum")


def pretrain(cfg: TrainConfig):
    check_config(cfg)
    metrics_modules = import_metrics(cfg)  # before anything is written: a missing package is one line
    rt = setup_runtime(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    check_geometry(cfg.batch_size, cfg.grad_accum, rt.world_size)
    if rt.master and rt.device.type == "cuda" and cfg.model.startswith("cpu-"):  # the defaults are the CPU's
        print(f"note: training the CPU preset {cfg.model} on a GPU; the GPU's is --config configs/gpu-124m.json",
              file=sys.stderr)
    out_dir = cfg.out_dir or os.path.join("out", f"d{cfg.domain_frac:g}")
    log_path, latest = os.path.join(out_dir, "log.jsonl"), os.path.join(out_dir, "ckpt_latest.pt")
    sharded = cfg.parallel == "fsdp"
    if rt.master:
        restore_set_aside(out_dir)
    if rt.world_size > 1:
        dist.barrier()
    folder = run_folder(out_dir, cfg.resume)  # every rank decides before rank 0 writes (the barrier below)
    resume = folder == "resume"
    if resume and os.path.isdir(latest) != sharded:
        raise TrainError(f"the run in {out_dir} wrote {'sharded' if os.path.isdir(latest) else 'single-file'} "
                         f"checkpoints: resume it with --parallel {'fsdp' if os.path.isdir(latest) else 'ddp'}"
                         f"{' (on any number of processes)' if os.path.isdir(latest) else ''}")
    if rt.master and folder == "restart":
        print(f"note: {out_dir} holds a run killed before its first checkpoint: starting it again", file=sys.stderr)
    data_dir = cfg.data_dir
    if rt.master and os.path.abspath(data_dir) == data.DEFAULT_DATA_DIR \
            and not os.path.exists(os.path.join(data_dir, "meta.json")):  # `python train.py` on a fresh machine
        print(f"no dataset at {data_dir}: preparing the default one first (python data.py), once")
        data.prepare(data_dir, **data.DEFAULT_PREPARE)
    if rt.world_size > 1:
        dist.barrier()  # rank 0 may have prepared the default dataset
    meta = data.load_meta(data_dir)
    check_memory(cfg, model_config(cfg, meta["vocab_size"]), rt)

    model = build_model(cfg, meta["vocab_size"])
    seq_len = model.cfg.seq_len
    ckpt, start_step, mixture_step0, tokens_offset, general_start = None, 0, 0, 0, 0
    if resume:
        ckpt = load_checkpoint(latest)
        if "mixture" not in ckpt:
            raise TrainError(f"{latest} holds weights only (a milestone's), not the optimizer and data position an "
                             f"exact resume needs: start a new run from it with --init_from in another --out_dir")
        before = ckpt["config"]
        changed = [k for k in RESUME_FIXED  # (a run from before a setting existed had its default)
                   if before.get(k, TrainConfig.__dataclass_fields__[k].default) != getattr(cfg, k)]
        if changed:
            was = ", ".join(f"{k}={before.get(k)}" for k in changed)
            raise TrainError(f"--resume with other {', '.join(changed)} than the run in {out_dir} ({was}): an "
                             f"exact resume needs the same data and schedule; --init_from starts a new run from it")
        if ckpt.get("dataset_id") != meta["dataset_id"]:
            raise TrainError(f"--resume on dataset {meta['dataset_id']} ({data_dir}), but the run in {out_dir} "
                             f"trained on {ckpt.get('dataset_id')}: give its --data_dir")
        if sharded:  # the shards are read once the model is sharded like this run's (load_training_state)
            check_shape(model, ckpt, latest)
        else:
            load_weights(model, ckpt, latest)
        start_step, mixture_step0, tokens_offset = ckpt["step"], ckpt["mixture_step0"], ckpt["tokens_offset"]
        general_start = ckpt["mixture"]["general_start"]
    elif cfg.init_from:
        # A new run from old weights: it continues the old run's token count, schedule position and
        # general data (so SCPT's last 10% sees no general window twice), with a fresh optimizer.
        init = load_checkpoint(cfg.init_from)
        check_vocabulary(init, meta, cfg.init_from, data_dir)
        load_weights(model, init, cfg.init_from)
        start_step = mixture_step0 = init["step"]
        tokens_offset = init["tokens"]
        general_start = init["general_position"]
    model.to(rt.device)
    mixture = data.Mixture(data_dir, cfg.domain_frac, cfg.batch_size, seq_len, cfg.seed, general_start=general_start,
                           first_step=mixture_step0, first_tokens=tokens_offset)
    tokens_per_step = cfg.batch_size * seq_len
    # Steps count from the start of the first run (an --init_from run continues its parent's count).
    total_steps = mixture_step0 + math.ceil((cfg.max_tokens - tokens_offset) / tokens_per_step)
    if total_steps <= start_step:
        if resume:
            raise TrainError(f"the run in {out_dir} is finished (--max_tokens {format_tokens(cfg.max_tokens)}): "
                             f"to train on, start a new run from its checkpoint with --init_from and a larger "
                             f"--max_tokens")
        raise TrainError(f"--max_tokens {format_tokens(cfg.max_tokens)} is already reached at step {start_step} "
                         f"of the run that wrote --init_from: raise it")
    milestones = {m: mixture_step0 + math.ceil((m - tokens_offset) / tokens_per_step)
                  for m in parse_milestones(cfg.ckpt_tokens) if tokens_offset < m <= cfg.max_tokens}
    model.act_ckpt = cfg.act_ckpt
    if sharded:
        shard_model(model, rt, compile_blocks=cfg.compile)
    optimizer = configure_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    if ckpt is not None:
        load_training_state(model, optimizer, ckpt, latest, average)
    if average:
        optimizer.register_step_post_hook(lambda *_: average.update())
    raw = model
    if cfg.compile and not sharded:
        model = torch.compile(model)
    if rt.world_size > 1 and not sharded:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    evaluate = make_evaluator(model, rt, data_dir, seq_len, cfg.eval_windows, cfg.eval_batch_size, average)

    def recovery():  # what a failed write leaves intact, and the command that goes on from there
        if os.path.exists(latest):
            return f"{latest} is intact", "rerun the same command with --resume"
        return "no checkpoint was written yet", "rerun the same command"

    log_metrics = None
    if rt.master:
        run_info = {**dataclasses.asdict(cfg), "out_dir": out_dir, "data_dir": data_dir,
                    "dataset_id": meta["dataset_id"], "model_config": raw.config_dict(),
                    "n_params": raw.num_params(), "domain_train_tokens": meta["splits"]["domain_train"]["tokens"],
                    "world_size": rt.world_size}
        with writes_in(out_dir, recovery):
            os.makedirs(out_dir, exist_ok=True)
            # log lines after the checkpoint go (all of them from step 0, which is evaluated again); first,
            # as a damaged log is refused before anything else is written
            filter_log(log_path, lambda r: start_step > 0 and r["step"] <= start_step)
            remove_temporary_files(out_dir)
            data.atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(run_info, f, indent=1),
                              mode="w")
            log_metrics = open_metrics(metrics_modules, cfg, out_dir, run_info)
        print(f"{raw.num_params() / 1e6:.2f}M parameters, {cfg.batch_size} x {seq_len} tokens per step, "
              f"{total_steps - start_step} steps on {rt.world_size} x {rt.device.type}, domain_frac {cfg.domain_frac}")

    def save(path, step, resumable):
        """A checkpoint of the run at `step`: resumable (ckpt_latest.pt: the weights, the optimizer state
        and the weight average) or a milestone's weights alone (with --ema the average's, which the evals
        measured and finetuning starts from)."""
        state = {"step": step, "mixture_step0": mixture_step0, "tokens_offset": tokens_offset,
                 "tokens": mixture.tokens(step), "general_position": mixture.position(step)["general"],
                 "model_config": raw.config_dict(), "config": dataclasses.asdict(cfg), "dataset_id": meta["dataset_id"]}
        with average.in_model() if average and not resumable else contextlib.nullcontext():
            tensors = {"model": raw.state_dict()}
            if resumable:
                state.update(mixture=mixture.state_dict(), rng=torch.get_rng_state())
                if sharded and optimizer.state:  # none before the first step (load_training_state)
                    tensors["optimizer"] = get_optimizer_state_dict(raw, optimizer)
                elif not sharded:
                    tensors["optimizer"] = optimizer.state_dict()
                if average:
                    tensors["ema"], state["ema_steps"] = average.weights, average.steps
            if sharded:
                save_sharded(path, tensors, state, rt)
            elif rt.master:
                save_checkpoint(path, {**tensors, **state})

    schedule = Schedule(cfg.schedule, cfg.lr, cfg.min_lr, cfg.warmup_steps, total_steps, cfg.horizon_mult,
                        cfg.decay_frac)
    milestone_steps = set(milestones.values())
    for record in train_loop(model, optimizer, schedule, mixture, range(start_step, total_steps), rt, evaluate,
                             lambda step: step % cfg.eval_interval == 0 or step in milestone_steps,
                             grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip, desc=f"pretrain d={cfg.domain_frac:g}"):
        step = record["step"]
        with writes_in(out_dir, recovery):
            if rt.master:  # the log line first: a resume drops lines past its checkpoint, never adds one
                append_jsonl(log_path, record)
                if log_metrics:
                    log_metrics(record)
            for tokens, milestone_step in milestones.items():
                if milestone_step == step:
                    save(os.path.join(out_dir, f"ckpt_{format_tokens(tokens)}.pt"), step, resumable=False)
            if cfg.ckpt_interval == 0 or step % cfg.ckpt_interval == 0 or step == total_steps:
                save(latest, step, resumable=True)
    if rt.master:
        print(f"done: log {log_path}, checkpoints {out_dir}/ckpt_*.pt")
    teardown_runtime(rt)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Command line: defaults < --config file < flags

def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def field_type(field):
    """The type behind a dataclass field's annotation, e.g. int for `int | None`."""
    if isinstance(field.type, types.UnionType):
        return next(t for t in field.type.__args__ if t is not type(None))
    return field.type


def integer(text: str) -> int:
    """An integer as people write it, 1000 or 1e3 (2.5 is refused, not cut to 2)."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def build_parser(config_cls, description: str) -> argparse.ArgumentParser:
    """One flag per config field, with the field's help and choices (see `setting`); `--k v` and `--k=v`
    both work; ints accept 1e6, token counts 1M; bools accept `--flag`, `--flag true` or `--flag=false`."""
    p = data.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="a JSON file of settings, under the flags (configs/ has presets)")
    for f in dataclasses.fields(config_cls):
        kind, meaning = field_type(f), dict(default=f.default, help=f.metadata["help"], choices=f.metadata["choices"])
        if kind is bool:
            p.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, metavar="true|false", **meaning)
        elif f.name.endswith("_tokens") and kind is not str:  # --max_tokens 2e6 or 2M
            meaning["help"] += f" (default: {format_tokens(f.default)})"
            p.add_argument(f"--{f.name}", type=data.token_count, **meaning)
        else:
            p.add_argument(f"--{f.name}", type=integer if kind is int else kind, **meaning)
    return p


def parse_config(config_cls, argv, description: str):
    parser = build_parser(config_cls, description)
    args = parser.parse_args(argv)
    if args.config:
        if not os.path.isfile(args.config):
            raise TrainError(f"--config {args.config} does not exist (presets live in configs/)")
        try:
            with open(args.config) as f:
                file_values = json.load(f)
        except ValueError as e:
            raise TrainError(f"--config {args.config} is not valid JSON ({e}): fix it (configs/ has examples)")
        if not isinstance(file_values, dict):
            raise TrainError(f"--config {args.config}: expected a JSON object of settings, like configs/gpu-124m.json")
        unknown = set(file_values) - {f.name for f in dataclasses.fields(config_cls)}
        if unknown:
            raise TrainError(f"{args.config}: unknown keys {sorted(unknown)}")
        # each value goes through its flag's type, as if typed, in a parser whose errors name the file
        file_parser = build_parser(config_cls, description)
        file_parser.prog = f"{parser.prog} --config {args.config}"
        typed = vars(file_parser.parse_args([f"--{k}={v}" for k, v in file_values.items() if v is not None]))
        parser.set_defaults(**{k: typed[k] for k in file_values})  # null: the default
        args = parser.parse_args(argv)
    return config_cls(**{k: v for k, v in vars(args).items() if k != "config"})


def main(argv=None):
    return pretrain(parse_config(TrainConfig, argv, __doc__))


if __name__ == "__main__":
    try:
        main()
    except (TrainError, data.DataError) as e:
        sys.exit(f"train.py: {e}")
