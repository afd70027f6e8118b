"""The study: the paper's experiment end to end, from one command, with a report.

    python scripts/study.py --preset cpu-mini          # ~1 hour on 2 CPU cores
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

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import evaluate  # noqa: E402
from train import format_tokens  # noqa: E402

NOISE = 0.01  # nats: smaller changes of a smoothed loss curve are not called a trend

PAPER = {  # the paper's headline numbers (200B tokens, OLMo-1B), for the report
    "r_gain": "MusicPile 2.0%, ProofPile 1.5%, ChemPile 0.8%",
    "multiplier": "1.75x (MusicPile), 1.56x (ProofPile), 1.40x (ChemPile)",
}


def run(cmd: list[str]):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


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
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_dir(out: str, delta: float) -> str:
    return os.path.join(out, "runs", f"d{delta:g}")


def ft_dir(out: str, delta: float, tokens: float) -> str:
    return os.path.join(out, "finetune", f"d{delta:g}_{format_tokens(tokens)}")


# ---------------------------------------------------------------------------------------------
# Stages

def prepare(preset: dict, out: str, data_dir: str | None) -> str:
    if data_dir:
        return data_dir
    data_dir = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        run([sys.executable, "data.py", f"--out={data_dir}", *flags(preset["data"])])
    return data_dir


def pretrain(preset: dict, out: str, data_dir: str):
    options = {**preset["train"], "data_dir": data_dir,
               "ckpt_tokens": ",".join(f"{m:g}" for m in preset["milestones"])}
    for delta in preset["deltas"]:
        folder = run_dir(out, delta)
        log_path = os.path.join(folder, "log.jsonl")
        log = read_jsonl(log_path) if os.path.exists(log_path) else []
        milestones = [os.path.join(folder, f"ckpt_{format_tokens(m)}.pt") for m in preset["milestones"]]
        if log and log[-1]["tokens"] >= options["max_tokens"] and all(map(os.path.exists, milestones)):
            continue  # finished (train.py logs an eval before it writes that eval's checkpoints)
        resume = ["--resume"] if os.path.exists(os.path.join(folder, "ckpt_latest.pt")) else []
        run(python_launcher() + ["train.py", *flags(options), f"--domain_frac={delta}", f"--out_dir={folder}", *resume])


def finetune(preset: dict, out: str):
    for delta in preset["deltas"]:
        for tokens in preset["milestones"]:
            ckpt = os.path.join(run_dir(out, delta), f"ckpt_{format_tokens(tokens)}.pt")
            folder = ft_dir(out, delta, tokens)
            # finetune.py itself skips the configurations a previous attempt finished (finetune.json
            # lists only those that started, so it cannot tell here whether the grid is complete)
            run(python_launcher() + ["finetune.py", f"--init={ckpt}", f"--out_dir={folder}", "--save_best",
                                     *flags(preset["finetune"])])


def evaluated_checkpoints(preset: dict, out: str) -> dict:
    """delta -> (pretrained, finetuned) checkpoint of the last milestone."""
    last = max(preset["milestones"])
    return {d: (os.path.join(run_dir(out, d), f"ckpt_{format_tokens(last)}.pt"),
                os.path.join(ft_dir(out, d, last), "ckpt_best.pt")) for d in preset["deltas"]}


def evaluate_checkpoints(preset: dict, out: str, data_dir: str) -> str:
    """Every checkpoint of evaluated_checkpoints, one JSON line each; rerun when the preset's deltas changed."""
    path = os.path.join(out, "eval.jsonl")
    ckpts = [c for pair in evaluated_checkpoints(preset, out).values() for c in pair]
    if not os.path.exists(path) or sorted(r["checkpoint"] for r in read_jsonl(path)) != sorted(ckpts):
        run([sys.executable, "evaluate.py", *ckpts, f"--data={data_dir}", f"--out={path}", *flags(preset["evaluate"])])
    return path


def fit(preset: dict, out: str) -> str:
    path = os.path.join(out, "fit", "fit_results.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runs = [run_dir(out, d) for d in preset["deltas"]]
    fts = [ft_dir(out, d, t) for d in preset["deltas"] for t in preset["milestones"]]
    run([sys.executable, "fit_laws.py", *runs, "--finetune", *fts, f"--out={path}", *flags(preset["fit"])])
    return path


# ---------------------------------------------------------------------------------------------
# Report: every number below is read from the files the stages wrote.

def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def load_study(preset: dict, out: str) -> dict:
    logs = {d: read_jsonl(os.path.join(run_dir(out, d), "log.jsonl")) for d in preset["deltas"]}
    fts = {(d, t): json.load(open(os.path.join(ft_dir(out, d, t), "finetune.json")))
           for d in preset["deltas"] for t in preset["milestones"]}
    return {"logs": logs, "ft": fts}


def overfitting(log: list[dict], window: int = 5) -> dict:
    """Where the pretraining domain test loss bottomed out and where it ended, on a trailing mean of
    `window` evals: single evals of a small model at an un-annealed LR jump by several hundredths."""
    points = [r for r in log if r["tokens"] > 0]
    window = max(1, min(window, len(points) // 2))
    test = np.array([r["domain_test_loss"] for r in points])
    gap = np.array([r["domain_test_loss"] - r["domain_train_loss"] for r in points])
    smooth = np.convolve(test, np.ones(window) / window, mode="valid")  # smooth[i] ends at eval i + window - 1
    best = int(np.argmin(smooth))
    return {"min_tokens": points[best + window - 1]["tokens"], "min_loss": float(smooth[best]),
            "final_loss": float(smooth[-1]), "rise": float(smooth[-1] - smooth[best]),
            "recent_change": float(smooth[-1] - smooth[-1 - window]) if len(smooth) > window else float("nan"),
            "final_gap": float(gap[-window:].mean()), "final_epochs": points[-1]["domain_epochs"], "window": window}


def plot_pretraining(study: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for delta, log in study["logs"].items():
        pts = [r for r in log if r["tokens"] > 0]
        t = [r["tokens"] for r in pts]
        line, = axes[0].plot(t, [r["domain_test_loss"] for r in pts], label=f"delta={delta:g}")
        axes[0].plot(t, [r["domain_train_loss"] for r in pts], ls=":", color=line.get_color())
        axes[1].plot(t, [r["general_val_loss"] for r in pts], color=line.get_color(), label=f"delta={delta:g}")
    axes[0].set(xscale="log", xlabel="pretraining tokens", ylabel="domain loss",
                title="domain test (solid) and train (dotted) loss")
    axes[1].set(xscale="log", xlabel="pretraining tokens", ylabel="general validation loss", title="general loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(preset_name: str, preset: dict, out: str, eval_path: str, fit_path: str, results_dir: str):
    import fit_laws
    os.makedirs(results_dir, exist_ok=True)
    study = load_study(preset, out)
    deltas, milestones = preset["deltas"], preset["milestones"]
    last = max(milestones)
    ft = study["ft"]
    best = {key: r["best"]["domain_test_loss"] for key, r in ft.items()}
    run_config = json.load(open(os.path.join(run_dir(out, deltas[0]), "config.json")))
    lines = [f"# Study `{preset_name}`", "", preset.get("description", ""), "",
             f"Generated by `python scripts/study.py --preset {preset_name}` from the run folders it wrote. "
             f"Model {run_config['model']} ({run_config['n_params'] / 1e6:.2f}M parameters); delta = domain_frac; "
             f"E = repeats of the domain train split ({run_config['domain_train_tokens']:,} tokens).", ""]

    lines += ["## Domain test loss before and after finetuning", "",
              "Best post-finetuning domain test loss over the finetuning grid, with the general validation loss "
              "at that point (forgetting) and the pretrained checkpoint's losses.", ""]
    rows = []
    for d in deltas:
        for t in milestones:
            r = ft[(d, t)]
            rows.append([f"{d:g}", format_tokens(t), f"{r['pretrained']['domain_test_loss']:.4f}",
                         f"{r['best']['domain_test_loss']:.4f}", f"{r['pretrained']['general_val_loss']:.4f}",
                         f"{r['best']['general_val_loss']:.4f}", f"{r['best']['epochs']:.1f}",
                         f"{r['best']['lr']:g}"])
    lines += table(["delta", "pretrain tokens", "dom test (pretrained)", "dom test (after FT)",
                    "general (pretrained)", "general (after FT)", "FT epochs at best", "FT lr"], rows) + [""]

    lines += ["## Relative gain and compute multiplier", "",
              "R_gain = 100 (L_NPT->FT - L_SPT->FT) / L_NPT->FT at each budget. The compute multiplier is how many "
              f"times fewer pretraining tokens SPT needs to match NPT->FT's best loss at {format_tokens(last)} tokens "
              "(interpolated between checkpoints; '-' when SPT's checkpoints do not bracket it).", ""]
    npt_points = [(t, best[(0, t)]) for t in milestones] if 0 in deltas else None
    rows = []
    for d in deltas:
        if d == 0 or npt_points is None:
            continue
        gains = [f"{evaluate.relative_gain(best[(0, t)], best[(d, t)]):+.2f}%" for t in milestones]
        mult = evaluate.compute_multiplier(npt_points, [(t, best[(d, t)]) for t in milestones])
        rows.append([f"{d:g}", *gains, "-" if mult is None else f"{mult:.2f}x"])
    lines += table(["delta", *[f"R_gain @ {format_tokens(t)}" for t in milestones], "compute multiplier"], rows) + [""]
    lines += [f"Paper (OLMo-1B, 200B tokens): R_gain {PAPER['r_gain']}; compute multiplier {PAPER['multiplier']}.", ""]

    over = {d: overfitting(study["logs"][d]) for d in deltas}
    w = over[deltas[0]]["window"]  # 5, or fewer for a run with fewer than 10 evals
    lines += ["## Overfitting during pretraining", "",
              f"The pretraining domain test loss, as a trailing mean over {w} evals: its minimum, its value at the "
              f"end, how much it changed over the last {w} evals, and the train-test gap at the end (mean of the last "
              f"{w} evals).", ""]
    rows = [[f"{d:g}", f"{o['final_epochs']:.1f}", format_tokens(o["min_tokens"]), f"{o['min_loss']:.4f}",
             f"{o['final_loss']:.4f}", f"{o['recent_change']:+.4f}", f"{o['final_gap']:+.4f}"] for d, o in over.items()]
    lines += table(["delta", "E at end", "min at tokens", "min (smoothed)", "end (smoothed)",
                    f"change, last {w} evals", "test - train gap"], rows) + [""]
    plot_pretraining(study, os.path.join(results_dir, "pretraining.png"))
    lines += ["![pretraining curves](pretraining.png)", ""]

    evals = read_jsonl(eval_path)
    lines += ["## Downstream: the continuation task", "",
              f"Pick the true continuation of a held-out domain document among 4 (log-likelihood, raw and "
              f"length-normalised), {evals[0]['continuation']['n']} items, chance "
              f"{evals[0]['continuation']['chance']:.2f}. Checkpoints at {format_tokens(last)} tokens.", ""]
    by_checkpoint = {r["checkpoint"]: r for r in evals}
    rows = []
    for d, (pre, post) in evaluated_checkpoints(preset, out).items():
        pre, post = by_checkpoint[pre], by_checkpoint[post]
        rows.append([f"{d:g}", f"{pre['continuation']['acc']:.3f}", f"{post['continuation']['acc']:.3f}",
                     f"{post['continuation']['acc_norm']:.3f}", f"{pre['domain_test_bpb']:.3f}",
                     f"{post['domain_test_bpb']:.3f}"])
    lines += table(["delta", "acc (pretrained)", "acc (after FT)", "acc_norm (after FT)",
                    "dom test bits/byte (pretrained)", "(after FT)"], rows) + [""]

    fit_results = json.load(open(fit_path))
    lines += ["## Scaling laws", "", "```", fit_laws.format_report(fit_results), "```", ""]
    for plot in fit_results.get("plots", []):
        shutil.copy(plot, os.path.join(results_dir, os.path.basename(plot)))
        lines += [f"![{os.path.basename(plot)}]({os.path.basename(plot)})", ""]

    lines += ["## The paper's claims, checked at this scale", ""] + claims(deltas, milestones, ft, best, over, last) + [""]
    data.atomic_write(os.path.join(results_dir, "REPORT.md"), lambda f: f.write("\n".join(lines)), mode="w")
    print(f"report: {os.path.join(results_dir, 'REPORT.md')}")


def claims(deltas, milestones, ft, best, over, last) -> list[str]:
    """The three qualitative questions, answered from the numbers whichever way they come out."""
    if 0 not in deltas:
        return ["(no delta = 0 run: nothing to compare against)"]
    spt = [d for d in deltas if d > 0]
    best_delta = min(spt, key=lambda d: best[(d, last)])
    wins = best[(best_delta, last)] < best[(0, last)]
    gen_npt, gen_spt = ft[(0, last)]["best"]["general_val_loss"], ft[(best_delta, last)]["best"]["general_val_loss"]
    high = max(spt)
    improving = [d for d in spt if over[d]["recent_change"] < -NOISE]
    flat_or_up = [d for d in spt if over[d]["recent_change"] >= -NOISE]
    return [
        f"- SPT(best delta = {best_delta:g}) -> FT vs NPT -> FT at {format_tokens(last)} tokens: domain test loss "
        f"{best[(best_delta, last)]:.4f} vs {best[(0, last)]:.4f}: **{'yes' if wins else 'no'}**, SPT "
        f"{'wins' if wins else 'does not win'} (R_gain {evaluate.relative_gain(best[(0, last)], best[(best_delta, last)]):+.2f}%).",
        f"- General loss after finetuning, SPT(delta = {best_delta:g}) vs NPT: {gen_spt:.4f} vs {gen_npt:.4f}: "
        f"**{'lower' if gen_spt < gen_npt else 'not lower'}** for SPT.",
        f"- Highest delta ({high:g}, {over[high]['final_epochs']:.1f} repeats): its smoothed pretraining domain test "
        f"loss {'rose' if over[high]['rise'] > NOISE else 'did not rise'} above its minimum "
        f"({over[high]['rise']:+.4f}) and changed by {over[high]['recent_change']:+.4f} over the last "
        f"{over[high]['window']} evals, with a "
        f"train-test gap of {over[high]['final_gap']:.3f}; deltas still improving at the end (by more than {NOISE}): "
        f"{', '.join(f'{d:g}' for d in improving) or 'none'}; flat or rising: {', '.join(f'{d:g}' for d in flat_or_up) or 'none'}.",
        f"- Against the paper (R_gain {PAPER['r_gain']} at 200B tokens): our best R_gain at {format_tokens(last)} "
        f"tokens is {evaluate.relative_gain(best[(0, last)], best[(best_delta, last)]):+.2f}%. The direction is "
        f"what matters here; the size is not comparable: a model ~1000x smaller, a domain (by default ABC "
        f"notation) far from the general text, domain repeats reached in millions rather than billions of tokens, "
        f"and single runs whose evals fluctuate by a few hundredths of a nat.",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-mini", help="a name in configs/study/ or a JSON file")
    p.add_argument("--out_dir", default=None, help="run folders (default: out/study/<preset>)")
    p.add_argument("--results_dir", default=None, help="REPORT.md and plots (default: results/<preset>)")
    p.add_argument("--data_dir", default=None, help="an already prepared dataset instead of the preset's sources")
    args = p.parse_args(argv)
    path = args.preset if args.preset.endswith(".json") else os.path.join(ROOT, "configs", "study", f"{args.preset}.json")
    if not os.path.exists(path):
        sys.exit(f"study.py: no preset {args.preset!r}: choose one of "
                 f"{', '.join(sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, 'configs', 'study'))))}")
    with open(path) as f:
        preset = json.load(f)
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.abspath(args.out_dir or os.path.join(ROOT, "out", "study", name))
    results_dir = os.path.abspath(args.results_dir or os.path.join(ROOT, "results", name))
    data_dir = prepare(preset, out, args.data_dir and os.path.abspath(args.data_dir))
    pretrain(preset, out, data_dir)
    finetune(preset, out)
    eval_path = evaluate_checkpoints(preset, out, data_dir)
    fit_path = fit(preset, out)
    write_report(name, preset, out, eval_path, fit_path, results_dir)


if __name__ == "__main__":
    main()
