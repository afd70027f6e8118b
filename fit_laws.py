"""How much domain data to mix in: the overfitting scaling laws of specialized pretraining (SPT).

    python fit_laws.py RUN_DIR... --finetune FT_DIR... --target_tokens 40M
    python fit_laws.py RUN_DIR... --finetune FT_DIR... --fit_until 4M --rolling   # forecast checks
    python fit_laws.py RUN_DIR... --finetune FT_DIR... --holdout_delta 0.05   # ... or without one delta

SPT mixes a domain corpus D_dom of U tokens into pretraining as a share delta of the T tokens, so it is
repeated E = T delta / U times: more delta helps the domain until the repeats make the model memorise
D_dom and its domain *test* loss turns up. From pilot runs (train.py's config.json and log.jsonl) and
finetunes of their checkpoints (finetune.json) this file forecasts which delta gives the lowest domain
test loss after finetuning at T tokens. It writes --out (JSON, atomically, with the fitted curves),
then the report and PNG plots that laws_report.py makes from that JSON alone.

1. The paper's law (PAPER.md) on the runs of the whole domain set. The domain *train* loss keeps
   falling; what grows with the repeats is the train-test *gap*, so the law models both:
       L_train(T, d) = A_train T^b_train(d) + C_train(d)      b_x(d) = d b_x_s + (1 - d) b_x_g
       L_gap(T, d)   = A_gap(d) T^b_gap(d)                    A_gap(d) = a1 d^a2 exp(a3 d)
       L_test(T, d)  = L_train(T, d) + L_gap(T, d)            C_train(d) = k0 - k1 log(d + k2) - k3 d
   Its onset, where the gap's slope overtakes the train loss's, is
   T*(d) = (-A_gap b_gap / (A_train b_train))^(1 / (b_train - b_gap)). T is in units of t_scale (the
   power of ten nearest the largest token count). Least squares on every eval's train and test loss,
   inside bounds with the paper's signs and C_train(1) >= 0 in place of k0 (no forecast below zero);
   each delta fitted alone (stage 1) starts the joint fit.

2. Repeats. Pilots of the whole set rarely reach the target's repeat counts (16M tokens at delta 0.2
   repeat a 40K-token set 80 times, 4M only 20), so they cannot show where it overfits. Arms on nested
   subsets of D_dom (U/4, U/8, the same test split: data.py --domain_tokens) reach those counts at
   pilot budgets. Every arm's (delta, U) loss after finetuning is its own saturating curve plus one
   shared penalty for repeating past an onset:
       L(T) = E_a + B_a x^-beta + c d^gamma max(0, ln(E / E0_U))^2,    E0_U = E0 (U / U_full)^kappa
   (x = T / t_scale; E_a, B_a, c >= 0; kappa: whether smaller sets overfit at fewer repeats). It is
   fitted after finetuning, on what is forecast: the pretrained test loss over these budgets is no
   saturating curve (misfit by 0.02-0.06 nats), and a penalty fitted on it absorbs the misfit.

3. Three forecasts after finetuning: `law - drop`, the law shrunk by the paper's drop (log(before /
   after) = a_d x^b + c_d, never below zero); `direct`, E_d + B_d x^-beta per delta of the whole set,
   which cannot turn up; and `repeats` at U_full, which does. Between fitted deltas the coefficients
   are interpolated. The pilots choose which recommends: `repeats`, unless `law - drop` refitted on
   T <= T0 / 2 forecast their last budget T0 better. Every seed is fitted; measurements are seed means.

4. The forecast check (a forecast counts once checked against runs the fit did not see): --fit_until
   T0 refits on the evals and finetunes at T <= T0 (--holdout_delta d: without that delta) and scores
   every forecast of the larger budgets against the seed means there: the error, whether it is within
   max(1%, 2 standard errors), the Spearman rank agreement and the *regret* of its recommendation (its
   measured loss over the best, in %). --rolling repeats it from every origin with 3 finetuned budgets
   (2 -> 4, 2 -> 8, 4 -> 8 ...), forecasting up to 4x, as one table.

5. The recommendation at --target_tokens: each candidate's forecasts, its repeats and bootstrap
   intervals (residuals resampled per curve: correlated points make them optimistic). Chosen by
   expected regret over the bootstrap, not by the point forecast; a tie when the runner-up's margin
   has an interval that holds zero. "onset not observed": the target is further past the onset than
   any pilot got. A candidate outside the fitted deltas is never recommended.
"""
import itertools
import json
import math
import os
import sys
from collections import namedtuple

import numpy as np
from scipy import optimize, stats

import data
import run_folder
import settings
from laws_report import approx, format_report, plot_all

CI_LEVEL = 0.95
GOAL_ERROR_PCT = 1.0        # a forecast is within the goal at max(this, 2 standard errors of the seed mean)
ONSET_HORIZON = 1000.0      # an onset further than this many times the largest fitted T is "none in range"
NOISE_FLAGS = 3.0           # stage-1 coefficients are flagged only beyond this many standard errors
RANDOM_STARTS = 7           # of the joint fit, besides the one from stage 1


class FitError(Exception):
    """Bad input or an impossible fit: main() prints it as one line."""


def warn(message: str, warnings: list):
    print(f"fit_laws.py: warning: {message}", file=sys.stderr)
    warnings.append(message)


# ---------------------------------------------------------------------------------------------
# 1. Data: the runs' eval points and the finetuned checkpoints

# One pretraining run: its domain_frac, domain set size U, seed and the evals kept for fitting.
Run = namedtuple("Run", "path delta domain_tokens seed tokens train test")
# One finetuned checkpoint: its run's delta, U and seed, tokens, domain test loss before and after, general after.
Finetuned = namedtuple("Finetuned", "path delta domain_tokens seed tokens before after general_after")
SHARED_SPLITS = ("general_train", "general_val", "domain_test")  # the same in a dataset and its domain subsets


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FitError(f"{path} does not exist: give run folders written by train.py and finetune.py") from None
    except json.JSONDecodeError as e:
        raise FitError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}): rerun the stage that wrote it") from None


def field(record: dict, key: str, where: str):
    if key not in record:
        raise FitError(f"{where} lacks '{key}': was it written by this project's train.py / finetune.py?")
    return record[key]


def load_runs(run_dirs: list[str], warnings: list) -> tuple[list[Run], dict]:
    """Every run's evals past step 0 with finite losses, and what the runs share: the model shape, the
    batch and one dataset, or a dataset and nested subsets of its domain (with its general data and
    test split: checked in their meta.json). Runs that differ otherwise are refused."""
    runs, setting, datasets = [], None, {}
    for run_dir in run_dirs:
        config_path = os.path.join(run_dir, "config.json")
        config = read_json(config_path)
        this = {k: field(config, k, config_path) for k in ("model_config", "batch_size")}
        setting = setting or this
        for key in this:
            if this[key] != setting[key]:
                raise FitError(f"{run_dir} and {run_dirs[0]} differ in {key}: one law describes one model shape "
                               f"and batch; fit them separately")
        dataset, domain_tokens = field(config, "dataset_id", config_path), field(config, "domain_train_tokens", config_path)
        datasets.setdefault(dataset, (domain_tokens, field(config, "data_dir", config_path), run_dir))
        log = run_folder.read_log(os.path.join(run_dir, "log.jsonl"))  # a damaged log: a one-line TrainError
        by_step = {field(r, "step", run_dir): r for r in log}  # a resumed run's repeated step: the last wins
        values = np.array([[r["tokens"], r["domain_train_loss"] or np.nan, r["domain_test_loss"] or np.nan]
                           for _, r in sorted(by_step.items()) if r["tokens"] > 0], dtype=float).reshape(-1, 3)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            warn(f"{run_dir}: dropped {int((~finite).sum())} evals with NaN or missing losses", warnings)
        values = values[finite]
        if len(values) < 3:
            raise FitError(f"{run_dir} has {len(values)} usable evals; the law needs 3 or more "
                           f"per run: train longer or evaluate more often")
        runs.append(Run(run_dir, float(field(config, "domain_frac", config_path)), domain_tokens,
                        field(config, "seed", config_path), *values.T))
    full = max(u for u, _, _ in datasets.values())
    check_datasets(datasets, full)
    deltas = sorted({r.delta for r in runs if r.domain_tokens == full})
    if len(deltas) < 4 or sum(d > 0 for d in deltas) < 3:
        raise FitError(f"the law needs runs at 4 or more domain_frac values, 3 of them > 0 (C_train has 4 "
                       f"parameters, A_gap 3), on the whole domain set; got {deltas}: add runs")
    return runs, {**setting, "tokens_per_step": setting["batch_size"] * setting["model_config"]["seq_len"],
                  "datasets": {d: u for d, (u, _, _) in datasets.items()}, "domain_tokens": full,
                  "dataset_id": next(d for d, (u, _, _) in datasets.items() if u == full)}


def check_datasets(datasets: dict, full: int):
    """One dataset per domain set size, and subsets that hold out what the whole set does: otherwise two
    runs of one delta would measure different things under one name."""
    by_size = {}
    for dataset, (size, _, run_dir) in datasets.items():
        if size in by_size:
            raise FitError(f"{run_dir} and {by_size[size][1]} have domain sets of {size:,} tokens from two datasets "
                           f"({dataset}, {by_size[size][0]}): one law describes one dataset and nested subsets of "
                           f"its domain; fit them separately")
        by_size[size] = (dataset, run_dir)
    if len(datasets) == 1:
        return
    metas = {}
    for dataset, (size, data_dir, run_dir) in datasets.items():
        if not data_dir or not os.path.exists(os.path.join(data_dir, "meta.json")):
            raise FitError(f"{run_dir} trained on {data_dir}, which is gone: runs on domain subsets are checked "
                           f"against their dataset folders (the same held-out splits); put them back")
        metas[size] = (data.load_meta(data_dir), data_dir)
    whole_dir, splits = metas[full][1], {s: metas[full][0]["splits"][s]["sha256"] for s in SHARED_SPLITS}
    for meta, data_dir in metas.values():
        differ = [s for s in SHARED_SPLITS if meta["splits"][s]["sha256"] != splits[s]]
        if differ:
            raise FitError(f"{data_dir} has other {' and '.join(differ)} than {whole_dir}: a domain subset must "
                           f"be prepared with the same sources, --seed, --val_frac and --test_frac and a smaller "
                           f"--domain_tokens (scripts/study.py does)")


def load_finetunes(paths: list[str], setting: dict, warnings: list) -> list[Finetuned]:
    """finetune.json files (or their folders) of the runs' datasets and model shape."""
    points = []
    for path in paths:
        file = os.path.join(path, "finetune.json") if os.path.isdir(path) else path
        ft = read_json(file)
        if field(ft, "dataset_id", file) not in setting["datasets"]:
            raise FitError(f"{file} finetuned on dataset {ft['dataset_id']}, none of the runs' "
                           f"({', '.join(setting['datasets'])})")
        shape = {k: v for k, v in field(ft, "model_config", file).items() if k != "tie_embeddings"}
        if shape != {k: v for k, v in setting["model_config"].items() if k != "tie_embeddings"}:
            raise FitError(f"{file} finetuned another model shape than the runs'")
        if field(ft, "replay", file):
            raise FitError(f"{file} replayed general data: fit one finetuning recipe at a time")
        best = field(ft, "best", file)
        if best is None or ft["pretrain_tokens"] <= 0:
            why = "no finished configuration" if best is None else "a checkpoint at 0 tokens"
            warn(f"{file}: skipped ({why})", warnings)
            continue
        if not best["converged"]:
            warn(f"{file}: its best configuration was still improving when its epochs ran out (unconverged): "
                 f"its loss after finetuning is an upper bound; raise finetune.py's --extend_epochs", warnings)
        seed = field(field(field(ft, "settings", file), "pretrain_config", file), "seed", file)
        points.append(Finetuned(file, float(ft["domain_frac"]), setting["datasets"][ft["dataset_id"]], seed,
                                float(ft["pretrain_tokens"]), field(ft["pretrained"], "domain_test_loss", file),
                                best["domain_test_loss"], best["general_val_loss"]))
    return points


# ---------------------------------------------------------------------------------------------
# 2. The paper's law and how it is fitted

Params = namedtuple("Params", "A_train b_train_s b_train_g b_gap_s b_gap_g a1 a2 a3 k0 k1 k2 k3")  # docstring, 1.

# Bounds of the fitted vector: the paper's Params, except that slot k0 holds C_train(1) >= 0 (see to_params).
LOWER = Params(0.0, -3.0, -3.0, 0.0, -3.0, 0.0, 0.01, -50.0, 0.0, 0.0, 1e-4, 0.0)
UPPER = Params(np.inf, 0.0, 0.0, 10.0, 0.0, np.inf, 5.0, 50.0, np.inf, np.inf, 1.0, np.inf)
# What a fitted parameter on its bound says about the law's assumptions (a flag in the report).
ON_BOUND = {"b_train_s": "train loss that does not fall with pure domain data", "b_train_g": "train loss that does "
            "not fall with general data", "b_gap_s": "a gap that does not grow (b_gap_s at 0)",
            "b_gap_g": "b_gap_g at its bound", "a1": "no train-test gap at all (a1 = 0)",
            "a2": "A_gap(d) barely vanishes at d = 0 (a2 at its lower bound)", "k1": "C_train(d) flat near d = 0",
            "k2": "a log singularity of C_train at d = 0 (k2 at its lower bound)", "k0": "C_train(1) = 0: a floor "
            "of zero loss with pure domain data", "k3": "C_train(d) not linear in d (k3 = 0)"}


def to_params(x) -> Params:
    """The fitted vector -> the paper's parameters: the vector holds C_train(1) where the paper has k0 (part 2)."""
    c_one, k1, k2, k3 = x[8:]
    return Params(*x[:8], c_one + k1 * math.log(1 + k2) + k3, k1, k2, k3)


def to_vector(p: Params) -> np.ndarray:
    return np.array([*p[:8], p.k0 - p.k1 * math.log(1 + p.k2) - p.k3, *p[9:]])


def law(p: Params, t, d):
    """(domain train loss, train-test gap) at t = tokens / t_scale and domain fraction d."""
    b_train, b_gap = d * p.b_train_s + (1 - d) * p.b_train_g, d * p.b_gap_s + (1 - d) * p.b_gap_g
    c_train = p.k0 - p.k1 * np.log(d + p.k2) - p.k3 * d
    return p.A_train * t ** b_train + c_train, p.a1 * d ** p.a2 * np.exp(p.a3 * d) * t ** b_gap


def onset(p: Params, d: float, t_scale: float, max_tokens: float) -> float | None:
    """Tokens where the test loss at d stops falling (docstring, part 1), or None if not in range."""
    b_train, b_gap = d * p.b_train_s + (1 - d) * p.b_train_g, d * p.b_gap_s + (1 - d) * p.b_gap_g
    a_gap = p.a1 * d ** p.a2 * math.exp(p.a3 * d)
    if not (a_gap > 0 and p.A_train > 0 and b_train < 0 < b_gap):
        return None
    log_t = math.log(-a_gap * b_gap / (p.A_train * b_train)) / (b_train - b_gap)
    tokens = math.exp(min(log_t, 700.0)) * t_scale
    return tokens if tokens <= ONSET_HORIZON * max_tokens else None


# The fitted law: its Params, the token unit of t, the deltas and largest token count fitted, RMSE, stage 1, flags.
Law = namedtuple("Law", "params t_scale deltas max_tokens rmse per_delta flags")


def per_delta_fit(endpoints, pts: dict):
    """Stage 1 given the exponents' endpoints (b_train_s, b_train_g, b_gap_s, b_gap_g): each delta's
    A_train, C_train and A_gap by linear least squares, with their standard errors. Returns (residuals, rows)."""
    b_train_s, b_train_g, b_gap_s, b_gap_g = endpoints
    residuals, rows = [], []
    for delta in np.unique(pts["d"]):
        m = pts["d"] == delta
        power_train = pts["t"][m] ** (delta * b_train_s + (1 - delta) * b_train_g)
        power_gap = pts["t"][m] ** (delta * b_gap_s + (1 - delta) * b_gap_g)
        one, zero = np.ones(m.sum()), np.zeros(m.sum())
        design = np.vstack([np.column_stack([power_train, one, zero]), np.column_stack([power_train, one, power_gap])])
        target = np.concatenate([pts["train"][m], pts["test"][m]])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        residual = design @ coef - target
        sigma2 = residual @ residual / max(1, len(target) - 3)
        stderr = np.sqrt(np.diag(sigma2 * np.linalg.pinv(design.T @ design)))
        residuals.append(residual)
        rows.append({"delta": float(delta), "A_train": coef[0], "C_train": coef[1], "A_gap": coef[2],
                     "A_gap_stderr": stderr[2], "A_train_stderr": stderr[0]})
    return np.concatenate(residuals), rows


def starting_points(endpoints, rows, seed: int) -> list[np.ndarray]:
    """The joint fit's starts. The first from stage 1: the gamma kernel fitted to the positive A_gap's in
    log space (log A_gap = log a1 + a2 log d + a3 d is linear), the log-linear floor to the C_train's
    (linear for each k2 of a scan). Then RANDOM_STARTS around it: exponents, a2, a3 and k2 drawn anew."""
    d = np.array([r["delta"] for r in rows])
    a_gap, c_train = np.array([r["A_gap"] for r in rows]), np.array([r["C_train"] for r in rows])
    ok = (d > 0) & (a_gap > 0)
    a1, a2, a3 = 1e-2, 1.0, 0.0
    if ok.sum() >= 3:
        design = np.column_stack([np.ones(ok.sum()), np.log(d[ok]), d[ok]])
        c = np.linalg.lstsq(design, np.log(a_gap[ok]), rcond=None)[0]
        a1, a2, a3 = math.exp(c[0]), c[1], c[2]
    floors = (np.linalg.lstsq(np.column_stack([np.ones_like(d), -np.log(d + k2), -d]), c_train, rcond=None)[0].tolist()
              + [k2] for k2 in np.logspace(-4, 0, 17))
    k0, k1, k3, k2 = min(floors, key=lambda k: np.sum((k[0] - k[1] * np.log(d + k[3]) - k[2] * d - c_train) ** 2))
    a_train = [r["A_train"] for r in rows if r["A_train"] > 0]
    a_train = float(np.median(a_train)) if a_train else 1.0
    starts = [inside(to_vector(Params(a_train, *endpoints, a1, a2, a3, k0, max(k1, 0.0), k2, max(k3, 0.0))))]
    rng, first = np.random.default_rng(seed), Params(*starts[0])  # (its k0 slot holds C_train(1), as fitted)
    for _ in range(RANDOM_STARTS):
        b_train_s, b_train_g, b_gap_s, b_gap_g = rng.uniform(np.array(LOWER[1:5]), np.array([-1e-3, -1e-3, 3.0, 0.0]))
        scale_a_train, scale_a1, scale_k1 = np.exp(rng.normal(0, 0.7, 3))
        x = first._replace(b_train_s=b_train_s, b_train_g=b_train_g, b_gap_s=b_gap_s, b_gap_g=b_gap_g,
                           A_train=first.A_train * scale_a_train, a1=first.a1 * scale_a1, k1=first.k1 * scale_k1,
                           a2=rng.uniform(0.2, 2.0), a3=rng.uniform(-20, 10), k2=10 ** rng.uniform(-4, 0))
        starts.append(inside(np.array(x)))
    return starts


def inside(x: np.ndarray) -> np.ndarray:
    """Strictly inside the box: least_squares needs a feasible start."""
    lo, hi = np.array(LOWER), np.array(UPPER)
    margin = 1e-6 * (1 + np.abs(lo))  # every lower bound is finite
    return np.clip(x, lo + margin, hi - margin)


def jacobian(x: np.ndarray, t, d):
    """d(train loss)/dx above d(test loss)/dx, as fit_law stacks its residuals: exact derivatives make it fast."""
    p = to_params(x)
    gap = law(p, t, d)[1]
    log_t, power_train = np.log(t), t ** (d * p.b_train_s + (1 - d) * p.b_train_g)
    one, zero = np.ones_like(t), np.zeros_like(t)
    j_train = [power_train, p.A_train * power_train * log_t * d, p.A_train * power_train * log_t * (1 - d),
               zero, zero, zero, zero, zero, one, np.log(1 + p.k2) - np.log(d + p.k2),
               p.k1 / (1 + p.k2) - p.k1 / (d + p.k2), 1 - d]
    j_gap = [zero, zero, zero, gap * log_t * d, gap * log_t * (1 - d), gap / p.a1 if p.a1 else zero,
             gap * np.log(np.where(d > 0, d, 1.0)), gap * d, zero, zero, zero, zero]
    j_train, j_gap = (np.stack(np.broadcast_arrays(*j), axis=1) for j in (j_train, j_gap))
    return np.vstack([j_train, j_train + j_gap])


def fit_law(runs: list[Run], t_scale: float, seed: int = 0, x0=None) -> Law:
    """The paper's law on `runs`, stage 1 then 2 (part 2); from x0 alone if given (the bootstrap's refits)."""
    pts = {"t": np.concatenate([r.tokens for r in runs]) / t_scale,
           "d": np.concatenate([np.full(len(r.tokens), r.delta) for r in runs]),
           "train": np.concatenate([r.train for r in runs]), "test": np.concatenate([r.test for r in runs])}
    stage1 = min((optimize.least_squares(lambda e: per_delta_fit(e, pts)[0], s, bounds=(LOWER[1:5], UPPER[1:5]))
                  for s in ([-0.5, -0.3, 0.5, -0.1], [-0.2, -0.2, 1.0, -0.01], [-1.0, -0.5, 2.0, -0.5])),
                 key=lambda res: res.cost)
    rows = per_delta_fit(stage1.x, pts)[1]
    starts = starting_points(stage1.x, rows, seed) if x0 is None else [x0]
    target = np.concatenate([pts["train"], pts["test"]])

    def residuals(x):
        train_loss, gap = law(to_params(x), pts["t"], pts["d"])
        return np.concatenate([train_loss, train_loss + gap]) - target

    with np.errstate(all="ignore"):
        fits = [optimize.least_squares(residuals, s, jac=lambda x: jacobian(x, pts["t"], pts["d"]),
                                       bounds=(LOWER, UPPER), x_scale="jac", max_nfev=3000) for s in starts]
    fits = [res for res in fits if np.isfinite(res.cost)]
    if not fits:
        raise FitError("the law's fit failed from every starting point: check the runs' losses")
    best = min(fits, key=lambda res: res.cost)  # the first of equals, as the starts come
    flags = [ON_BOUND[name] for name, v, lo, hi in zip(Params._fields, best.x, LOWER, UPPER)
             if name in ON_BOUND and (v - lo < 1e-5 * (1 + abs(lo)) or hi - v < 1e-5 * (1 + abs(hi)))]
    for r in rows:  # stage-1 coefficients of the wrong sign, beyond noise
        if r["delta"] > 0 and r["A_gap"] < -NOISE_FLAGS * r["A_gap_stderr"]:
            flags.append(f"stage 1: delta {r['delta']:g} has a significantly negative gap (test below train)")
        if r["A_train"] < -NOISE_FLAGS * r["A_train_stderr"]:
            flags.append(f"stage 1: delta {r['delta']:g} has a rising domain train loss")
    return Law(to_params(best.x), t_scale, sorted({r.delta for r in runs}), float(pts["t"].max() * t_scale),
               math.sqrt(2 * best.cost / len(target)), rows, flags)


# ---------------------------------------------------------------------------------------------
# 3. Repeats: the loss after finetuning of every arm, with one penalty for repeating past an onset

class Penalty(namedtuple("Penalty", "c gamma e0 kappa full")):
    """Part 2's penalty in nats: c d^gamma max(0, ln(E / E0_U))^2, E0_U = e0 (U / full)^kappa."""

    def onset(self, domain_tokens):
        """E0_U: the repeats where a domain set of `domain_tokens` starts to overfit."""
        return self.e0 * (domain_tokens / self.full) ** self.kappa

    def __call__(self, tokens, delta, domain_tokens):
        repeats = np.asarray(tokens, dtype=float) * delta / domain_tokens
        past = np.log(np.maximum(repeats, 1e-30) / self.onset(domain_tokens))
        return self.c * delta ** self.gamma * np.maximum(past, 0.0) ** 2

    def reach(self, points) -> float:
        """How far past its onset the furthest pilot got: the largest E / E0_U (1: at the onset)."""
        return max(p.tokens * p.delta / p.domain_tokens / self.onset(p.domain_tokens) for p in points)


class Repeats(namedtuple("Repeats", "penalty exponent coef t_scale")):
    """Part 2 fitted: each arm's (delta, U) base E + B x^-exponent (coef[(delta, U)] = (E, B)) plus the
    penalty; a delta between an arm's neighbours of the same U gets their coefficients interpolated."""

    def __call__(self, tokens, delta, domain_tokens):
        ds = sorted(d for d, u in self.coef if u == domain_tokens)
        e, b = (np.interp(delta, ds, [self.coef[(d, domain_tokens)][i] for d in ds]) for i in (0, 1))
        x = np.asarray(tokens, dtype=float) / self.t_scale
        return e + b * x ** -self.exponent + self.penalty(tokens, delta, domain_tokens)


def fit_repeats(points: list[Finetuned], t_scale: float, start: Repeats | None = None) -> Repeats:
    """Least squares on every arm's losses after finetuning. For given exponent, gamma, E0 and kappa the
    model is linear in the bases and c, all >= 0 (non-negative least squares); those four are searched
    on a grid, then refined (from `start` alone: the bootstrap's refits). kappa is fitted only where
    the pilots have two or more set sizes with domain data (else 0). When no pilot shows a penalty
    (c = 0), the onset is placed at the most repeats a pilot reached: no sooner than that."""
    arms = sorted({(p.delta, p.domain_tokens) for p in points})
    full = max(u for _, u in arms)
    x, y = np.array([p.tokens for p in points]) / t_scale, np.array([p.after for p in points])
    onehot = np.array([[(p.delta, p.domain_tokens) == a for a in arms] for p in points], dtype=float)
    delta, size = np.array([p.delta for p in points]), np.array([p.domain_tokens for p in points], dtype=float)
    repeats = x * t_scale * delta / size
    free_kappa = len({u for d, u in arms if d > 0}) > 1

    def solve(v):
        beta, gamma, log_e0, kappa = (*v[:3], v[3] if free_kappa else 0.0)
        hinge = delta ** gamma * np.maximum(np.log(np.maximum(repeats, 1e-30) / (math.exp(log_e0) * (size / full)
                                                                                   ** kappa)), 0) ** 2
        design = np.hstack([onehot, onehot * (x ** -beta)[:, None], hinge[:, None]])
        coef, norm = optimize.nnls(design, y)
        return norm ** 2, coef

    lower, upper = [0.01, 0.0, math.log(1.0), -2.0], [3.0, 3.0, math.log(1e5), 2.0]
    if start:
        best = [start.exponent, start.penalty.gamma, math.log(start.penalty.e0), start.penalty.kappa]
    else:
        grid = itertools.product(np.linspace(0.1, 2.0, 12), (0.0, 1.0, 2.0), np.log(np.geomspace(3, 1000, 16)),
                                 np.linspace(-1, 1, 5) if free_kappa else (0.0,))
        best = min(grid, key=lambda v: solve(v)[0])
    n = 4 if free_kappa else 3
    refined = optimize.minimize(lambda v: solve(np.clip(v, lower[:n], upper[:n]))[0], best[:n], method="Nelder-Mead",
                                options={"xatol": 1e-4, "fatol": 1e-10, "maxiter": 400})
    v = np.clip(refined.x, lower[:n], upper[:n])
    coef, k = solve(v)[1], len(arms)
    beta, gamma, log_e0, kappa = (*v[:3], v[3] if free_kappa else 0.0)
    e0 = math.exp(log_e0) if coef[-1] > 0 else float(repeats[delta > 0].max(initial=1.0))
    return Repeats(Penalty(float(coef[-1]), float(gamma), e0, float(kappa) if coef[-1] > 0 else 0.0, full),
                   float(beta), {a: (coef[j], coef[k + j]) for j, a in enumerate(arms)}, t_scale)


# ---------------------------------------------------------------------------------------------
# 4. After finetuning

class PostFT(namedtuple("PostFT", "kind exponent coef t_scale")):
    """A model of part 3, one exponent for all deltas: "drop" or "direct", with coef mapping each delta
    to its (a_d, c_d) or (E_d, B_d); tokens are in units of t_scale."""

    def __call__(self, tokens, delta):
        x = np.asarray(tokens, dtype=float) / self.t_scale
        ds = sorted(self.coef)
        first, second = (np.interp(delta, ds, [self.coef[d][i] for d in ds]) for i in (0, 1))
        if self.kind == "direct":
            return first + second * x ** -self.exponent
        return first * x ** self.exponent + second


def fit_post_ft(points: list[Finetuned], kind: str, t_scale: float) -> PostFT:
    """For a fixed exponent both curves are linear in their coefficients (direct: non-negative ones), so
    the exponent is scanned on a grid and refined in the best cell: no starting points to get wrong."""
    deltas, direct = sorted({p.delta for p in points}), kind == "direct"
    x = np.array([p.tokens for p in points]) / t_scale
    onehot = np.array([[p.delta == d for d in deltas] for p in points], dtype=float)
    y = np.array([p.after for p in points]) if direct else np.log([p.before / p.after for p in points])
    grid = np.linspace(0.01, 3.0, 300) if direct else np.linspace(-3.0, 3.0, 601)

    def solve(b):
        power = onehot * (x ** (-b if direct else b))[:, None]
        design = np.hstack([onehot, power] if direct else [power, onehot])
        coef = optimize.nnls(design, y)[0] if direct else np.linalg.lstsq(design, y, rcond=None)[0]
        return float(np.sum((design @ coef - y) ** 2)), coef

    i = int(np.argmin([solve(g)[0] for g in grid]))
    cell = (grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    b = optimize.minimize_scalar(lambda g: solve(g)[0], bounds=cell, method="bounded").x
    coef, n = solve(b)[1], len(deltas)
    return PostFT(kind, float(b), {d: (coef[j], coef[n + j]) for j, d in enumerate(deltas)}, t_scale)


# ---------------------------------------------------------------------------------------------
# 5. Forecasts: every model fitted on the same data, the forecast checks and the recommendation

AFTER = ("after_law", "after_direct", "after_repeats")  # the forecasts after finetuning


class Models(namedtuple("Models", "law drop direct repeats by choice")):
    """Every model fitted on the same data: the Law of the whole set, and after finetuning its drop and
    direct PostFT's and every arm's Repeats (None without finetunes); `by`
    is the forecast that recommends, `choice` the pilots' own check that chose it (None: none possible)."""

    def forecast(self, tokens: float, delta: float) -> dict:
        """Every model's domain test loss of the whole set at (tokens, delta), before and after finetuning."""
        out = {"law": float(sum(law(self.law.params, tokens / self.law.t_scale, delta)))}
        if self.drop:
            out.update(after_law=out["law"] * math.exp(-float(self.drop(tokens, delta))),
                       after_direct=float(self.direct(tokens, delta)),
                       after_repeats=float(self.repeats(tokens, delta, self.repeats.penalty.full)))
        return out

    def unobserved(self, tokens: float, delta: float, reach: float) -> bool:
        """Whether the whole set at (tokens, delta) is further past its onset than any pilot got."""
        p = self.repeats and self.repeats.penalty
        return bool(p) and tokens * delta / p.full / p.onset(p.full) > reach


def cut(runs, points, until: float, holdout: float | None = None):
    """The runs' evals and the finetunes at T <= until, without the held-out delta's."""
    return ([r._replace(**{k: v[r.tokens <= until] for k, v in zip(("tokens", "train", "test"), r[4:])})
             for r in runs if r.delta != holdout], [p for p in points if p.tokens <= until and p.delta != holdout])


def whole(items, runs):
    """The runs or finetunes of the whole domain set (the largest of the runs')."""
    full = max(r.domain_tokens for r in runs)
    return [x for x in items if x.domain_tokens == full]


def fit_models(runs: list[Run], points: list[Finetuned], t_scale: float, seed: int, start: Models | None = None,
               by: str | None = None) -> Models:
    full, full_points = whole(runs, runs), whole(points, runs)
    if points and len({p.tokens for p in full_points}) < 3:
        raise FitError("the forecast after finetuning needs finetuned checkpoints of the whole domain set at 3 or "
                       "more pretraining token counts: finetune more milestones")
    x0 = start and inside(to_vector(start.law.params))
    models = Models(fit_law(full, t_scale, seed, x0), None, None, None, "law", None)
    if not points:
        return models
    models = models._replace(drop=fit_post_ft(full_points, "drop", t_scale),
                             direct=fit_post_ft(full_points, "direct", t_scale),
                             repeats=fit_repeats(points, t_scale, start and start.repeats), by=by or "after_repeats")
    return models if by else choose_forecast(models, runs, points, t_scale, seed)


def choose_forecast(models: Models, runs, points, t_scale: float, seed: int) -> Models:
    """Part 3: repeats recommends unless law - drop, both refitted on the finetuned budgets up to half the
    last, forecast the last one better (mean |error| over its deltas' seed means). Needs 4 budgets."""
    budgets = sorted({p.tokens for p in whole(points, runs)})
    half = [b for b in budgets if b <= 0.51 * budgets[-1]]  # (milestones are rounded up to whole steps)
    if len(half) < 3:
        return models
    early = fit_models(*cut(runs, points, half[-1]), t_scale, seed, by="after_repeats")
    scored = [(early.forecast(budgets[-1], d), m) for d, (m, _, _) in seed_means(whole(points, runs), budgets[-1]).items()]
    errors = {k: float(np.mean([abs(f[k] - m) / m * 100 for f, m in scored])) for k in ("after_law", "after_repeats")}
    by = "after_law" if errors["after_law"] < errors["after_repeats"] else "after_repeats"
    return models._replace(by=by, choice={"fitted_until": half[-1], "scored": budgets[-1], "mean_abs_error_pct": errors})


def bootstrap(runs: list[Run], points: list[Finetuned], models: Models, n: int, seed: int) -> list[Models]:
    """n refits on resampled residuals (part 5), each starting from the fit itself: the whole set's runs
    around the law's train and test loss, the finetunes around repeats' fit."""
    rng, boot, t_scale, full = np.random.default_rng(seed + 1), [], models.law.t_scale, whole(runs, runs)
    fitted = [law(models.law.params, r.tokens / t_scale, r.delta) for r in full]
    after = np.array([float(models.repeats(p.tokens, p.delta, p.domain_tokens)) for p in points]) if points else []
    noise = np.array([p.after for p in points]) - after

    def resample(fit, values):
        return fit + (values - fit)[rng.integers(0, len(values), len(values))]
    for _ in range(n):
        resampled = [r._replace(train=resample(train, r.train), test=resample(train + gap, r.test))
                     for r, (train, gap) in zip(full, fitted)]
        shifted = [p._replace(after=a + e) for p, a, e in zip(points, after, rng.choice(noise, len(points)))]
        boot.append(fit_models(resampled, shifted, t_scale, seed, start=models, by=models.by))
    return boot


def interval(values) -> list[float]:
    return np.percentile(values, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)]).tolist()


def seed_means(points: list[Finetuned], tokens: float) -> dict:
    """delta -> (mean loss after finetuning, its standard error or None with one seed, the seeds) at `tokens`."""
    by_delta = {}
    for p in points:
        if p.tokens == tokens:
            by_delta.setdefault(p.delta, []).append(p)
    return {d: (float(np.mean([p.after for p in ps])),
                float(np.std([p.after for p in ps], ddof=1) / math.sqrt(len(ps))) if len(ps) > 1 else None,
                sorted(p.seed for p in ps)) for d, ps in sorted(by_delta.items())}


def choose(point: np.ndarray, draws: np.ndarray, eligible: np.ndarray) -> dict:
    """The candidate with the lowest expected regret over the bootstrap draws (n_draws x n_candidates; with
    none, the lowest point forecast), and the runner-up when their difference is within its own interval."""
    if not len(draws):
        return {"index": int(np.argmin(np.where(eligible, point, np.inf))), "expected_regret_pct": None, "tie": None}
    draws = np.where(eligible, draws, np.inf)
    lowest = draws.min(axis=1, keepdims=True)
    expected = np.where(eligible, 100 * np.mean((draws - lowest) / lowest, axis=0), np.inf)
    first, runner = (int(i) for i in np.argsort(expected)[:2])
    lo, hi = interval(draws[:, runner] - draws[:, first]) if eligible.sum() > 1 else (1, 1)
    return {"index": first, "expected_regret_pct": expected.tolist(), "tie": runner if lo <= 0 <= hi else None}


def forecast_check(runs, points, fit_until: float, holdout: float | None, t_scale: float, n_boot: int,
                   seed: int, horizon: float = math.inf) -> dict:
    """Part 4: refit without what is scored (beyond fit_until, the held-out delta), forecast what was not
    seen of the whole set up to `horizon`, and score it against the seed means measured there."""
    seen_runs, seen = cut(runs, points, fit_until, holdout)
    unseen = [p for p in whole(points, runs) if p not in seen and p.tokens <= horizon]
    budgets = sorted({p.tokens for p in unseen})
    if not budgets:
        raise FitError("the check has nothing to score: give finetunes beyond --fit_until or of --holdout_delta")
    if holdout is not None and holdout not in {r.delta for r in runs}:
        raise FitError(f"--holdout_delta {holdout:g}: no run has it (the runs have {sorted({r.delta for r in runs})})")
    if not seen:
        raise FitError(f"no finetune is left to fit on at or below --fit_until {approx(fit_until)}: raise it to "
                       f"{approx(min(p.tokens for p in points))} or more")
    models = fit_models(seen_runs, seen, t_scale, seed)
    boot = bootstrap(seen_runs, seen, models, n_boot, seed)
    reach, all_seeds, checks = models.repeats.penalty.reach(seen), sorted({p.seed for p in points}), []
    for budget in budgets:
        rows = []
        for delta, (mean, se, seeds) in seed_means(unseen, budget).items():
            f = models.forecast(budget, delta)
            before = float(np.mean([p.before for p in unseen if p.tokens == budget and p.delta == delta]))
            measured = {k: mean if k in AFTER else before for k in f}
            error = {k: 100 * (v - measured[k]) / measured[k] for k, v in f.items()}
            repeats = budget * delta / models.repeats.penalty.full
            rows.append({"delta": delta, "measured_after": mean, "se_after": se, "seeds": seeds, "measured_before": before,
                         "forecast": f, "error_pct": error, "within": {k: abs(error[k]) <= max(GOAL_ERROR_PCT, 200 * (se or 0) / mean)
                                                                      for k in AFTER},
                         "onset": onset(models.law.params, delta, t_scale, models.law.max_tokens), "repeats": repeats,
                         "unobserved": models.unobserved(budget, delta, reach),
                         "interval": {k: interval([b.forecast(budget, delta)[k] for b in boot]) for k in f} if boot else {}})
        best, measured = min(rows, key=lambda r: r["measured_after"]), [r["measured_after"] for r in rows]
        summary = {}
        for key in AFTER:
            forecast = np.array([r["forecast"][key] for r in rows])
            draws = np.array([[b.forecast(budget, r["delta"])[key] for r in rows] for b in boot]).reshape(len(boot), len(rows))
            pick = choose(forecast, draws, np.ones(len(rows), bool))
            ranks = len(rows) >= 3 and np.ptp(forecast) > 0 and np.ptp(measured) > 0
            summary[key] = {"spearman": float(stats.spearmanr(forecast, measured).statistic) if ranks else None,
                            "recommended": rows[pick["index"]]["delta"],
                            "tie": None if pick["tie"] is None else rows[pick["tie"]]["delta"],
                            "regret_pct": 100 * (rows[pick["index"]]["measured_after"] - best["measured_after"])
                            / best["measured_after"],
                            "max_abs_error_pct": max(abs(r["error_pct"][key]) for r in rows),
                            "within": sum(r["within"][key] for r in rows)}
        missing = [f"delta {r['delta']:g} lacks seed {', '.join(map(str, sorted(set(all_seeds) - set(r['seeds']))))}"
                   for r in rows if set(r["seeds"]) != set(all_seeds)]
        checks.append({"tokens": budget, "rows": rows, "summary": summary, "best_measured": best["delta"],
                       "missing_seeds": missing})
    cut_at = fit_until < math.inf
    return {"fit_until": fit_until if cut_at else None, "holdout_delta": holdout, "by": models.by, "choice": models.choice,
            "scope": " and ".join(([f"T <= {approx(fit_until)}"] if cut_at else [])
                                  + ([f"without delta {holdout:g}"] if holdout is not None else [])),
            "pilot_budgets": sorted({p.tokens for p in whole(seen, runs)}), "reach": reach,
            "penalty": models.repeats.penalty._asdict(), "law_rmse": models.law.rmse, "law_flags": models.law.flags,
            "budgets": checks}


def rolling(runs, points, t_scale: float, n_boot: int, seed: int, known: dict) -> list[dict]:
    """The check from every origin with 3 or more finetuned budgets, to each budget up to 4x larger: one
    row per (origin, budget) with the recommending forecast's verdict. `known`: a check already made."""
    budgets, rows = sorted({p.tokens for p in whole(points, runs)}), []
    for origin in budgets[2:]:
        if not [b for b in budgets if origin < b <= 4 * origin]:
            continue
        check = known if known and known["fit_until"] == origin else \
            forecast_check(runs, points, origin, None, t_scale, n_boot, seed, horizon=4 * origin)
        for b in (b for b in check["budgets"] if b["tokens"] <= 4 * origin):
            s = b["summary"][check["by"]]
            rows.append({"origin": origin, "tokens": b["tokens"], "by": check["by"], "best_measured": b["best_measured"],
                         **{k: s[k] for k in ("recommended", "tie", "regret_pct", "max_abs_error_pct", "within")},
                         "deltas": len(b["rows"])})
    return rows


def recommend(models: Models, boot: list[Models], target: float, candidates: list[float], domain_tokens: int,
              reach: float | None) -> dict:
    """Every candidate's forecasts at the target; the one of least expected regret by `by` is recommended."""
    key, fit, full = models.by, models.law, domain_tokens
    lo, hi = min(fit.deltas), max(fit.deltas)
    rows = [{"delta": d, "repeats": target * d / full, "trained": d in fit.deltas, "inside": lo <= d <= hi,
             "onset": onset(fit.params, d, fit.t_scale, fit.max_tokens),
             "unobserved": models.unobserved(target, d, reach), **models.forecast(target, d)} for d in candidates]
    eligible = np.array([r["inside"] for r in rows])
    draws = np.array([[b.forecast(target, r["delta"])[key] for r in rows] for b in boot]).reshape(len(boot), len(rows))
    pick = choose(np.array([r[key] for r in rows]), draws, eligible)
    for i, r in enumerate(rows):
        if boot:
            r.update(interval=interval(draws[:, i]), expected_regret_pct=pick["expected_regret_pct"][i])
    return {"target_tokens": target, "by": key, "rows": rows, "recommended": rows[pick["index"]],
            "tie": None if pick["tie"] is None else rows[pick["tie"]]["delta"]}


def curves(models: Models, runs: list[Run], points: list[Finetuned], target: float) -> dict:
    """What the plots draw (laws_report.py), kept in the results: the law at every fitted delta from the
    first eval to the target, and every arm after finetuning from its first pilot to 4x its last."""
    fit, arms = models.law, []
    grid = np.geomspace(min(r.tokens.min() for r in runs), max(target, fit.max_tokens), 200)
    for d, u in models.repeats.coef if models.repeats else []:
        tokens = sorted(p.tokens for p in points if (p.delta, p.domain_tokens) == (d, u))
        arm_grid = np.geomspace(tokens[0], 4 * tokens[-1], 60)
        arms.append({"delta": d, "domain_tokens": u, "onset": models.repeats.penalty.onset(u), "tokens": arm_grid,
                     "loss": models.repeats(arm_grid, d, u)})
    return {"tokens": grid, "arms": arms,
            "law": [dict(zip(("delta", "train", "gap"), (d, *law(fit.params, grid / fit.t_scale, d)))) for d in fit.deltas]}


# ---------------------------------------------------------------------------------------------
# 6. Command line: fit, forecast, recommend, then write the results and report them (laws_report.py)

def fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 <= v < 1 for v in values):
        raise ValueError(text)
    return values


def parse_args(argv):
    p = settings.ArgumentParser(prog="fit_laws.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="pretraining run folders (train.py --out_dir)")
    p.add_argument("--finetune", nargs="+", default=[], metavar="FT", help="finetune.py folders of their checkpoints")
    p.add_argument("--target_tokens", type=settings.token_count,
                   help="budget to recommend a domain_frac for, e.g. 40M (default: the largest fitted)")
    p.add_argument("--candidates", type=fractions,
                   help="domain_frac values to compare, e.g. 0,0.01,0.05 (default: the runs' own)")
    p.add_argument("--fit_until", type=settings.token_count,
                   help="forecast check: refit on T <= this, compare with the finetunes beyond it")
    p.add_argument("--holdout_delta", type=float,
                   help="forecast check: refit without the runs and finetunes of this domain_frac, forecast them")
    p.add_argument("--rolling", action="store_true", help="forecast checks from every earlier budget too (part 4)")
    p.add_argument("--bootstrap", type=settings.integer, default=20, help="bootstrap refits for intervals (0: none)")
    p.add_argument("--seed", type=settings.integer, default=0, help="seed of the starting points and of the bootstrap")
    p.add_argument("--out", default="fit_results.json", help="results JSON; PNG plots go next to it")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    if args.bootstrap < 0 or args.seed < 0:
        raise FitError("--bootstrap and --seed must be >= 0")
    return args


def fit_and_report(args) -> dict:
    warnings = []
    runs, setting = load_runs(args.run_dirs, warnings)
    points = load_finetunes(args.finetune, setting, warnings)
    max_tokens = max(float(r.tokens.max()) for r in runs)
    t_scale = float(10.0 ** round(math.log10(max_tokens)))
    target = args.target_tokens or max_tokens
    step = setting["tokens_per_step"]  # a milestone is the first whole step past its token count: so is fit_until
    fit_until = math.inf if args.fit_until is None else math.ceil(args.fit_until / step) * step
    if target < min(fit_until, max_tokens):
        raise FitError(f"--target_tokens {approx(target)} is below the pilots' {approx(min(fit_until, max_tokens))} "
                       f"tokens: that was measured, not forecast; give a larger target")
    full = whole(runs, runs)
    fitted = sorted({r.delta for r in full})
    candidates = args.candidates or fitted
    if not any(fitted[0] <= d <= fitted[-1] for d in candidates):
        raise FitError(f"no candidate is within the fitted domain_frac range [{fitted[0]:g}, {fitted[-1]:g}]: give "
                       f"--candidates in it")
    check = forecast_check(runs, points, fit_until, args.holdout_delta, t_scale, args.bootstrap, args.seed) \
        if args.fit_until is not None or args.holdout_delta is not None else None  # (first: bad input fails fast)
    models = fit_models(runs, points, t_scale, args.seed)
    boot = bootstrap(runs, points, models, args.bootstrap, args.seed)
    fit, reach = models.law, models.repeats and models.repeats.penalty.reach(points)
    results = {"runs": [{"path": r.path, "delta": r.delta, "domain_tokens": r.domain_tokens, "seed": r.seed,
                         "tokens": r.tokens, "train": r.train, "test": r.test} for r in runs],
               "finetunes": [p._asdict() for p in points], "domain_tokens": setting["domain_tokens"],
               "domain_sets": sorted(set(setting["datasets"].values()), reverse=True),
               "dataset_id": setting["dataset_id"], "settings": {**vars(args), "target_tokens": target},
               "law": {"params": fit.params._asdict(), "t_scale": t_scale, "deltas": fit.deltas, "rmse": fit.rmse,
                       "runs": len(full), "flags": fit.flags, "stage1": fit.per_delta,
                       "interval": {n: interval([getattr(b.law.params, n) for b in boot]) for n in Params._fields}
                       if boot else {}},
               "penalty": models.repeats and models.repeats.penalty._asdict(), "reach": reach, "choice": models.choice,
               "post": {name: {"exponent": p.exponent, "coef": {f"{k:g}" if name != "repeats" else f"{k[0]:g} @ U={k[1]}":
                                                                c for k, c in p.coef.items()}}
                        for name, p in (("drop", models.drop), ("direct", models.direct), ("repeats", models.repeats)) if p},
               "forecast": recommend(models, boot, target, candidates, setting["domain_tokens"], reach),
               "best_by_budget": [{"tokens": float(t), "delta": recommend(models, [], t, candidates,
                                                                           setting["domain_tokens"], reach)
                                   ["recommended"]["delta"]} for t in np.geomspace(max_tokens, 100 * max_tokens, 13)],
               "check": check,
               "rolling": rolling(runs, points, t_scale, args.bootstrap, args.seed, check) if args.rolling else None,
               "curves": curves(models, runs, points, target), "ci_level": CI_LEVEL,
               "warnings": warnings + [m for b in (check or {}).get("budgets", []) for m in b["missing_seeds"]]}
    results = json.loads(json.dumps(results, default=lambda v: np.asarray(v).tolist()))  # numpy -> plain JSON
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    results["plots"] = [] if args.no_plots else plot_all(results, os.path.splitext(args.out)[0])
    settings.atomic_write(args.out, lambda f: json.dump(results, f, indent=1), mode="w")
    print(format_report(results))
    return results


def main(argv=None):
    try:
        return fit_and_report(parse_args(argv))
    except (FitError, settings.TrainError, data.DataError) as e:
        sys.exit(f"fit_laws.py: {e}")


if __name__ == "__main__":
    main()
