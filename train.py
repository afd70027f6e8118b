"""Pretraining with a domain mixture: the loop that every experiment in this project runs.

    python train.py --domain_frac 0.05                   # the CPU miniature (--model cpu-mini), anywhere
    python train.py --config configs/gpu-124m.json --domain_frac 0.02 --out_dir out/d0.02   # 124M, one GPU
    torchrun --nproc_per_node 8 train.py --config configs/olmo-1b.json --domain_frac 0.05
    torchrun --nproc_per_node 8 train.py --config configs/olmo-3b.json --domain_frac 0.05 --parallel fsdp
    python train.py --out_dir out/d0.02 --resume          # continue an interrupted run exactly
    python train.py --init_from out/npt/ckpt_90M.pt --domain_frac 0.05 --max_tokens 100e6   # SCPT

Each optimizer step consumes one global batch of `batch_size` sequences from data.Mixture, of which
a `domain_frac` share are domain sequences. The global batch does not depend on the number of
processes: with N torchrun ranks each rank runs grad_accum / N micro-steps, so a run on 8 GPUs and
the same run on one process with accumulation see identical data and give the same losses. At every
eval the loop measures the general validation loss, the domain *train* loss and the domain *test*
loss (mean_loss, on the same windows every time) and appends one JSON line to out_dir/log.jsonl; the
gap between the last two is the overfitting that fit_laws.py models. ckpt_latest.pt (for --resume)
is written every ckpt_interval steps, and ckpt_<tokens>.pt, the weights that finetune.py and
evaluate.py start from, at each token milestone.

The file reads top to bottom: TrainConfig (every flag, its meaning and its default: the CPU
miniature's; a preset in configs/ sets a larger scale's), the optimizer, the learning rate Schedule,
the weight average, the losses of a log line, train_loop, and pretrain, which puts them together.
What lets the same loop run at scale and survive a kill lives beside it, to read afterwards:
processes.py (torchrun, DDP and FSDP2, the memory plan), run_folder.py (checkpoints, the log, what a
rerun does with a killed run's folder, which one process writes at a time) and settings.py
(TrainConfig's fields as flags). finetune.py reuses the optimizer, Schedule, mean_loss and train_loop,
evaluate.py the losses.
"""
import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
import processes
import run_folder
import settings
from model import GPT, PRESETS, GPTConfig, config_from_preset
from processes import Runtime
from settings import TrainError, setting

SCHEDULES = ("cosine_truncated", "constant")


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
                                                "x the run, stopped at its end; or constant", choices=SCHEDULES)
    lr: float = setting(3e-3, "peak learning rate")
    min_lr: float = setting(3e-4, "learning rate the cosine decays to")
    warmup_steps: int = setting(20, "steps of linear warmup to lr")
    horizon_mult: float = setting(10.0, "cosine_truncated: the cosine spans horizon_mult x the run (paper: 2T/200B)")
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
    dtype: str = setting("auto", "compute dtype (auto: bf16 autocast on a GPU, fp32 on a CPU)",
                         choices=processes.DTYPES)
    parallel: str = setting("ddp", "ddp: a replica of the model per process; fsdp: parameters, gradients and "
                                   "optimizer state sharded over them", choices=("ddp", "fsdp"))
    act_ckpt: bool = setting(False, "activation checkpointing: recompute each block in backward")
    memory_gb: float = setting(0.0, "memory per process the plan must fit (0: the GPU's own; on a CPU: no check)")
    compile: bool = setting(False, "torch.compile the model")
    init_from: str = setting("", "start from this checkpoint's weights, going on with its tokens, schedule and "
                                 "general data (SCPT)")
    resume: bool = setting(False, "continue the run in out_dir exactly, from its ckpt_latest.pt")


# What each numeric setting must be (settings.check_ranges applies them; finetune.py takes the ones it shares)
RANGES = {
    "domain_frac": (lambda v: 0 <= v < 1, "in [0, 1): the share of domain tokens in pretraining "
                                          "(finetune.py trains on the domain alone)"),
    "max_tokens": (lambda v: 0 < v < math.inf, "a token count > 0"),
    "lr": (lambda v: 0 < v < math.inf, "a number > 0"),
    "min_lr": (lambda v: 0 <= v < math.inf, "a number >= 0 (below 0 the schedule ends in gradient ascent)"),
    "horizon_mult": (lambda v: 1 <= v < math.inf, "a number >= 1: the cosine spans horizon_mult x the run"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: 0 < v < math.inf, "a number > 0"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "a number >= 0 (0: no clipping)"),
    "ema": (lambda v: 0 <= v < 1, "in [0, 1): the weight average's decay per step (0: none)"),
    "warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "ckpt_interval": (lambda v: v >= 0, "an integer >= 0 (0: at every eval)"),
    "memory_gb": (lambda v: 0 <= v < math.inf, "a number of GB >= 0 (0: the GPU's memory)"),
    **{name: (lambda v: v >= 1, "a positive integer") for name in (
        "batch_size", "grad_accum", "eval_interval", "eval_windows", "eval_batch_size",
        "n_layer", "n_head", "d_model", "d_ff", "seq_len")},
}


def check_config(cfg: TrainConfig):
    """Every setting, checked before anything is written, so that a bad value fails at once in one line:
    the ranges, then the relations between settings. (The flags' parser has checked types and choices,
    setup_runtime checks the device, check_geometry the batch split once the number of processes is known.)"""
    settings.check_ranges(cfg, RANGES)
    if cfg.ckpt_interval % cfg.eval_interval:
        raise TrainError(f"--ckpt_interval {cfg.ckpt_interval} is not a multiple of --eval_interval "
                         f"{cfg.eval_interval}: checkpoints are written at evals")
    if cfg.min_lr > cfg.lr:
        raise TrainError(f"--min_lr {cfg.min_lr:g} is above --lr {cfg.lr:g}: the schedule decays from lr to min_lr")
    seq_len = cfg.seq_len or PRESETS[cfg.model]["seq_len"]
    max_tokens = settings.format_tokens(cfg.max_tokens)
    if cfg.max_tokens < cfg.batch_size * seq_len:
        raise TrainError(f"--max_tokens {max_tokens} is less than one step ({cfg.batch_size} x {seq_len} tokens): "
                         f"raise it or lower --batch_size")
    beyond = [m for m in parse_milestones(cfg.ckpt_tokens) if m > cfg.max_tokens]
    if beyond:
        raise TrainError(f"--ckpt_tokens {settings.format_tokens(beyond[0])} is beyond --max_tokens {max_tokens}: "
                         f"the run never gets there; lower it or raise --max_tokens")


def parse_milestones(spec: str) -> list[int]:
    try:
        return sorted(settings.token_count(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise TrainError(f"--ckpt_tokens {spec!r}: give comma-separated token counts like 250K,1M or 250e3,1e6")


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "d_model", "d_ff", "seq_len", "norm")}
    return config_from_preset(cfg.model, vocab_size=vocab_size, **overrides)


def build_model(cfg: TrainConfig, vocab_size: int) -> GPT:
    try:
        return GPT(model_config(cfg, vocab_size))
    except ValueError as e:
        raise TrainError(str(e))


class Diverged(TrainError):
    """The training loss is no longer finite (finetune.py records it and goes on with its grid)."""


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule and weight average: shared with finetune.py

def configure_optimizer(model, lr, betas, eps, weight_decay):
    """AdamW with weight decay on matrices only (biases and norms, if any, are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


@dataclass(frozen=True)
class Schedule:
    """The learning rate at each step: a linear warmup over warmup_steps, then either
    cosine_truncated: the paper's cosine from lr to min_lr over horizon_mult x the run, stopped at
      the end of the run, so every checkpoint is nearly un-annealed and shorter budgets are simply
      earlier checkpoints of one run; or
    constant: lr (finetune.py's: a configuration can go on past its epoch cap as if the cap were larger)."""
    kind: str
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    horizon_mult: float = 10.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        horizon = self.total_steps * self.horizon_mult
        progress = min(1.0, (step - self.warmup_steps) / max(1.0, horizon - self.warmup_steps))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


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
        processes.reshard(self.model)
        own = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        for name, p in self.model.named_parameters():
            p.copy_(self.weights[name])
        try:
            yield
        finally:
            processes.reshard(self.model)
            for name, p in self.model.named_parameters():
                p.copy_(own[name])


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
    peak = processes.peak_flops(rt.device)
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
# A run: where it starts, what its checkpoints hold, and pretrain, which puts the pieces together

# What defines the data stream and the schedule: a resumed run must keep them.
RESUME_FIXED = ("domain_frac", "batch_size", "seq_len", "seed", "max_tokens", "schedule", "lr", "min_lr",
                "warmup_steps", "horizon_mult", "ema")


@dataclass
class Start:
    """Where a run starts. Steps and tokens count from the start of the first run: an --init_from run
    goes on with its parent's count, schedule and general data, its own data beginning at first_step."""
    step: int = 0  # the first step this run takes
    first_step: int = 0  # the Mixture's first step and tokens (see data.Mixture)
    first_tokens: int = 0
    general_start: int = 0  # general windows read before first_step
    latest: dict | None = None  # with --resume: ckpt_latest.pt, whose optimizer state loads once the model is wrapped


def resume_point(cfg: TrainConfig, resuming: bool, out_dir: str, meta: dict, model: GPT) -> Start:
    """Where the run starts: from out_dir's ckpt_latest.pt (`resuming`), from --init_from, or from scratch.
    Checks that it may (an exact resume needs the run's own data and schedule; a checkpoint, this model's
    shape and vocabulary) and loads the weights it starts from into `model` (a sharded run's once the model
    is sharded like it: run_folder.load_training_state)."""
    if resuming:
        latest = os.path.join(out_dir, "ckpt_latest.pt")
        ckpt = run_folder.load_checkpoint(latest)
        if "mixture" not in ckpt:
            raise TrainError(f"{latest} holds weights only (a milestone's), not the optimizer and data position an "
                             f"exact resume needs: start a new run from it with --init_from in another --out_dir")
        run = settings.config_from_dict(TrainConfig, ckpt["config"], f"{latest}'s config")
        changed = [k for k in RESUME_FIXED if getattr(run, k) != getattr(cfg, k)]
        if changed:
            was = ", ".join(f"{k}={getattr(run, k)}" for k in changed)
            raise TrainError(f"--resume with other {', '.join(changed)} than the run in {out_dir} ({was}): an "
                             f"exact resume needs the same data and schedule; --init_from starts a new run from it")
        if ckpt["dataset_id"] != meta["dataset_id"]:
            raise TrainError(f"--resume on dataset {meta['dataset_id']} ({cfg.data_dir}), but the run in {out_dir} "
                             f"trained on {ckpt['dataset_id']}: give its --data_dir")
        if cfg.parallel == "fsdp":
            run_folder.check_shape(model, ckpt, latest)
        else:
            run_folder.load_weights(model, ckpt, latest)
        return Start(ckpt["step"], ckpt["mixture_step0"], ckpt["tokens_offset"], ckpt["mixture"]["general_start"], ckpt)
    if cfg.init_from:
        # A new run from old weights: it continues the old run's token count, schedule position and
        # general data (so SCPT's last 10% sees no general window twice), with a fresh optimizer.
        init = run_folder.load_checkpoint(cfg.init_from)
        run_folder.check_vocabulary(init, meta, cfg.init_from, cfg.data_dir)
        run_folder.load_weights(model, init, cfg.init_from)
        return Start(init["step"], init["step"], init["tokens"], init["general_position"])
    return Start()


def save(path: str, step: int, *, resumable: bool, cfg: TrainConfig, model: GPT, optimizer,
         average: WeightAverage | None, mixture: data.Mixture, dataset_id: str, rt: Runtime):
    """A checkpoint of the run at `step`: resumable (ckpt_latest.pt: the weights, the optimizer state, the
    weight average, the data position and the random state) or a milestone's weights alone (with --ema
    the average's, which the evals measured and finetuning starts from)."""
    sharded = cfg.parallel == "fsdp"
    state = {"step": step, "mixture_step0": mixture.first_step, "tokens_offset": mixture.first_tokens,
             "tokens": mixture.tokens(step), "general_position": mixture.position(step)["general"],
             "model_config": model.config_dict(), "config": dataclasses.asdict(cfg), "dataset_id": dataset_id}
    with average.in_model() if average and not resumable else contextlib.nullcontext():
        tensors = {"model": model.state_dict()}
        if resumable:
            state.update(mixture=mixture.state_dict(), rng=torch.get_rng_state())
            tensors.update(run_folder.optimizer_state(model, optimizer, sharded))
            if average:
                tensors["ema"], state["ema_steps"] = average.weights, average.steps
        if sharded:
            run_folder.save_sharded(path, tensors, state, rt)
        elif rt.master:
            run_folder.save_checkpoint(path, {**tensors, **state})


def open_dataset(data_dir: str, rt: Runtime) -> dict:
    """The dataset's meta.json; `python train.py` on a fresh machine prepares the default dataset first, once."""
    if rt.master and os.path.abspath(data_dir) == data.DEFAULT_DATA_DIR \
            and not os.path.exists(os.path.join(data_dir, "meta.json")):
        print(f"no dataset at {data_dir}: preparing the default one first (python data.py), once")
        data.prepare(data_dir, **data.DEFAULT_PREPARE)
    if rt.world_size > 1:
        dist.barrier()  # rank 0 may have prepared the default dataset
    return data.load_meta(data_dir)


def pretrain(cfg: TrainConfig) -> str:
    check_config(cfg)
    metrics = run_folder.import_metrics(cfg.tensorboard, cfg.wandb)  # a missing package: one line, nothing written
    rt = processes.setup_runtime(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    processes.check_geometry(cfg.batch_size, cfg.grad_accum, rt.world_size)
    if rt.master and rt.device.type == "cuda" and cfg.model.startswith("cpu-"):  # the defaults are the CPU's
        print(f"note: training the CPU preset {cfg.model} on a GPU; the GPU's is --config configs/gpu-124m.json",
              file=sys.stderr)
    out_dir = cfg.out_dir or os.path.join("out", f"d{cfg.domain_frac:g}")
    log_path, latest = os.path.join(out_dir, "log.jsonl"), os.path.join(out_dir, "ckpt_latest.pt")
    meta = open_dataset(cfg.data_dir, rt)
    processes.check_memory(cfg, model_config(cfg, meta["vocab_size"]), rt)
    model = build_model(cfg, meta["vocab_size"])

    resuming = run_folder.will_resume(out_dir, cfg.resume, cfg.parallel == "fsdp", rt)  # locks out_dir: one writer
    start = resume_point(cfg, resuming, out_dir, meta, model)
    model.to(rt.device)
    seq_len = model.cfg.seq_len
    mixture = data.Mixture(cfg.data_dir, cfg.domain_frac, cfg.batch_size, seq_len, cfg.seed,
                           general_start=start.general_start, first_step=start.first_step,
                           first_tokens=start.first_tokens)
    tokens_per_step = cfg.batch_size * seq_len
    total_steps = start.first_step + math.ceil((cfg.max_tokens - start.first_tokens) / tokens_per_step)
    if total_steps <= start.step:
        if resuming:
            raise TrainError(f"the run in {out_dir} is finished (--max_tokens {settings.format_tokens(cfg.max_tokens)}"
                             f"): to train on, start a new run from its checkpoint with --init_from and a larger "
                             f"--max_tokens")
        raise TrainError(f"--max_tokens {settings.format_tokens(cfg.max_tokens)} is already reached at step "
                         f"{start.step} of the run that wrote --init_from: raise it")
    milestones = {m: start.first_step + math.ceil((m - start.first_tokens) / tokens_per_step)
                  for m in parse_milestones(cfg.ckpt_tokens) if start.first_tokens < m <= cfg.max_tokens}
    model.act_ckpt = cfg.act_ckpt
    wrapped = processes.wrap_model(model, rt, cfg.parallel, cfg.compile)  # what the loop calls
    optimizer = configure_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    if start.latest is not None:
        run_folder.load_training_state(model, optimizer, start.latest, latest, average)
    if average:
        optimizer.register_step_post_hook(lambda *_: average.update())
    evaluate = make_evaluator(wrapped, rt, cfg.data_dir, seq_len, cfg.eval_windows, cfg.eval_batch_size, average)

    recovery = functools.partial(run_folder.resume_advice, latest)  # what a failed write leaves intact
    log_metrics = None
    if rt.master:
        run_info = {**dataclasses.asdict(cfg), "out_dir": out_dir, "data_dir": cfg.data_dir,
                    "dataset_id": meta["dataset_id"], "model_config": model.config_dict(),
                    "n_params": model.num_params(), "domain_train_tokens": meta["splits"]["domain_train"]["tokens"],
                    "world_size": rt.world_size}
        with run_folder.writes_in(out_dir, recovery):
            run_folder.begin(out_dir, start.step, run_info)
            log_metrics = run_folder.open_metrics(metrics, cfg.wandb, out_dir, run_info)
        print(f"{model.num_params() / 1e6:.2f}M parameters, {cfg.batch_size} x {seq_len} tokens per step, "
              f"{total_steps - start.step} steps on {rt.world_size} x {rt.device.type}, domain_frac {cfg.domain_frac}")

    schedule = Schedule(cfg.schedule, cfg.lr, cfg.min_lr, cfg.warmup_steps, total_steps, cfg.horizon_mult)
    parts = dict(cfg=cfg, model=model, optimizer=optimizer, average=average, mixture=mixture,
                 dataset_id=meta["dataset_id"], rt=rt)  # what the run's checkpoints are made of
    milestone_steps = set(milestones.values())
    for record in train_loop(wrapped, optimizer, schedule, mixture, range(start.step, total_steps), rt, evaluate,
                             lambda step: step % cfg.eval_interval == 0 or step in milestone_steps,
                             grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip,
                             desc=f"pretrain d={cfg.domain_frac:g}"):
        step = record["step"]
        with run_folder.writes_in(out_dir, recovery):
            if rt.master:  # the log line first: a resume drops lines past its checkpoint, never adds one
                run_folder.append_jsonl(log_path, record)
                if log_metrics:
                    log_metrics(record)
            for tokens, milestone_step in milestones.items():
                if milestone_step == step:
                    save(os.path.join(out_dir, f"ckpt_{settings.format_tokens(tokens)}.pt"), step, resumable=False,
                         **parts)
            if cfg.ckpt_interval == 0 or step % cfg.ckpt_interval == 0 or step == total_steps:
                save(latest, step, resumable=True, **parts)
    if rt.master:
        print(f"done: log {log_path}, checkpoints {out_dir}/ckpt_*.pt")
    processes.teardown_runtime(rt)
    return out_dir


def main(argv=None):
    return pretrain(settings.parse_config(TrainConfig, argv, __doc__))


if __name__ == "__main__":
    try:
        main()
    except (TrainError, data.DataError) as e:
        sys.exit(f"train.py: {e}")
