"""Finetuning on the domain: the last stage of both recipes, run identically after NPT and after SPT.

    python finetune.py --init out/d0.05/ckpt_1M.pt                    # the default 3 x 3 grid
    python finetune.py --init out/d0/ckpt_1M.pt --lr 1e-3,3e-3 --warmup 20
    python finetune.py --init out/d0/ckpt_1M.pt --replay 0.1          # 10% general tokens replayed
    torchrun --nproc_per_node 8 finetune.py --init out/1b/ckpt_200B.pt --lr 1e-5,4e-5,1e-4 --warmup 50,100,200

The paper's claim is about what happens *after* finetuning, so finetuning has to be the same for
every checkpoint and fair to each: a small grid of learning rates and warmups, every configuration
starting from the same checkpoint, and the best point over the grid reported. The protocol:

- Embeddings untied. Pretraining ties the input embedding and the output layer; finetuning gives
  the output layer its own copy (model.GPT.untie), so the two can move apart. The copy is exact,
  so the model computes the same function at step 0 (`pretrained` in the results is measured then).
- AdamW (0.9, 0.95), eps 1e-5, weight decay 1e-7 (practically none: a few epochs over a small set
  should not be pulled towards zero), gradient clipping 1.0, a fresh optimizer per configuration.
- Constant learning rate after a linear warmup: the learning rate at a step does not depend on the
  epoch cap, so a configuration that goes on past the cap (below) trains exactly as it would have
  under a larger cap.
- Domain data only, through the same data.Mixture as pretraining at domain_frac = 1; `--replay r`
  makes a share r of every batch general data, read from where pretraining stopped (so replayed
  tokens are new to the model), as in the paper's replay experiment.
- No fixed number of epochs: every eval interval we measure domain test loss (the metric), domain
  train loss (overfitting: train falls while test turns up) and general validation loss (forgetting).
  A configuration stops once the domain test loss has not improved for `patience` evals, or at
  `max_epochs`. Its best point is the eval with the lowest domain test loss; the general loss
  *at that point* is the forgetting the paper reports. A configuration that is the grid's best so
  far and still improving at `max_epochs` has not found its minimum yet: it goes on, max_epochs at
  a time, until it stops improving or reaches `extend_epochs`; if it is still improving there, its
  point is recorded as "unconverged" (finetune.json's best["converged"] is false), so that nobody
  mistakes a capped run for the protocol's answer. Selecting on test loss is what the paper
  does (there is no separate validation split); the same selection is applied to every run, so the
  comparison between NPT and SPT stays fair, but the absolute numbers are slightly optimistic.
- The best over the grid (including step 0, so finetuning can never be reported as hurting) is the
  number that enters R_gain, the compute multiplier (evaluate.py) and the laws (fit_laws.py).

Scaling the paper's grid down. The paper finetunes a 1B model at batch 512 x 2048 with LR
{1e-5, 4e-5, 1e-4} (1/40 to 1/4 of its pretraining peak 4e-4) and warmup {50, 100, 200} steps,
about 1/6 to 2/3 of an epoch of its 300M-token domain sets. Our default keeps those proportions
where they transfer and shifts the LR up where they do not: batch = pretraining batch / 4 (512 vs
2048), warmup {10, 20, 40} steps (a fraction of an epoch for the CPU miniature's ~50 steps per
epoch), and LR {0.1x, 0.3x, 1x} the checkpoint's pretraining peak (3e-4, 9e-4, 3e-3 for the
miniature). Small models take larger steps well, and a run of a few hundred steps from a model
that has seen only millions of tokens needs them to move at all; the paper's 1/40 would barely
finetune. Measured on the miniature (cpu-mini, 1M pretraining tokens, 40K tokens of ABC tunes):
1x was best at delta 0 and 0.1, 2x and 3x were worse, 0.3x close behind, and 0.1x still improving
at the 10-epoch cap; the grid stops at 1x because the pretraining peak is known to be stable.
Absolute values (`--lr 1e-5,4e-5,1e-4`) give the paper's grid as is.

Output, in out_dir (default: <checkpoint folder>/ft_<checkpoint name>/), which one process writes at a
time (a second finetune.py on it is refused in one line, settings.lock_folder):
- finetune.json, rewritten atomically at every eval: the pretrained losses, per configuration its
  curve, its best point and whether it finished, and the best over the grid. A rerun with the same
  out_dir and settings (the checkpoint's pretraining run included) skips finished configurations
  (they stay in the results, even if the new grid leaves them out) and reruns any that was
  interrupted, after removing what a kill left (temporary files, the interrupted configuration's log
  lines, a cut-off last line); other settings are refused, as is a damaged finetune.json. A
  configuration whose loss diverges ends as "diverged", keeping its best point before that, and the
  grid goes on.
- log.jsonl: train.py's log lines, plus ft_lr and ft_warmup naming the configuration.
- ckpt_best.pt with --save_best: the weights at the best point over the grid, loadable by
  evaluate.py (and by this script or train.py --init_from, like any checkpoint).
"""
import copy
import json
import math
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

import data
import processes
import run_folder
import settings
import train
from model import GPT
from processes import Runtime
from settings import setting

LOSS_KEYS = tuple(name for name, _ in train.LOSS_SPLITS)


@dataclass
class FinetuneConfig:
    init: str = setting("", "the checkpoint to finetune, a ckpt_<tokens>.pt (required)")
    out_dir: str = setting("", "results folder (default: <checkpoint folder>/ft_<checkpoint name>[_replay<r>])")
    data_dir: str = setting("", "dataset folder (default: the one the checkpoint was pretrained on)")
    # the grid
    lr: str = setting("0.1x,0.3x,1x", "learning rates of the grid, comma-separated; 0.3x is 0.3 times the "
                                            "checkpoint's pretraining peak")
    warmup: str = setting("10,20,40", "warmups of the grid in steps, comma-separated; 0.33e is a third of "
                                            "an epoch")
    replay: float = setting(0.0, "share of general sequences in every batch, read from where pretraining "
                                       "stopped")
    batch_size: int | None = setting(None, "sequences per step (default: the pretraining batch / 4, as "
                                                 "the paper's 512 vs 2048)")
    grad_accum: int | None = setting(None, "micro-batches per step (default: keeps pretraining's "
                                                 "micro-batch size, known to fit)")
    # AdamW (paper)
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-5, "AdamW epsilon")
    weight_decay: float = setting(1e-7, "AdamW weight decay (paper: practically none)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    # evaluation and early stopping
    eval_interval: int | None = setting(None, "steps between evals (default: eval_epochs of an epoch)")
    eval_epochs: float = setting(0.25, "epochs between evals, unless eval_interval is given")
    patience: int = setting(4, "evals without a new lowest domain test loss before a configuration stops")
    max_epochs: float = setting(10.0, "epoch cap of every configuration")
    extend_epochs: float = setting(40.0, "the grid's best, still improving at max_epochs, goes on up to this")
    eval_windows: int | None = setting(None, "fixed windows per split and eval (default: the pretraining "
                                                   "run's, so losses compare)")
    eval_batch_size: int | None = setting(None, "windows per forward pass of an eval (default: the "
                                                      "pretraining run's)")
    save_best: bool = setting(False, "keep the weights of the best point over the grid as ckpt_best.pt")
    seed: int = setting(0, "seed of the data order and of every configuration's start")
    # system
    device: str = setting("auto", "auto (a GPU if there is one), cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "compute dtype (auto: bf16 autocast on a GPU, fp32 on a CPU)",
                               choices=processes.DTYPES)
    compile: bool = setting(False, "torch.compile the model")


# What each numeric setting must be (settings.check_ranges applies them): pretraining's where they mean the same
RANGES = {
    **{name: train.RANGES[name] for name in ("beta1", "beta2", "eps", "weight_decay", "grad_clip", "seed",
                                             "batch_size", "grad_accum", "eval_interval", "eval_windows",
                                             "eval_batch_size")},
    "replay": (lambda v: 0 <= v < 1, "in [0, 1): the share of general sequences in a finetuning batch"),
    "max_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "extend_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "eval_epochs": (lambda v: 0 < v < math.inf, "a number of epochs > 0"),
    "patience": (lambda v: v >= 1, "a positive integer"),
}


class EarlyStopping:
    """Remembers the lowest value seen; says stop once `patience` values in a row were not lower."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_index, self.seen = patience, math.inf, -1, 0

    def update(self, value: float) -> bool:
        """Record the next value; True when it is time to stop."""
        if value < self.best:
            self.best, self.best_index = value, self.seen
        self.seen += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.seen - 1 - self.best_index >= self.patience


# ---------------------------------------------------------------------------------------------
# Settings: the grid, the batch, the eval interval

def grid_values(value) -> list[str]:
    """Grid values as strings: "1e-3,3e-3" from the command line, a list or one number from Python."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def parse_grid(cfg: FinetuneConfig, pretrain_lr: float, steps_per_epoch: float) -> list[tuple[float, int]]:
    """(lr, warmup) pairs, the highest lr first: it finishes soonest, and the bar it sets decides which
    slower configurations are worth extending past the epoch cap. "0.3x" is 0.3 times the pretraining peak LR (rounded to 12
    digits, so that 0.1 x 3e-3 is recorded as 3e-4, not 0.00030000000000000003); "0.33e" is a warmup
    of a third of an epoch, in steps."""
    try:
        lrs = [float(f"{float(s[:-1]) * pretrain_lr:.12g}") if s.endswith("x") else float(s)
               for s in grid_values(cfg.lr)]
        warmups = [round(float(s[:-1]) * steps_per_epoch) if s.endswith("e") else settings.integer(s)
                   for s in grid_values(cfg.warmup)]
    except ValueError:
        raise train.TrainError(f"--lr {cfg.lr!r} / --warmup {cfg.warmup!r}: give comma-separated numbers "
                               f"like --lr 3e-4,1e-3 (or 0.1x,1x of the pretraining LR) --warmup 10,20 (or "
                               f"0.33e, a third of an epoch)")
    if not lrs or not warmups:
        raise train.TrainError("the grid is empty: give at least one --lr and one --warmup")
    if not all(0 < lr < math.inf for lr in lrs) or min(warmups) < 0:
        raise train.TrainError(f"--lr must be numbers > 0 and --warmup integers >= 0 (got {lrs}, {warmups})")
    return [(lr, w) for lr in sorted(lrs, reverse=True) for w in warmups]


def batch_geometry(cfg: FinetuneConfig, pretraining: train.TrainConfig, world_size: int) -> tuple[int, int]:
    """(batch_size, grad_accum): by default a quarter of the pretraining batch, split into micro-
    batches no larger than pretraining's (which is known to fit in memory) and shared by the ranks."""
    batch = cfg.batch_size or max(1, pretraining.batch_size // 4)
    accum = cfg.grad_accum
    if accum is None:
        micro = max(1, pretraining.batch_size // pretraining.grad_accum)
        accum = world_size * math.ceil(math.ceil(batch / micro) / world_size)
    processes.check_geometry(batch, accum, world_size)
    return batch, accum


@dataclass
class Plan:
    """Everything derived from the config, the checkpoint and the data before any step is taken."""
    data_dir: str
    out_dir: str
    meta: dict
    grid: list
    batch_size: int
    grad_accum: int
    eval_interval: int
    eval_batch_size: int
    total_steps: int
    settings: dict  # what results depend on; a rerun must match it to reuse finished configurations


def make_plan(cfg: FinetuneConfig, ckpt: dict, pretraining: train.TrainConfig, world_size: int) -> Plan:
    """Check the inputs that depend on the checkpoint and the data (settings.check_ranges did the rest)
    and derive the grid's geometry. Raises before anything is written."""
    data_dir = cfg.data_dir or pretraining.data_dir
    meta = data.load_meta(data_dir)
    run_folder.check_vocabulary(ckpt, meta, cfg.init, data_dir)
    for _, split in train.LOSS_SPLITS:
        data.open_split(data_dir, split)  # a dataset without a domain fails here, in one line
    if ckpt["dataset_id"] != meta["dataset_id"]:
        print(f"note: {cfg.init} was pretrained on dataset {ckpt['dataset_id']}, finetuning on "
              f"{meta['dataset_id']} ({data_dir})", file=sys.stderr)
    batch, accum = batch_geometry(cfg, pretraining, world_size)
    seq_len = ckpt["model_config"]["seq_len"]
    domain_windows = (meta["splits"]["domain_train"]["tokens"] - 1) // seq_len
    steps_per_epoch = domain_windows / (batch * (1 - cfg.replay))
    grid = parse_grid(cfg, pretraining.lr, steps_per_epoch)
    if cfg.extend_epochs < cfg.max_epochs:
        raise train.TrainError(f"--extend_epochs {cfg.extend_epochs:g} is below --max_epochs {cfg.max_epochs:g}: "
                               f"it is how far the best configuration may go on past the cap")
    eval_interval = cfg.eval_interval or max(1, round(cfg.eval_epochs * steps_per_epoch))
    total_steps = max(1, math.ceil(cfg.max_epochs * steps_per_epoch))
    out_dir = cfg.out_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.init)),
                                          "ft_" + os.path.splitext(os.path.basename(cfg.init))[0]
                                          + (f"_replay{cfg.replay:g}" if cfg.replay else ""))
    pretraining_config = {k: v for k, v in ckpt["config"].items() if k != "resume"}  # a resumed run is the same run
    results_depend_on = {
        "pretrain_config": json.loads(json.dumps(pretraining_config)),  # which run wrote the checkpoint
        "pretrain_tokens": int(ckpt["tokens"]), "pretrain_step": ckpt["step"], "dataset_id": meta["dataset_id"],
        "batch_size": batch, "seq_len": seq_len, "eval_interval": eval_interval,
        "eval_windows": cfg.eval_windows or pretraining.eval_windows, "max_epochs": cfg.max_epochs,
        "extend_epochs": cfg.extend_epochs, "total_steps": total_steps,
        **{k: getattr(cfg, k) for k in ("replay", "beta1", "beta2", "eps", "weight_decay", "grad_clip", "patience",
                                        "seed", "save_best")}}
    return Plan(data_dir, out_dir, meta, grid, batch, accum, eval_interval,
                cfg.eval_batch_size or pretraining.eval_batch_size, total_steps, results_depend_on)


def previous_results(path: str, results_depend_on: dict) -> dict:
    """Finished configurations of an earlier attempt in the same out_dir, keyed by (lr, warmup), if it had
    the same settings (Plan.settings)."""
    if not os.path.exists(path):
        return {}
    try:  # written atomically, so only another program can have damaged it
        with open(path) as f:
            old = json.load(f)
        written_format, before = old.get("format"), old["settings"]
        finished = {(c["lr"], c["warmup"]): c for c in old["configs"] if c["finished"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise train.TrainError(f"{path} is damaged (not the JSON finetune.py writes): move it away to run the "
                               f"whole grid again, or pick another --out_dir")
    if written_format != run_folder.FORMAT:
        raise train.TrainError(f"{path} is of format {written_format or 'none'}, and this code writes format "
                               f"{run_folder.FORMAT}: move it away to run the whole grid again, or pick another "
                               f"--out_dir")
    diff = sorted(k for k in results_depend_on.keys() | before.keys() if results_depend_on.get(k) != before.get(k))
    if diff:
        raise train.TrainError(f"{path} was written with other settings ({', '.join(diff)}): "
                               f"use the same ones to resume, or another --out_dir")
    return finished


# ---------------------------------------------------------------------------------------------
# Results

def point_of(record: dict) -> dict:
    return {"step": record["step"], "epochs": record["domain_epochs"], **{k: record[k] for k in LOSS_KEYS}}


def best_over(configs) -> dict | None:
    """The point with the lowest domain test loss over all configurations, with its lr, warmup and
    whether its configuration converged (stopped early, not still improving at --extend_epochs)."""
    best = min(configs, key=lambda c: c["best"]["domain_test_loss"], default=None)
    return None if best is None else {"lr": best["lr"], "warmup": best["warmup"], **best["best"],
                                      "converged": best["stopped"] != "unconverged"}


def results_json(cfg: FinetuneConfig, ckpt: dict, plan: Plan, configs: list[dict]) -> dict:
    first = configs[0]["curve"][0]  # step 0 of any configuration: the checkpoint itself
    return {"format": run_folder.FORMAT, "init": cfg.init, "pretrain_tokens": int(ckpt["tokens"]),
            "model_config": ckpt["model_config"], "domain_frac": float(ckpt["config"]["domain_frac"]),
            "dataset_id": plan.meta["dataset_id"],
            "replay": cfg.replay, "pretrained": {k: first[k] for k in LOSS_KEYS},
            "best": best_over(configs), "configs": configs, "settings": plan.settings}


def save_results(path: str, results: dict):
    settings.atomic_write(path, lambda f: json.dump(results, f, indent=1), mode="w")


# ---------------------------------------------------------------------------------------------
# One configuration

def run_config(*, lr: float, warmup: int, cfg: FinetuneConfig, pretrained: GPT, plan: Plan, rt: Runtime,
               mixture: data.Mixture, best_so_far: float, on_progress) -> tuple[dict, dict | None]:
    """Finetune one (lr, warmup) from the pretrained model until early stopping or the epoch cap.

    on_progress(entry) receives the configuration's results after every eval. Returns the entry
    and, when it beat best_so_far, a CPU copy of the weights at its best point (else None)."""
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(pretrained).untie().to(rt.device)  # its own output layer: a copy, the same function
    optimizer = train.configure_optimizer(model, lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    schedule = train.Schedule("constant", lr, lr, warmup, plan.total_steps)
    wrapped = processes.wrap_model(model, rt, compile=cfg.compile)
    evaluate = train.make_evaluator(wrapped, rt, plan.data_dir, model.cfg.seq_len, plan.settings["eval_windows"],
                                    plan.eval_batch_size)
    stopper, curve, snapshot = EarlyStopping(cfg.patience), [], None
    entry = {"lr": lr, "warmup": warmup, "finished": False, "stopped": None, "best": None, "curve": curve}
    log_path = os.path.join(plan.out_dir, "log.jsonl")

    def train_steps(steps: range, desc: str):
        """Train over `steps`, recording every eval; returns early once the domain test loss stops improving."""
        nonlocal snapshot
        for record in train.train_loop(wrapped, optimizer, schedule, mixture, steps, rt, evaluate,
                                       lambda step: step % plan.eval_interval == 0, grad_accum=plan.grad_accum,
                                       grad_clip=cfg.grad_clip, desc=desc):
            curve.append(point_of(record))
            stopper.update(curve[-1]["domain_test_loss"])
            entry["best"] = curve[stopper.best_index]
            new_best = stopper.best_index == len(curve) - 1 and entry["best"]["domain_test_loss"] < best_so_far
            if cfg.save_best and rt.master and new_best:
                snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if rt.master:
                run_folder.append_jsonl(log_path, {**record, "ft_lr": lr, "ft_warmup": warmup})
            on_progress(entry)
            if stopper.stopped:
                return

    def improving():  # the grid's best so far
        return entry["best"]["domain_test_loss"] < best_so_far

    try:
        end, extend_to = plan.total_steps, math.ceil(plan.total_steps * cfg.extend_epochs / cfg.max_epochs)
        desc = f"finetune lr={lr:.3g} warmup={warmup}"
        train_steps(range(0, end), desc)
        # The grid's best so far, still improving at the cap, has not shown its best yet: it goes on,
        # max_epochs at a time, up to extend_epochs. Its learning rate is constant after warmup, so
        # these are the steps a run with a larger cap would have taken.
        while not stopper.stopped and improving() and end < extend_to:
            start, end = end, min(end + plan.total_steps, extend_to)
            train_steps(range(start, end), desc + ", extended")
        stopped = "early" if stopper.stopped else "unconverged" if improving() else "epoch_cap"
        entry.update(finished=True, stopped=stopped)
    except train.Diverged as e:  # too high a learning rate: its best point so far still counts
        print(f"lr={lr:g} warmup={warmup}: {e}; going on with the grid", file=sys.stderr)
        entry.update(finished=True, stopped="diverged")
    return entry, snapshot


def best_checkpoint(ckpt: dict, raw_state: dict, model_config: dict, dataset_id: str, init: str, point: dict) -> dict:
    """A checkpoint in train.py's format (pretraining config and tokens kept) plus what finetuning did."""
    return {"model": raw_state, "model_config": model_config, "config": ckpt["config"], "step": ckpt["step"],
            "tokens": ckpt["tokens"], "general_position": ckpt["general_position"], "dataset_id": dataset_id,
            "finetune": {"init": init, **point}}


# ---------------------------------------------------------------------------------------------

def finetune_grid(cfg: FinetuneConfig) -> dict:
    if not cfg.init:
        raise train.TrainError("give the checkpoint to finetune: --init out/<run>/ckpt_<tokens>.pt")
    settings.check_ranges(cfg, RANGES)
    rt = processes.setup_runtime(cfg.device, cfg.dtype)
    pretrained, ckpt = run_folder.load_model(cfg.init)  # read once; every configuration starts from a copy
    # the settings of the run that wrote the checkpoint
    pretraining = settings.config_from_dict(train.TrainConfig, ckpt["config"], f"{cfg.init}'s config")
    plan = make_plan(cfg, ckpt, pretraining, rt.world_size)
    if rt.master:  # one writer: a second finetune.py on this out_dir is refused before it reads the results
        settings.lock_folder(plan.out_dir)
    json_path, log_path = os.path.join(plan.out_dir, "finetune.json"), os.path.join(plan.out_dir, "log.jsonl")
    done = previous_results(json_path, plan.settings)
    mixture = data.Mixture(plan.data_dir, 1 - cfg.replay, plan.batch_size, plan.settings["seq_len"], cfg.seed,
                           general_start=ckpt["general_position"])

    results = dict(done)  # (lr, warmup) -> entry, finished ones first

    def on_progress(entry):  # every rank keeps the results; rank 0 writes them
        results[(entry["lr"], entry["warmup"])] = entry
        if rt.master:
            save_results(json_path, results_json(cfg, ckpt, plan, list(results.values())))

    def recovery():  # what a failed write leaves intact (every write but the log's appends is atomic)
        return f"{json_path} keeps the finished configurations", "rerun the same command"

    with run_folder.writes_in(plan.out_dir, recovery):  # results, log lines and ckpt_best.pt
        if rt.master:
            run_folder.remove_temporary_files(plan.out_dir)  # left by a kill
            print(f"finetuning {cfg.init} ({settings.format_tokens(ckpt['tokens'])} tokens, delta "
                  f"{pretraining.domain_frac:g}) on {plan.data_dir}: "
                  f"{len(plan.grid)} configs, batch {plan.batch_size} x {plan.settings['seq_len']}, eval every "
                  f"{plan.eval_interval} steps, at most {plan.total_steps} steps ({cfg.max_epochs:g} epochs)")
        for lr, warmup in tqdm(plan.grid, desc="grid", disable=not rt.master, dynamic_ncols=True):
            if (lr, warmup) in done:
                continue
            if rt.master:
                # an interrupted attempt at this configuration leaves lines behind: drop them
                run_folder.filter_log(log_path, lambda r: (r.get("ft_lr"), r.get("ft_warmup")) != (lr, warmup))
            best = best_over([c for c in results.values() if c["finished"]])
            entry, snapshot = run_config(lr=lr, warmup=warmup, cfg=cfg, pretrained=pretrained, plan=plan, rt=rt,
                                         mixture=mixture, best_so_far=best["domain_test_loss"] if best else math.inf,
                                         on_progress=on_progress)
            if snapshot is not None:  # saved before the configuration is recorded as finished
                model_config = {**ckpt["model_config"], "tie_embeddings": False}
                run_folder.save_checkpoint(os.path.join(plan.out_dir, "ckpt_best.pt"),
                                           best_checkpoint(ckpt, snapshot, model_config, plan.meta["dataset_id"],
                                                           cfg.init, {"lr": lr, "warmup": warmup, **entry["best"]}))
            on_progress(entry)
        final = results_json(cfg, ckpt, plan, list(results.values()))
        if rt.master:
            save_results(json_path, final)
            print_summary(final, json_path)
    processes.teardown_runtime(rt)
    return final


def print_summary(results: dict, path: str):
    pretrained, best = results["pretrained"], results["best"]
    print(f"pretrained: domain test {pretrained['domain_test_loss']:.4f}, general val "
          f"{pretrained['general_val_loss']:.4f}")
    for c in results["configs"]:
        b = c["best"]
        print(f"  lr {c['lr']:.3g} warmup {c['warmup']:>4}: best domain test {b['domain_test_loss']:.4f} at step "
              f"{b['step']} ({b['epochs']:.2f} epochs), general val there {b['general_val_loss']:.4f} [{c['stopped']}]")
    print(f"best: domain test {best['domain_test_loss']:.4f} (lr {best['lr']:.3g}, warmup {best['warmup']}, "
          f"{best['epochs']:.2f} epochs), forgetting: general val {pretrained['general_val_loss']:.4f} -> "
          f"{best['general_val_loss']:.4f}; {path}")


def main(argv=None):
    return finetune_grid(settings.parse_config(FinetuneConfig, argv, __doc__))


if __name__ == "__main__":
    try:
        main()
    except (train.TrainError, data.DataError) as e:
        sys.exit(f"finetune.py: {e}")
