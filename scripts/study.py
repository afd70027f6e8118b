"""The study: the paper's experiment end to end, from one command, with a report.

    python scripts/study.py --preset cpu-mini --jobs 2     # 2 CPU cores: two runs at a time
    python scripts/study.py --preset gpu-124m          # one GPU node (torchrun when >1 GPU)

Stages, each a plain call of one of the top-level scripts (so every step can be rerun by hand):
  1. prepare   data.py: the preset's general and domain sources -> a dataset folder
  2. pretrain  train.py: one run per domain_frac in the grid, checkpoints at token milestones
  3. finetune  finetune.py: every milestone checkpoint, the same grid with early stopping
  4. evaluate  evaluate.py: losses, bits per byte and the continuation task, before and after finetuning
  5. fit       fit_laws.py: the overfitting laws, forecasts and the recommended domain_frac
  6. report    results/<preset>/REPORT.md and its plots, built only from the files the stages wrote
The driver is restartable: finished runs are skipped, interrupted pretraining runs resume, and
finetune.py skips finished configurations. Presets live in configs/study/.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import evaluate  # noqa: E402
import fit_laws  # noqa: E402
import laws_report  # noqa: E402
import run_folder  # noqa: E402
import settings  # noqa: E402
from settings import format_tokens  # noqa: E402

NOISE = 0.01  # nats: smaller changes of a smoothed loss curve are not called a trend

PAPER = {  # the paper's headline numbers (200B tokens, OLMo-1B), for the report
    "r_gain": "MusicPile 2.0%, ProofPile 1.5%, ChemPile 0.8%",
    "multiplier": "1.75x (MusicPile), 1.56x (ProofPile), 1.40x (ChemPile)",
}


def run_command(cmd: list[str]):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_all(jobs: dict, n_parallel: int, log_dir: str):
    """Run the commands of `jobs` (name -> command): one after another in this terminal, or n_parallel
    at a time, each process on cores / n_parallel threads with its output in log_dir/<name>.txt. A tiny
    CPU model uses two cores far better as two runs than as two threads of one run."""
    if n_parallel == 1:
        for cmd in jobs.values():
            run_command(cmd)
        return
    os.makedirs(log_dir, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n_parallel))}

    def one(name):
        with open(os.path.join(log_dir, f"{name}.txt"), "w") as log:
            print("$ " + " ".join(jobs[name]), file=log, flush=True)  # as run_command() shows it in the terminal
            return name, subprocess.run(jobs[name], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode

    with ThreadPoolExecutor(n_parallel) as pool:
        for name, code in tqdm(pool.map(one, jobs), total=len(jobs), desc=f"{len(jobs)} jobs, {n_parallel} at a time"):
            if code != 0:  # the jobs already running finish; finished ones are kept for the rerun
                pool.shutdown(cancel_futures=True)
                sys.exit(f"study.py: {name} failed (exit {code}): see {os.path.join(log_dir, name + '.txt')}; "
                         f"rerun the same command once fixed, finished work is kept")


def python_launcher() -> list[str]:
    """torchrun over all GPUs when there is more than one, else a plain process."""
    import torch
    n = torch.cuda.device_count()
    if n > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    return [sys.executable]


def flags(options: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in options.items()]


def read_jsonl(path: str) -> list[dict]:
    """evaluate.py's results, one JSON object per line (written at once, never cut off)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# An arm is one pretraining run: (domain_tokens, delta, seed). The full arms use the preset's domain
# set (domain_tokens None) to its largest budget, every seed; the subset arms use nested subsets of it
# ("subsets": a quarter, an eighth, with the same test split) at the deltas that matter, up to the
# pilot budget only: with fewer unique tokens they reach the target's repeat counts, E = T delta / U,
# at a fraction of its tokens, and show where the domain starts to overfit (DESIGN.md).
Arm = namedtuple("Arm", "domain_tokens delta seed")


def arms(preset: dict) -> list[Arm]:
    seeds = preset.get("seeds", [0])
    return [Arm(None, d, s) for s in seeds for d in preset["deltas"]] + \
        [Arm(sub["domain_tokens"], d, s) for sub in preset.get("subsets", []) for s in seeds for d in sub["deltas"]]


def arm_name(arm: Arm) -> str:
    subset = "" if arm.domain_tokens is None else f"u{format_tokens(arm.domain_tokens)}_"
    return f"{subset}d{arm.delta:g}_s{arm.seed}"


def arm_milestones(preset: dict, arm: Arm) -> list[float]:
    return preset["milestones"] if arm.domain_tokens is None else [m for m in preset["milestones"]
                                                                    if m <= pilots_until(preset)]


def run_dir(out: str, arm: Arm) -> str:
    return os.path.join(out, "runs", arm_name(arm))


def ft_dir(out: str, arm: Arm, tokens: float) -> str:
    return os.path.join(out, "finetune", f"{arm_name(arm)}_{format_tokens(tokens)}")


def subset_dir(out: str, domain_tokens: int) -> str:
    return os.path.join(out, f"data_u{format_tokens(domain_tokens)}")


# ---------------------------------------------------------------------------------------------
# Stages

def prepare(preset: dict, out: str, data_dir: str | None) -> str:
    """The preset's dataset (or the one given), then each subset of its domain: the same sources, seed and
    held-out shares, a smaller --domain_tokens, so that the subsets nest and share the test split."""
    if not data_dir:
        data_dir = os.path.join(out, "data")
        if not os.path.exists(os.path.join(data_dir, "meta.json")):
            run_command([sys.executable, "data.py", f"--out={data_dir}", *flags(preset["data"])])
    meta = data.load_meta(data_dir)
    check_repeats(preset, meta["splits"]["domain_train"]["tokens"])
    same = {"general": meta["sources"]["general"], "domain": meta["sources"]["domain"], "tokenizer": meta["tokenizer"],
            "seed": meta["seed"], "val_frac": meta["val_frac"], "test_frac": meta["test_frac"],
            **({"general_tokens": meta["general_token_budget"]} if meta["general_token_budget"] else {})}
    for sub in preset.get("subsets", []):
        folder = subset_dir(out, sub["domain_tokens"])
        if not os.path.exists(os.path.join(folder, "meta.json")):
            run_command([sys.executable, "data.py", f"--out={folder}", *flags(same), f"--domain_tokens={sub['domain_tokens']:g}"])
    return data_dir


def check_repeats(preset: dict, domain_tokens: int):
    """The pilots must reach the repeat counts the check forecasts, or no law can see an onset there."""
    pilot, target = pilots_until(preset), max(preset["milestones"]) * max(preset["deltas"]) / domain_tokens
    reached = max([pilot * d / sub["domain_tokens"] for sub in preset.get("subsets", []) for d in sub["deltas"]]
                  + [pilot * max(preset["deltas"]) / domain_tokens])
    if reached < target:
        sys.exit(f"study.py: the pilots reach {reached:.3g} repeats of the domain set by {format_tokens(pilot)} tokens, "
                 f"the largest budget {target:.3g}: add a subset arm (\"subsets\": a smaller domain_tokens or a "
                 f"larger delta) that reaches it")


def pretrain(preset: dict, out: str, data_dir: str, n_parallel: int):
    jobs = {}
    for arm in sorted(arms(preset), key=lambda a: a.domain_tokens is not None):  # the longest runs first
        milestones = arm_milestones(preset, arm)
        options = {**preset["train"], "data_dir": data_dir if arm.domain_tokens is None else
                   subset_dir(out, arm.domain_tokens), "max_tokens": max(milestones),
                   "ckpt_tokens": ",".join(f"{m:g}" for m in milestones), "seed": arm.seed}
        folder = run_dir(out, arm)
        log_path = os.path.join(folder, "log.jsonl")
        log = run_folder.read_log(log_path) if os.path.exists(log_path) else []
        checkpoints = [os.path.join(folder, f"ckpt_{format_tokens(m)}.pt") for m in milestones]
        if log and log[-1]["tokens"] >= options["max_tokens"] and all(map(os.path.exists, checkpoints)):
            continue  # finished (train.py logs an eval before it writes that eval's checkpoints)
        resume = ["--resume"] if os.path.exists(os.path.join(folder, "ckpt_latest.pt")) else []
        jobs[f"pretrain_{arm_name(arm)}"] = python_launcher() + ["train.py", *flags(options), f"--domain_frac={arm.delta}",
                                                                 f"--out_dir={folder}", *resume]
    run_all(jobs, n_parallel, os.path.join(out, "logs"))


def finetune(preset: dict, out: str, n_parallel: int):
    jobs = {}
    for arm in arms(preset):
        for tokens in arm_milestones(preset, arm):
            ckpt = os.path.join(run_dir(out, arm), f"ckpt_{format_tokens(tokens)}.pt")
            folder = ft_dir(out, arm, tokens)
            # finetune.py itself skips the configurations a previous attempt finished (finetune.json
            # lists only those that started, so it cannot tell here whether the grid is complete)
            jobs[os.path.basename(folder)] = python_launcher() + ["finetune.py", f"--init={ckpt}", f"--out_dir={folder}",
                                                                  "--save_best", *flags(preset["finetune"])]
    run_all(jobs, n_parallel, os.path.join(out, "logs"))


def evaluated_checkpoints(preset: dict, out: str) -> dict:
    """delta -> (pretrained, finetuned) checkpoint of the last milestone of the first seed's full arm."""
    last, seed = max(preset["milestones"]), preset.get("seeds", [0])[0]
    return {d: (os.path.join(run_dir(out, Arm(None, d, seed)), f"ckpt_{format_tokens(last)}.pt"),
                os.path.join(ft_dir(out, Arm(None, d, seed), last), "ckpt_best.pt")) for d in preset["deltas"]}


def evaluate_checkpoints(preset: dict, out: str, data_dir: str) -> str:
    """Every checkpoint of evaluated_checkpoints, one JSON line each; rerun when the preset's deltas changed."""
    path = os.path.join(out, "eval.jsonl")
    ckpts = [c for pair in evaluated_checkpoints(preset, out).values() for c in pair]
    if not os.path.exists(path) or sorted(r["checkpoint"] for r in read_jsonl(path)) != sorted(ckpts):
        run_command([sys.executable, "evaluate.py", *ckpts, f"--data={data_dir}", f"--out={path}", *flags(preset["evaluate"])])
    return path


def pilots_until(preset: dict) -> float:
    """The largest milestone at most a quarter of the largest budget: the laws are fitted up to it."""
    pilots = [m for m in preset["milestones"] if m <= max(preset["milestones"]) / 4]
    if len(pilots) < 3:
        sys.exit(f"study.py: the preset needs 3 or more milestones at <= 1/4 of its largest budget (the pilots the "
                 f"laws are fitted on), has {len(pilots)}")
    return max(pilots)


def fit(preset: dict, out: str) -> str:
    path = os.path.join(out, "fit", "fit_results.json")
    runs = [run_dir(out, arm) for arm in arms(preset)]
    fts = [ft_dir(out, arm, t) for arm in arms(preset) for t in arm_milestones(preset, arm)]
    run_command([sys.executable, "fit_laws.py", *runs, "--finetune", *fts, f"--out={path}",
                 f"--fit_until={pilots_until(preset):g}", "--rolling", *flags(preset["fit"])])
    return path


# ---------------------------------------------------------------------------------------------
# Report: every number below is read from the files the stages wrote.

def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def dataset_line(meta: dict) -> str:
    """Which dataset, and the exact packages it was read from: Debian's point releases change the text."""
    packages = ", ".join(f"{p['package']} {p['version']} ({p['registry']}, sha256 {p['sha256'][:12]})"
                         for p in meta["packages"]) or "local or hosted files"
    missing = "".join(f"; without {part} ({why})" for parts in meta["missing"].values() for part, why in parts.items())
    return (f"Dataset `{meta['dataset_id']}` ({meta['sources']['general']} + {meta['sources']['domain']}, "
            f"{meta['tokenizer']} tokens), read from {packages}{missing}.")


def load_study(preset: dict, out: str) -> dict:
    """Every arm's log and finetune.json files; for the whole set, per (delta, tokens), one record of the
    seed means ("after": each seed's loss after finetuning), which the tables below read."""
    logs = {arm: run_folder.read_log(os.path.join(run_dir(out, arm), "log.jsonl")) for arm in arms(preset)}
    fts = {}
    for arm in arms(preset):
        for t in arm_milestones(preset, arm):
            with open(os.path.join(ft_dir(out, arm, t), "finetune.json")) as f:
                fts[(arm, t)] = json.load(f)
    seeds = preset.get("seeds", [0])
    merged = {}
    for d in preset["deltas"]:
        for t in preset["milestones"]:
            runs = [fts[(Arm(None, d, s), t)] for s in seeds]
            mean = {part: {k: float(np.mean([r[part][k] for r in runs])) for k in ("domain_test_loss", "general_val_loss")}
                    for part in ("pretrained", "best")}
            mean["best"].update(epochs=float(np.mean([r["best"]["epochs"] for r in runs])), lr=runs[0]["best"]["lr"],
                                converged=all(r["best"].get("converged", True) for r in runs))
            merged[(d, t)] = {**mean, "after": [r["best"]["domain_test_loss"] for r in runs]}
    return {"logs": {d: logs[Arm(None, d, seeds[0])] for d in preset["deltas"]}, "ft": merged, "arm_logs": logs,
            "arm_ft": fts}


def overfitting(log: list[dict], window: int = 5) -> dict:
    """Where the pretraining domain test loss bottomed out and where it ended, on a trailing mean of
    `window` evals: single evals of a small model at an un-annealed LR jump by a few hundredths. Their
    jitter: the median change from one eval to the next over the last third of the run, unsmoothed."""
    points = [r for r in log if r["tokens"] > 0]
    window = max(1, min(window, len(points) // 2))
    test = np.array([r["domain_test_loss"] for r in points])
    gap = np.array([r["domain_test_loss"] - r["domain_train_loss"] for r in points])
    smooth = np.convolve(test, np.ones(window) / window, mode="valid")  # smooth[i] ends at eval i + window - 1
    best = int(np.argmin(smooth))
    return {"min_tokens": points[best + window - 1]["tokens"], "min_loss": float(smooth[best]),
            "final_loss": float(smooth[-1]), "rise": float(smooth[-1] - smooth[best]),
            "recent_change": float(smooth[-1] - smooth[-1 - window]) if len(smooth) > window else float("nan"),
            "final_gap": float(gap[-window:].mean()), "final_epochs": points[-1]["domain_epochs"], "window": window,
            "jitter": float(np.median(np.abs(np.diff(test[len(test) * 2 // 3:]))))}


def plots(study: dict, deltas: list, milestones: list, results_dir: str) -> list[str]:
    """The paper's figure types from the run folders: pretraining curves; the domain loss after finetuning
    against pretraining tokens, with each delta's compute multiplier drawn as the horizontal gap to where
    it reaches NPT's loss at the largest budget; forgetting: general against domain loss after finetuning."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = dict(zip(deltas, plt.cm.viridis(np.linspace(0, 0.9, len(deltas)))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for d, log in study["logs"].items():
        pts = [r for r in log if r["tokens"] > 0]
        t = [r["tokens"] for r in pts]
        axes[0].plot(t, [r["domain_test_loss"] for r in pts], color=colors[d], label=f"delta {d:g}")
        axes[0].plot(t, [r["domain_train_loss"] for r in pts], ls=":", color=colors[d])
        axes[1].plot(t, [r["general_val_loss"] for r in pts], color=colors[d], label=f"delta {d:g}")
    axes[0].set(xscale="log", xlabel="pretraining tokens", ylabel="domain loss (nats per token)",
                title="pretraining: domain test (solid) and train (dotted) loss")
    axes[1].set(xscale="log", xlabel="pretraining tokens", ylabel="general validation loss", title="general loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "pretraining.png"), dpi=110)
    plt.close(fig)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ft, last = study["ft"], max(milestones)
    for d in deltas:
        ax.plot(milestones, [ft[(d, t)]["best"]["domain_test_loss"] for t in milestones], "o-", color=colors[d],
                label=f"delta {d:g}" + (" (NPT)" if d == 0 else ""))
        ax2.plot([ft[(d, t)]["best"]["domain_test_loss"] for t in milestones],
                 [ft[(d, t)]["best"]["general_val_loss"] for t in milestones], "o-", color=colors[d], label=f"delta {d:g}")
    if 0 in deltas:
        target = ft[(0, last)]["best"]["domain_test_loss"]
        ax.axhline(target, color="gray", lw=0.8, ls="--", label="NPT -> FT at the largest budget")
        npt = [(t, ft[(0, t)]["best"]["domain_test_loss"]) for t in milestones]
        for row, d in enumerate(d for d in deltas if d > 0):
            mult = evaluate.compute_multiplier(npt, [(t, ft[(d, t)]["best"]["domain_test_loss"]) for t in milestones])
            if mult:
                ax.annotate("", xy=(last / mult, target), xytext=(last, target),
                            arrowprops=dict(arrowstyle="->", color=colors[d]))
                # one row of labels per delta: arrow tips that land close together stay readable
                ax.annotate(f"{mult:.2f}x", xy=(last / mult, target), xytext=(2, 3 + 9 * row),
                            textcoords="offset points", color=colors[d], fontsize=8)
    ax.set(xscale="log", xlabel="pretraining tokens", ylabel="domain test loss after finetuning",
           title="after finetuning; arrows: the compute multiplier")
    ax2.set(xlabel="domain test loss after finetuning", ylabel="general validation loss after finetuning",
            title="forgetting: each point a finetuned checkpoint")
    ax.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "finetuning.png"), dpi=110)
    plt.close(fig)
    return ["pretraining.png", "finetuning.png"]


GOAL_REGRET = 0.5  # %, against seed means; each forecast's goal is fit_laws.GOAL_ERROR_PCT or 2 standard errors


def whole_set_means(fit_results: dict, delta: float) -> dict:
    """tokens -> the seed mean of delta's losses after finetuning, on the whole domain set."""
    by = {}
    for p in fit_results["finetunes"]:
        if p["delta"] == delta and p["domain_tokens"] == fit_results["domain_tokens"]:
            by.setdefault(p["tokens"], []).append(p["after"])
    return {t: float(np.mean(v)) for t, v in sorted(by.items())}


def why_missed(fit_results: dict, budget: dict, by: str) -> str:
    """The delta with the largest error: from its last pilot, how far the measured loss after finetuning
    (seed means) and the forecast moved, and whether the measured one turned up after the pilots."""
    worst = max(budget["rows"], key=lambda r: abs(r["error_pct"][by]))
    means, last = whole_set_means(fit_results, worst["delta"]), max(fit_results["check"]["pilot_budgets"])
    pilot = means[max(t for t in means if t <= last)]
    measured, forecast = worst["measured_after"], worst["forecast"][by]
    why = (f"from its last pilot ({laws_report.approx(last)} tokens: {pilot:.4f} after finetuning) the measured "
           f"loss moved {measured - pilot:+.4f} to {measured:.4f}, the forecast {forecast - pilot:+.4f} to {forecast:.4f}")
    low = min((t for t in means if t < budget["tokens"]), key=means.get)
    if means[low] < measured:
        why += f"; the measured loss turned up after {laws_report.approx(low)} tokens ({means[low]:.4f})"
    if worst["unobserved"]:
        why += (f"; at {worst['repeats']:.3g} repeats it is further past the onset than any pilot reached "
                f"(onset not observed)")
    s = budget["summary"][by]
    if s["regret_pct"] > GOAL_REGRET:  # the pick against the best measured: forecast and measured margins
        row = {r["delta"]: r for r in budget["rows"]}
        pick, best = row[s["recommended"]], row[budget["best_measured"]]
        margin = 100 * (pick["forecast"][by] - best["forecast"][by]) / best["forecast"][by]
        noise = "within" if s["tie"] == best["delta"] else "beyond"
        why += (f"; the forecast put delta {pick['delta']:g} {margin:+.2f}% against {best['delta']:g} ({noise} its own "
                f"noise), the runs measured it {s['regret_pct']:+.2f}%")
    return (f"- Why the goals were missed here: the largest error is at delta {worst['delta']:g} "
            f"({worst['error_pct'][by]:+.2f}%); {why}.")


def forecast_section(fit_results: dict, preset: dict) -> list[str]:
    """The study's verdict: the laws fitted on the pilots alone, their forecasts against the seed means."""
    check, by, p = fit_results["check"], fit_results["check"]["by"], fit_results["check"]["penalty"]
    subsets = ", ".join(f"{s['domain_tokens']:,} tokens at deltas {', '.join(f'{d:g}' for d in s['deltas'])}"
                        for s in preset.get("subsets", [])) or "none"
    lines = ["## The forecast check", "",
             f"The laws were fitted on the pilots only: the runs and finetunes at {check['scope']} tokens of the whole "
             f"domain set ({fit_results['domain_tokens']:,} tokens) and of its subset arms ({subsets}), every seed. "
             f"They were then asked for the domain test loss after finetuning at each larger budget of the whole set, "
             f"which the runs measured on seeds {', '.join(map(str, preset.get('seeds', [0])))} (the seed mean, "
             f"+- its standard error). {laws_report.choice_line(check)}. The repeat penalty fitted on the pilots places "
             f"the onset at {p['e0']:.3g} repeats of the whole set (E0_U = E0 (U / U_full)^{p['kappa']:.2f}, "
             f"penalty {p['c']:.3g} d^{p['gamma']:.2f} ln(E / E0_U)^2); the pilots reached {check['reach']:.3g}x their "
             f"onset. Goals: regret <= {GOAL_REGRET}%; every forecast within max({fit_laws.GOAL_ERROR_PCT:g}%, 2 standard "
             f"errors). Error = 100 (forecast - measured) / measured.", ""]
    pilots = max(check["pilot_budgets"])
    for b in sorted(check["budgets"], key=lambda b: -b["tokens"]):  # the largest budget first: the headline
        keys = [by] + [k for k in fit_laws.AFTER if k != by]
        rows = [[f"{r['delta']:g}", f"{r['repeats']:.3g}" + (" (onset not observed)" if r["unobserved"] else ""),
                 laws_report.measured(r) + f" ({len(r['seeds'])})",
                 f"{max(fit_laws.GOAL_ERROR_PCT, 200 * (r['se_after'] or 0) / r['measured_after']):.2f}%"]
                + [f"{r['forecast'][k]:.4f} ({r['error_pct'][k]:+.2f}%)" + ("" if r["within"][k] else " *") for k in keys]
                + [f"{r['measured_before']:.4f}", f"{r['forecast']['law']:.4f} ({r['error_pct']['law']:+.2f}%)"]
                for r in b["rows"]]
        lines += [f"At {laws_report.approx(b['tokens'])} tokens ({b['tokens'] / pilots:.0f}x the pilots):", ""]
        lines += table(["delta", "repeats", "measured after FT (seeds)", "goal"]
                       + [f"forecast: {laws_report.LABEL[k]}" for k in keys]
                       + ["measured before FT", "forecast: paper's law"], rows) + [""]
        s = b["summary"][by]
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:+.2f}"
        tie = f" (a tie with {s['tie']:g}: their difference is within the forecast's own noise)" if s["tie"] is not None else ""
        lines += [f"- {laws_report.LABEL[by]}: recommends delta = {s['recommended']:g}{tie} (least expected regret "
                  f"over the bootstrap); the best measured is {b['best_measured']:g}; regret {s['regret_pct']:.2f}% "
                  f"({'met' if s['regret_pct'] <= GOAL_REGRET else 'not met'}: goal <= {GOAL_REGRET}%); "
                  f"{s['within']} of {len(b['rows'])} forecasts within their goal "
                  f"({'met' if s['within'] == len(b['rows']) else 'not met'}; * marks the others); largest error "
                  f"{s['max_abs_error_pct']:.2f}%; Spearman rank agreement {rho}."]
        if s["regret_pct"] > GOAL_REGRET or s["within"] < len(b["rows"]):
            lines += [why_missed(fit_results, b, by)]
        lines += [f"- {laws_report.LABEL[k]}: recommends {v['recommended']:g}, regret {v['regret_pct']:.2f}%, "
                  f"{v['within']} of {len(b['rows'])} within, largest error {v['max_abs_error_pct']:.2f}%."
                  for k, v in b["summary"].items() if k != by]
        lines += [f"- Seeds missing: {'; '.join(b['missing_seeds'])} (the mean is of those there)."] if b["missing_seeds"] else []
        lines += [""]
    if fit_results.get("rolling"):
        lines += ["Rolling origins: the same check fitted up to each budget (the subset arms too), forecasting every "
                  "budget up to 4x larger, by the forecast that recommends there:", ""]
        lines += table(["fitted up to", "forecast at", "recommends by", "recommends", "best measured", "regret",
                        "within goal", "largest error"],
                       [[laws_report.approx(r["origin"]), laws_report.approx(r["tokens"]), laws_report.LABEL[r["by"]],
                         f"{r['recommended']:g}" + (f" (tie: {r['tie']:g})" if r["tie"] is not None else ""),
                         f"{r['best_measured']:g}", f"{r['regret_pct']:.2f}%", f"{r['within']} of {r['deltas']}",
                         f"{r['max_abs_error_pct']:.2f}%"] for r in fit_results["rolling"]]) + [""]
    return lines + ["![forecast check](fit_results_check.png)", ""]


def subsets_section(study: dict, preset: dict, fit_results: dict, out: str) -> list[str]:
    """The subset arms: how far they repeated their domain set, where their pretrained domain test loss
    turned up, and their losses after finetuning (seed means) beside the whole set's at the same delta."""
    if not preset.get("subsets"):
        return []
    pilots = [m for m in preset["milestones"] if m <= pilots_until(preset)]
    lines = ["## Subset arms: where repeating the domain set starts to overfit", "",
             "Pilots on nested subsets of the domain set (the same test split) repeat it as often by the pilot budget "
             "as the whole set is repeated at the target. Pretrained: the smoothed domain test loss of the first seed "
             "(its minimum and the rise past it); after finetuning: the seed mean at each pilot budget.", ""]
    rows = []
    for arm in (a for a in arms(preset) if a.seed == preset.get("seeds", [0])[0]):
        o = overfitting(study["arm_logs"][arm])
        size = next(r["domain_tokens"] for r in fit_results["runs"] if r["path"] == run_dir(out, arm))
        after = [np.mean([study["arm_ft"][(a, t)]["best"]["domain_test_loss"] for a in arms(preset)
                          if (a.domain_tokens, a.delta) == (arm.domain_tokens, arm.delta)]) for t in pilots]
        if arm.delta > 0:
            rows.append([f"{size:,}", f"{arm.delta:g}", f"{o['final_epochs']:.3g}",
                         f"{o['min_tokens'] * arm.delta / size:.3g}", f"{o['min_loss']:.4f}", f"{o['rise']:+.4f}",
                         *(f"{a:.4f}" for a in after)])
    lines += table(["U (tokens)", "delta", "E at the end", "min at E", "min (smoothed)", "rise past it",
                    *(f"after FT @ {format_tokens(t)}" for t in pilots)], rows) + [""]
    return lines + ["![every run against its repeats](fit_results_repeats.png)", ""]


def write_report(preset_name: str, preset: dict, out: str, eval_path: str, fit_path: str, results_dir: str):
    os.makedirs(results_dir, exist_ok=True)
    study = load_study(preset, out)
    deltas, milestones = preset["deltas"], preset["milestones"]
    last = max(milestones)
    ft = study["ft"]
    best = {key: r["best"]["domain_test_loss"] for key, r in ft.items()}
    with open(os.path.join(run_dir(out, Arm(None, deltas[0], preset.get("seeds", [0])[0])), "config.json")) as f:
        run_info = json.load(f)
    with open(fit_path) as f:
        fit_results = json.load(f)
    lines = [f"# Study `{preset_name}`", "", preset.get("description", ""), "",
             f"Generated by `python scripts/study.py --preset {preset_name}` from the run folders it wrote. "
             f"Model {run_info['model']} ({run_info['n_params'] / 1e6:.2f}M parameters); delta = domain_frac; "
             f"NPT = delta 0 (no domain data in pretraining), SPT = delta > 0; E = repeats of the domain train split "
             f"({run_info['domain_train_tokens']:,} tokens).", "", dataset_line(data.load_meta(run_info["data_dir"])), ""]
    lines += forecast_section(fit_results, preset) + subsets_section(study, preset, fit_results, out)

    lines += ["## Domain test loss before and after finetuning", "",
              "Best post-finetuning domain test loss over the finetuning grid (the mean over the seeds, then each "
              "seed's), with the general validation loss at that point (forgetting) and the pretrained checkpoint's "
              "losses, means over the seeds. 'converged': every seed's best configuration stopped early (no: still "
              "improving where its epochs ran out).", ""]
    rows = [[f"{d:g}", format_tokens(t), f"{ft[(d, t)]['pretrained']['domain_test_loss']:.4f}",
             f"{best[(d, t)]:.4f}" + (f" ({', '.join(f'{a:.4f}' for a in ft[(d, t)]['after'])})"
                                      if len(ft[(d, t)]["after"]) > 1 else ""),
             f"{ft[(d, t)]['pretrained']['general_val_loss']:.4f}", f"{ft[(d, t)]['best']['general_val_loss']:.4f}",
             f"{ft[(d, t)]['best']['epochs']:.1f}", f"{ft[(d, t)]['best']['lr']:g}",
             "yes" if ft[(d, t)]["best"].get("converged", True) else "no"] for d in deltas for t in milestones]
    lines += table(["delta", "pretrain tokens", "dom test (pretrained)", "dom test (after FT)", "general (pretrained)",
                    "general (after FT)", "FT epochs at best", "FT lr", "converged"], rows) + [""]

    lines += ["## Relative gain and compute multiplier", "",
              "R_gain = 100 (L_NPT->FT - L_SPT->FT) / L_NPT->FT at each budget. The compute multiplier is how many "
              f"times fewer pretraining tokens SPT needs to match NPT->FT's best loss at {format_tokens(last)} tokens "
              "(interpolated between checkpoints; '-' when SPT's checkpoints do not bracket it).", ""]
    npt_points = [(t, best[(0, t)]) for t in milestones] if 0 in deltas else None
    rows = []
    for d in (d for d in deltas if d > 0 and npt_points):
        mult = evaluate.compute_multiplier(npt_points, [(t, best[(d, t)]) for t in milestones])
        rows.append([f"{d:g}", *[f"{evaluate.relative_gain(best[(0, t)], best[(d, t)]):+.2f}%" for t in milestones],
                     "-" if mult is None else f"{mult:.2f}x"])
    lines += table(["delta", *[f"R_gain @ {format_tokens(t)}" for t in milestones], "compute multiplier"], rows) + [""]
    lines += [f"Paper (OLMo-1B, 200B tokens): R_gain {PAPER['r_gain']}; compute multiplier {PAPER['multiplier']}.", ""]
    figures = plots(study, deltas, milestones, results_dir)
    lines += [f"![after finetuning and forgetting]({figures[1]})", ""]

    over = {d: overfitting(study["logs"][d]) for d in deltas}
    w = over[deltas[0]]["window"]
    lines += ["## Overfitting during pretraining", "",
              f"The pretraining domain test loss, as a trailing mean over {w} evals: its minimum, its value at the "
              f"end, how much it changed over the last {w} evals, and the train-test gap at the end (mean of the last "
              f"{w} evals). Jitter: the median change between consecutive evals (unsmoothed) over the last third of "
              f"the run, which the study's design aims to keep <= {NOISE} nats.", ""]
    rows = [[f"{d:g}", f"{o['final_epochs']:.1f}", format_tokens(o["min_tokens"]), f"{o['min_loss']:.4f}",
             f"{o['final_loss']:.4f}", f"{o['recent_change']:+.4f}", f"{o['final_gap']:+.4f}", f"{o['jitter']:.4f}"]
            for d, o in over.items()]
    lines += table(["delta", "E at end", "min at tokens", "min (smoothed)", "end (smoothed)",
                    f"change, last {w} evals", "test - train gap", "jitter"], rows) + [""]
    lines += [f"![pretraining curves]({figures[0]})", ""]

    evals = read_jsonl(eval_path)
    lines += ["## Downstream: the continuation task", "",
              f"Pick the true continuation of a held-out domain document among 4 (log-likelihood, raw and "
              f"length-normalised), {evals[0]['continuation']['n']} items, chance "
              f"{evals[0]['continuation']['chance']:.2f}. Checkpoints at {format_tokens(last)} tokens.", ""]
    by_checkpoint = {r["checkpoint"]: r for r in evals}
    rows = []
    for d, (pretrained, finetuned) in evaluated_checkpoints(preset, out).items():
        pretrained, finetuned = by_checkpoint[pretrained], by_checkpoint[finetuned]
        rows.append([f"{d:g}", f"{pretrained['continuation']['acc']:.3f}", f"{finetuned['continuation']['acc']:.3f}",
                     f"{finetuned['continuation']['acc_norm']:.3f}", f"{pretrained['domain_test_bpb']:.3f}",
                     f"{finetuned['domain_test_bpb']:.3f}"])
    lines += table(["delta", "acc (pretrained)", "acc (after FT)", "acc_norm (after FT)",
                    "dom test bits/byte (pretrained)", "(after FT)"], rows) + [""]

    lines += ["## Scaling laws", "", "The fits on every pilot and budget (the forecast check above refits them on the "
              "pilots alone):", "", "```", laws_report.format_report({**fit_results, "check": None, "rolling": None}),
              "```", ""]
    for plot in fit_results["plots"]:
        shutil.copy(plot, os.path.join(results_dir, os.path.basename(plot)))
        if not plot.endswith(("_check.png", "_repeats.png")):  # (shown above)
            lines += [f"![{os.path.basename(plot)}]({os.path.basename(plot)})", ""]

    lines += ["## The paper's claims, checked at this scale", ""] + claims(deltas, milestones, ft, best, over) + [""]
    unconverged = [f"delta {d:g} at {format_tokens(t)}" for (d, t), r in ft.items() if not r["best"].get("converged", True)]
    warnings = fit_results["warnings"] + ([f"finetuning did not converge (still improving at --extend_epochs): "
                                           f"{', '.join(unconverged)}"] if unconverged else [])
    lines += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["none"]) + [""]
    settings.atomic_write(os.path.join(results_dir, "REPORT.md"), lambda f: f.write("\n".join(lines)), mode="w")
    print(f"report: {os.path.join(results_dir, 'REPORT.md')}")


def claims(deltas, milestones, ft, best, over) -> list[str]:
    """The paper's three qualitative claims, answered from the numbers for every delta and budget."""
    if 0 not in deltas:
        return ["(no delta = 0 run: nothing to compare against)"]
    pairs = [(d, t) for d in deltas if d > 0 for t in milestones]
    wins = [(d, t) for d, t in pairs if best[(d, t)] < best[(0, t)]]
    forgets_less = [(d, t) for d, t in pairs
                    if ft[(d, t)]["best"]["general_val_loss"] < ft[(0, t)]["best"]["general_val_loss"]]

    def listed(items):
        return ", ".join(f"{d:g}@{format_tokens(t)}" for d, t in items) or "none"
    high = max(d for d in deltas if d > 0)
    o = over[high]
    return [
        f"- SPT beats NPT after finetuning (lower best domain test loss) in {len(wins)} of {len(pairs)} "
        f"(delta, budget) pairs; not in: {listed(sorted(set(pairs) - set(wins)))}.",
        f"- SPT forgets less (lower general loss after finetuning than NPT at the same budget) in {len(forgets_less)} "
        f"of {len(pairs)} pairs; not in: {listed(sorted(set(pairs) - set(forgets_less)))}.",
        f"- The highest delta ({high:g}, {o['final_epochs']:.1f} repeats at the end): its smoothed pretraining domain "
        f"test loss {'turned up' if o['rise'] > NOISE else 'did not turn up'} (it ended {o['rise']:+.4f} above its "
        f"minimum at {format_tokens(o['min_tokens'])} tokens; threshold {NOISE}), with a train-test gap of "
        f"{o['final_gap']:.3f} at the end.",
        f"- Against the paper (R_gain {PAPER['r_gain']} at 200B tokens): the sizes are not comparable at a scale "
        f"~1000x smaller, with a domain far from the general text and repeats reached in millions of tokens; the "
        f"directions are what this study checks.",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-mini", help="a name in configs/study/ or a JSON file")
    p.add_argument("--out_dir", default=None, help="run folders (default: out/study/<preset>)")
    p.add_argument("--results_dir", default=None, help="REPORT.md and plots (default: results/<preset>)")
    p.add_argument("--data_dir", default=None, help="an already prepared dataset instead of the preset's sources")
    p.add_argument("--jobs", type=int, default=1,
                   help="pretraining runs and finetunes at once on a CPU (2 on 2 cores: about twice as fast)")
    args = p.parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and python_launcher() != [sys.executable]):
        sys.exit(f"study.py: --jobs {args.jobs}: give 1 or more; more than 1 only where each run is one process")
    path = args.preset if args.preset.endswith(".json") else os.path.join(ROOT, "configs", "study", f"{args.preset}.json")
    if not os.path.exists(path):
        sys.exit(f"study.py: no preset {args.preset!r}: choose one of "
                 f"{', '.join(sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, 'configs', 'study'))))}")
    with open(path) as f:
        preset = json.load(f)
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.abspath(args.out_dir or os.path.join(ROOT, "out", "study", name))
    results_dir = os.path.abspath(args.results_dir or os.path.join(ROOT, "results", name))
    pilots_until(preset)  # a preset without pilots fails before any work
    try:  # one study per out_dir: a second one is refused before it starts anything
        settings.lock_folder(out)
    except settings.TrainError as e:
        sys.exit(f"study.py: {e}")
    data_dir = prepare(preset, out, args.data_dir and os.path.abspath(args.data_dir))
    pretrain(preset, out, data_dir, args.jobs)
    finetune(preset, out, args.jobs)
    eval_path = evaluate_checkpoints(preset, out, data_dir)
    fit_path = fit(preset, out)
    write_report(name, preset, out, eval_path, fit_path, results_dir)


if __name__ == "__main__":
    main()
