"""fit_laws.py -- overfitting scaling laws for specialized pretraining, and the best domain_frac.

Specialized pretraining (SPT) mixes a small domain corpus D_dom into pretraining as a constant fraction
delta (= domain_frac) of the tokens, repeating it as often as needed. More delta helps the domain until
the repeats make the model memorise D_dom: its domain *test* loss then stops falling and turns back up.
This file fits the paper's law for that curve from a few pilot runs, forecasts it for any delta and
token budget, and recommends the delta that gives the lowest domain test loss *after finetuning*.

The law (PAPER.md, "Overfitting scaling laws")
-----------------------------------------------
Why split the test loss in two: a single saturating power law L = E + B/T^beta (Chinchilla) only ever
falls, so it cannot describe a test loss that turns up. The domain *train* loss, measured on the very
tokens that are repeated, does keep falling (memorisation only helps it); what grows is the train-test
*gap*. So the law models both, as power laws in pretraining tokens T whose coefficients depend on delta:

    L_train(T, d) = A_train * T^b_train(d) + C_train(d)        falls: b_train(d) < 0
    L_gap(T, d)   = A_gap(d) * T^b_gap(d)                      grows sublinearly: 0 < b_gap(d) < 1
    L_test(T, d)  = L_train(T, d) + L_gap(T, d)
    b_x(d)        = d * b_x_s + (1 - d) * b_x_g                x in {train, gap}
    A_gap(d)      = a1 * d^a2 * exp(a3 * d)                    "gamma kernel": A_gap(0) = 0 when a2 > 0
    C_train(d)    = k0 - k1 * log(d + k2) - k3 * d             "log-linear": k2 > 0 keeps d = 0 finite

Twelve parameters: A_train, b_train_s, b_train_g, b_gap_s, b_gap_g, a1, a2, a3, k0, k1, k2, k3. The
exponent line b_x(d) interpolates between its value for general data (b_x_g, at d = 0) and for pure
specialised data (b_x_s, at d = 1), so bounding both ends bounds the whole line: the fit's box bounds
(BOUNDS below) encode the expected signs for every delta in [0, 1].

Overfitting onset. d L_test / dT = A_train b_train T^(b_train-1) + A_gap b_gap T^(b_gap-1) changes sign
once, from - to +, because the growing term wins by a factor T^(b_gap - b_train) that only increases.
So the test loss has a single minimum, in closed form:
    T* = (-A_gap b_gap / (A_train b_train))^(1 / (b_train - b_gap)).
The test loss keeps falling until T*; beyond it more tokens at that delta make the domain loss worse.
We report T* when it lies within ONSET_HORIZON (1000) times the largest token count of the fit, and
"none in range" otherwise (and always for delta = 0, which has no gap).

How the law is fitted
---------------------
Tokens are divided by t_scale, the power of ten nearest the largest token count in the fit, so T^b is
O(1) and the coefficients are comparable: A_train is the reducible train loss at T = t_scale tokens.
Every reported coefficient refers to that unit (see "t_scale" in the output).
  Stage 1 ("each delta on its own"): every delta gets its own A_train, A_gap and C_train, with the four
    exponent endpoints shared. Given the exponents the rest is linear, so we solve it by least squares
    inside a bounded search over the exponents. This shows what A_gap(d) and C_train(d) look like
    before any functional form is imposed, and seeds stage 2.
  Stage 2 (the paper's 12-parameter law): scipy.optimize.least_squares (mean squared error on the
    domain train and domain test losses, as the paper does) with box bounds, an analytic Jacobian, and
    several starting points: the one derived from stage 1 (gamma kernel fitted to the stage-1 A_gap's
    in log space, log-linear C to the stage-1 C's) plus random ones; the lowest error wins.
  Uncertainty: a bootstrap refits the law on resampled data, starting from the full fit. "runs"
    resamples whole runs within each delta (needs several seeds per delta); "points" resamples the eval
    points of each run. Points on one loss curve are correlated, so "points" intervals are optimistic.
  Flags: a parameter that ends on a bound means the data pushed past the expected sign (e.g. a gap that
    does not grow); stage 1 adds what the free fits show (a rising train loss, a negative gap, A_train
    differing a lot across deltas although the law shares it). All are listed under "flags", and the
    report notes when the law fits worse than the baselines: read such forecasts with suspicion.
  delta = 0: domain train and test are both unseen, so their gap is ~0 plus noise and the law pins it to
    zero. A clear offset there means the two splits differ in distribution; we warn and report it.
  Enough data: C_train has 4 parameters and A_gap 3, so the fit needs runs at >= 4 distinct deltas,
    >= 3 of them nonzero, each with >= 3 usable eval points; with less it stops with an error. Early
    evals are warmup transients that no power law in T describes: --min_tokens drops them.

Finetuning drop and the recommendation
--------------------------------------
Finetuning a checkpoint lowers its domain test loss by Delta(T) = L_test(pretrained) - best L_test(after
finetuning), with its own power law a * T^b + c, fitted in one of three ways:
  shared     one curve for all deltas (3 parameters);
  offset     a shared decay a * T^b with a level c per delta (2 + one per delta): SPT checkpoints
             typically gain less from finetuning, and this captures that from few checkpoints;
  per_delta  a curve per delta (3 per delta).
"auto" takes the one with the lowest leave-one-out error and says why; modes whose left-out fits
would be undetermined are not cross-validated (3 checkpoints per delta cannot validate per_delta).
An unfinetuned delta gets its drop interpolated linearly between its neighbours. For a given b the
curve is linear in a and the c's, so b is found by a scan plus a bounded refinement: no starting
points to get wrong. When the checkpoints span fewer than three token counts no curve in T can be
fitted; the drop measured at each delta is then used as a constant ("constant", with a warning).
A predicted drop is never below zero (the best point of a finetuning run includes its start).
The forecast after finetuning is L_test(T, d) - Delta(T, d); the recommended delta is the candidate
with the lowest one at the target budget, with its repeats E = T * d / |D_dom|. Bootstrap laws give an
interval for every candidate and how often each candidate wins (the drop fit is held fixed there).

Baselines and extrapolation checks
----------------------------------
Two laws that can only saturate, fitted per delta to the domain test loss with the Chinchilla
paper's objective: Huber loss (threshold 1e-3) on log loss, summed, from a grid of starting points
(minimised by trust-region least squares rather than L-BFGS; same objective, see fit_saturating):
  chinchilla:        L = E + B / T^beta
  data_constrained:  L = E + B / T'^beta, with T' = D'/d the pretraining tokens "worth" the domain data
                     seen: D' = U + U * R* * (1 - exp(-R / R*)) (Muennighoff et al. 2023), U = unique
                     domain tokens seen, R = repeats beyond the first epoch, R* = 15.4. T' = T until
                     the first repeat (and for d = 0), then saturates near (1 + R*) epochs' worth:
                     the law credits the domain loss to domain data only, and flattens there.
Neither has a delta dependence of its own: for an unseen delta we interpolate their parameters (E,
log B, beta) linearly between the neighbouring fitted deltas. Checks, as the paper does them:
  --holdout_frac d   refit without the runs at delta d and report the error predicting them, and the
                     predicted onset next to the observed minimum of that run's test loss;
  --fit_until T0     refit on tokens <= T0 and report the error on the points beyond.
Each check reports the error of the paper's law next to both baselines: RMSE in nats, mean and max
absolute percentage error (MAPE) of the domain test loss.

Inputs (written by train.py and finetune.py)
--------------------------------------------
  RUN_DIR/config.json   domain_frac, dataset_id, domain_train_tokens (= |D_dom|), and the model shape:
                        model_config and/or model and n_params (runs must agree on all present)
  RUN_DIR/log.jsonl     one eval per line: step, tokens, domain_train_loss, domain_test_loss, ...
                        Lines at tokens 0 (or below --min_tokens) are skipped; a repeated step (resumed
                        run) keeps its last line; NaN losses are dropped with a warning; a truncated last
                        line (run still writing) is ignored with a warning.
  FT_DIR/finetune.json  pretrain_tokens, domain_frac, dataset_id, pretrained.domain_test_loss,
                        best.domain_test_loss (FT_DIR or the json file itself may be given)
Runs from different datasets (dataset_id) or model shapes are refused.

Usage
-----
  python fit_laws.py out/run_d0 out/run_d0.01 ... --finetune out/ft_* --target_tokens 20B \\
      --candidates 0,0.001,0.01,0.02,0.05,0.1 [--holdout_frac 0.1] [--fit_until 5e9] \\
      [--bootstrap 50] [--bootstrap_unit auto] [--starts 8] [--drop_mode auto] [--min_tokens 0] \\
      [--seed 0] [--out fit_results.json] [--no_plots]
List the run folders first (--finetune takes every path after it). Token counts accept suffixes K, M,
B, T (20B = 2e10). Writes the results JSON (atomically) and, next to it, <stem>_curves.png (data and
fitted train / gap / test curves per delta), <stem>_recommendation.png (post-finetuning loss against
delta at the target budget) and, with a check, <stem>_checks.png (the scored data against each law's
forecast). Reading the printed report: the parameter table (with bootstrap intervals and flags); stage 1's free per-delta coefficients next to the values
of the fitted A_gap(delta) and C_train(delta) (large disagreements mean the functional forms do not
suit the data); the fit errors of each law, in sample and held out, with its parameter count; the
drop law and why its mode was chosen; and one row per candidate delta: pretraining test loss, drop,
post-finetuning loss with its interval, repeats, overfitting onset, and how often it won across the
bootstrap fits. A * marks candidates outside the fitted deltas (extrapolated in delta).

API (for scripts/study.py)
--------------------------
  load_runs(dirs, min_tokens=0) -> list[Run]
  load_finetunes(paths, dataset_id=None, model_config=None) -> list[dict]   (keys: path, delta, tokens, drop)
  fit_pretraining_law(runs, starts=8, seed=0, bootstrap=0, bootstrap_unit="auto", t_scale=None) -> Law
      Law.predict(tokens, delta) -> {"train", "gap", "test"};  Law.onset(delta) -> tokens or None;
      Law.param_dict(), Law.ci(), Law.flags, Law.stage1, Law.gap_at_zero
  fit_baselines(runs, t_scale) -> dict;  predict_baseline(baselines, name, tokens, delta)
  fit_finetune_drop(ft_results, mode="auto") -> Drop;  predict_drop(drop, tokens, delta)
  recommend(law, drop, target_tokens, candidates, domain_tokens) -> dict  (drop may be None)
  holdout_check(runs, delta, ..., t_scale=None), fit_until_check(runs, max_tokens, ..., t_scale=None) -> dict
  main(argv=None) -> results dict (the same content as the JSON)
Errors are raised as FitLawsError (main turns them into one line); data problems that can be worked
around are FitLawsWarning.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

PARAM_NAMES = ("A_train", "b_train_s", "b_train_g", "b_gap_s", "b_gap_g",
               "a1", "a2", "a3", "k0", "k1", "k2", "k3")
# Box bounds that encode the expected signs. Exponent endpoints inside a range keep the whole line
# b_x(d) inside it. a2 > 0 makes A_gap(0) = 0; k2 > 0 keeps C_train(0) finite; k1 >= 0 because more
# domain data cannot raise the irreducible domain train loss. k2 <= 1: beyond it log(d + k2) is nearly
# linear for d in [0, 1], which is the k3 term's job, and the fit would drift along that valley. a3 is
# free within a range where exp(a3 * d) stays representable for d <= 1.
BOUNDS = {
    "A_train": (0.0, np.inf), "b_train_s": (-3.0, 0.0), "b_train_g": (-3.0, 0.0),
    "b_gap_s": (0.0, 1.0), "b_gap_g": (0.0, 1.0),
    "a1": (0.0, np.inf), "a2": (0.01, 5.0), "a3": (-100.0, 100.0),
    "k0": (-np.inf, np.inf), "k1": (0.0, np.inf), "k2": (1e-6, 1.0), "k3": (-np.inf, np.inf),
}
LOWER = np.array([BOUNDS[n][0] for n in PARAM_NAMES])
UPPER = np.array([BOUNDS[n][1] for n in PARAM_NAMES])
EXPONENTS = slice(1, 5)          # b_train_s, b_train_g, b_gap_s, b_gap_g
R_STAR = 15.4                    # Muennighoff et al. (2023), R*_D
ONSET_HORIZON = 1000.0           # report an onset only up to this many times the largest fitted T
HUBER_DELTA = 1e-3               # Chinchilla's Huber threshold on log loss
CI_LEVEL = 0.95
ZERO_GAP_TOLERANCE = 0.02        # nats: a larger mean test-train gap at delta = 0 gets a warning
A_TRAIN_SPREAD = 3.0             # stage-1 A_train differing by more across deltas gets a flag
DEFAULT_CANDIDATES = "0,0.001,0.01,0.02,0.05,0.1"


class FitLawsError(Exception):
    """Bad input or an impossible fit; main() prints it as one line."""


class FitLawsWarning(UserWarning):
    """A data problem that was worked around (points dropped, a fallback taken)."""


def _warn(message):
    warnings.warn(message, FitLawsWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------------
# Loading and checking the inputs
# ------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Run:
    """One pretraining run: its config and the eval points kept for fitting (tokens > 0)."""
    path: str
    delta: float
    dataset_id: str
    model: object
    domain_tokens: int
    tokens: np.ndarray
    train: np.ndarray
    test: np.ndarray

    def subset(self, mask):
        return Run(self.path, self.delta, self.dataset_id, self.model, self.domain_tokens,
                   self.tokens[mask], self.train[mask], self.test[mask])


def _require(obj, key, where):
    if key not in obj:
        raise FitLawsError(f"{where}: missing field '{key}'")
    return obj[key]


def _read_json(path):
    if not os.path.isfile(path):
        raise FitLawsError(f"{path}: not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise FitLawsError(f"{path}: invalid JSON ({exc})") from None


def _read_log(path):
    """Log lines by step (the last line wins, so a resumed run's repeats are overwritten)."""
    if not os.path.isfile(path):
        raise FitLawsError(f"{path}: not found")
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    by_step = {}
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):      # a run that is still writing leaves a partial last line
                _warn(f"{path}: ignoring truncated last line {i}")
                continue
            raise FitLawsError(f"{path} line {i}: invalid JSON") from None
        for key in ("step", "tokens", "domain_train_loss", "domain_test_loss"):
            _require(entry, key, f"{path} line {i}")
        by_step[entry["step"]] = entry
    return [by_step[s] for s in sorted(by_step)]


def _as_float(value):
    return float("nan") if value is None else float(value)


def load_run(run_dir, min_tokens=0):
    """Read RUN_DIR/config.json and RUN_DIR/log.jsonl into a Run (T = 0 and NaN points dropped)."""
    cfg_path = os.path.join(run_dir, "config.json")
    cfg = _read_json(cfg_path)
    for key in ("domain_frac", "dataset_id", "domain_train_tokens"):
        _require(cfg, key, cfg_path)
    if not {"model_config", "model", "n_params"} & set(cfg):
        raise FitLawsError(f"{cfg_path}: missing field 'model_config' (or 'model', 'n_params')")
    log_path = os.path.join(run_dir, "log.jsonl")
    entries = _read_log(log_path)
    tokens = np.array([float(e["tokens"]) for e in entries])
    train = np.array([_as_float(e["domain_train_loss"]) for e in entries])
    test = np.array([_as_float(e["domain_test_loss"]) for e in entries])
    # Power laws in T are undefined at T = 0, and the first evals are warmup transients.
    keep = (tokens > 0) & (tokens >= min_tokens)
    finite = np.isfinite(train) & np.isfinite(test)
    if np.any(keep & ~finite):
        _warn(f"{log_path}: excluded {int(np.sum(keep & ~finite))} eval point(s) "
              "with NaN/inf/null losses")
    keep &= finite
    # train.py writes the full shape as model_config ("model" is then just the preset's name)
    model = (cfg.get("model_config", cfg.get("model")), cfg.get("n_params"))
    return Run(run_dir, float(cfg["domain_frac"]), str(cfg["dataset_id"]), model,
               int(cfg["domain_train_tokens"]), tokens[keep], train[keep], test[keep])


def check_compatible(runs):
    """Refuse runs from different datasets or model shapes: one law describes one setting."""
    if not runs:
        raise FitLawsError("no runs given")
    first = runs[0]
    for run in runs[1:]:
        if run.dataset_id != first.dataset_id:
            raise FitLawsError(f"runs from different datasets: {first.path} has dataset_id "
                               f"{first.dataset_id!r}, {run.path} has {run.dataset_id!r}")
        if run.model != first.model:
            raise FitLawsError(f"runs with different model sizes: {first.path} and {run.path}")
        if run.domain_tokens != first.domain_tokens:
            raise FitLawsError(f"runs disagree on domain_train_tokens: {first.path} and {run.path}")


def load_runs(dirs, min_tokens=0):
    """Load and check a set of runs (one dataset, one model shape)."""
    runs = [load_run(d, min_tokens) for d in dirs]
    check_compatible(runs)
    return runs


def load_finetunes(paths, dataset_id=None, model_config=None):
    """Read finetune.json files (or folders holding one) into drop points: dicts with path, delta,
    tokens (the checkpoint's pretraining tokens) and drop (pretrained minus best domain test loss).
    With dataset_id / model_config (the runs'), finetunes of another dataset or model shape are refused."""
    points, replays = [], set()
    for path in paths:
        file = os.path.join(path, "finetune.json") if os.path.isdir(path) else path
        ft = _read_json(file)
        for key in ("pretrain_tokens", "domain_frac", "dataset_id", "pretrained", "best"):
            _require(ft, key, file)
        if dataset_id is not None and ft["dataset_id"] != dataset_id:
            raise FitLawsError(f"{file}: dataset_id {ft['dataset_id']!r} differs from the "
                               f"runs' {dataset_id!r}")
        shape = _shape(ft.get("model_config"))
        if shape and _shape(model_config) and shape != _shape(model_config):
            raise FitLawsError(f"{file}: finetuned a model of another shape than the runs' "
                               f"({shape} vs {_shape(model_config)})")
        replays.add(ft.get("replay") or 0.0)
        if float(ft["pretrain_tokens"]) <= 0:
            _warn(f"{file}: excluded (a checkpoint at 0 pretraining tokens: the drop law is a power of T)")
            continue
        if ft["best"] is None:
            _warn(f"{file}: excluded (no finetuning configuration has a result)")
            continue
        before = _as_float(_require(ft["pretrained"], "domain_test_loss", f"{file}: pretrained"))
        after = _as_float(_require(ft["best"], "domain_test_loss", f"{file}: best"))
        if not (math.isfinite(before) and math.isfinite(after)):
            _warn(f"{file}: excluded (NaN/inf/null domain_test_loss)")
            continue
        points.append({"path": file, "delta": float(ft["domain_frac"]),
                       "tokens": float(ft["pretrain_tokens"]), "drop": before - after})
    if len(replays) > 1:
        raise FitLawsError(f"finetune results mix general-data replay fractions {sorted(replays)}; "
                           "one drop law describes one finetuning recipe")
    return points


def _shape(model_config):
    """A model's shape, whether or not its embeddings are tied (finetuning unties them)."""
    if not isinstance(model_config, dict):
        return None
    return {k: v for k, v in model_config.items() if k != "tie_embeddings"}


# ------------------------------------------------------------------------------------------------
# The law
# ------------------------------------------------------------------------------------------------

def _exponents(p, d):
    return d * p[1] + (1 - d) * p[2], d * p[3] + (1 - d) * p[4]


def _a_gap(p, d):
    return p[5] * d ** p[6] * np.exp(p[7] * d)


def _c_train(p, d):
    return p[8] - p[9] * np.log(d + p[10]) - p[11] * d


def law_terms(p, t, d):
    """(train, gap) of the law with parameter vector p at scaled tokens t and fraction d."""
    b_train, b_gap = _exponents(p, d)
    return p[0] * t ** b_train + _c_train(p, d), _a_gap(p, d) * t ** b_gap


def _law_jacobians(p, t, d):
    """d(train)/dp and d(gap)/dp, each (n_points, 12): exact derivatives make the fits fast."""
    b_train, b_gap = _exponents(p, d)
    log_t = np.log(t)
    power_train, power_gap = t ** b_train, t ** b_gap
    kernel = d ** p[6] * np.exp(p[7] * d)
    gap = p[5] * kernel * power_gap
    log_d = np.log(np.where(d > 0, d, 1.0))   # d^a2 * log d -> 0 at d = 0
    zero = np.zeros_like(t)
    j_train = np.stack([power_train, p[0] * power_train * log_t * d,
                        p[0] * power_train * log_t * (1 - d), zero, zero, zero, zero, zero,
                        np.ones_like(t), -np.log(d + p[10]) + zero, -p[9] / (d + p[10]) + zero,
                        -d + zero], axis=1)
    j_gap = np.stack([zero, zero, zero, gap * log_t * d, gap * log_t * (1 - d),
                      kernel * power_gap, gap * log_d, gap * d, zero, zero, zero, zero], axis=1)
    return j_train, j_gap


def _token_scale(max_tokens):
    """The power of ten nearest the largest token count: the unit of T inside the fit."""
    return float(10.0 ** round(math.log10(max_tokens)))


@dataclass
class Law:
    """A fitted law. Parameters refer to tokens in units of t_scale."""
    params: np.ndarray
    t_scale: float
    deltas: list
    max_tokens: float
    rmse: float
    stage1: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    boot: np.ndarray | None = None
    bootstrap_unit: str | None = None
    gap_at_zero: dict | None = None

    def predict(self, tokens, delta, params=None):
        """Domain train, gap and test loss at raw token count(s) `tokens` and fraction(s) `delta`."""
        p = self.params if params is None else params
        t = np.asarray(tokens, dtype=float) / self.t_scale
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            train, gap = law_terms(p, t, np.asarray(delta, dtype=float))
        return {"train": train, "gap": gap, "test": train + gap}

    def onset(self, delta, params=None):
        """Tokens where the test loss at `delta` turns up (closed form, see docstring), or None."""
        p = self.params if params is None else params
        b_train, b_gap = _exponents(p, delta)
        a_gap = _a_gap(p, delta)
        if not (a_gap > 0 and b_gap > 0 and p[0] > 0 and b_train < 0):
            return None
        log_t = math.log(-a_gap * b_gap / (p[0] * b_train)) / (b_train - b_gap)
        tokens = math.exp(log_t) * self.t_scale if log_t < 700 else math.inf
        return tokens if tokens <= ONSET_HORIZON * self.max_tokens else None

    def param_dict(self, params=None):
        p = self.params if params is None else params
        return {name: float(v) for name, v in zip(PARAM_NAMES, p)}

    def ci(self, level=CI_LEVEL):
        """Percentile bootstrap interval of every parameter (empty without a bootstrap)."""
        if self.boot is None or len(self.boot) == 0:
            return {}
        lo, hi = np.percentile(self.boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return {name: [float(a), float(b)] for name, a, b in zip(PARAM_NAMES, lo, hi)}


def _stack(runs, t_scale):
    return {"t": np.concatenate([r.tokens for r in runs]) / t_scale,
            "d": np.concatenate([np.full(len(r.tokens), r.delta) for r in runs]),
            "train": np.concatenate([r.train for r in runs]),
            "test": np.concatenate([r.test for r in runs])}


def _check_enough_data(runs):
    """The joint law must be identifiable: 4 C_train parameters need 4 deltas, 3 A_gap ones need 3
    nonzero deltas, and stage 1 needs 3 points per run."""
    for run in runs:
        if len(run.tokens) < 3:
            raise FitLawsError(f"{run.path}: {len(run.tokens)} usable eval point(s) (finite "
                               "losses, tokens > 0 and >= --min_tokens); need at least 3")
    deltas = sorted({r.delta for r in runs})
    if len(deltas) < 4 or sum(d > 0 for d in deltas) < 3:
        raise FitLawsError(f"the 12-parameter law needs >= 4 distinct domain_frac values, >= 3 of "
                           f"them nonzero (C_train has 4 parameters, A_gap 3); got {deltas}")


# ---- stage 1: each delta on its own ------------------------------------------------------------

def _stage1_linear(expo, data):
    """Given the exponents, solve each delta's (A_train, C_train, A_gap) by linear least squares.
    Returns the residuals and the per-delta coefficients."""
    p = np.zeros(len(PARAM_NAMES))
    p[EXPONENTS] = expo
    residuals, rows = [], []
    for delta in np.unique(data["d"]):
        m = data["d"] == delta
        b_train, b_gap = _exponents(p, delta)
        power_train, power_gap = data["t"][m] ** b_train, data["t"][m] ** b_gap
        ones, zeros = np.ones(m.sum()), np.zeros(m.sum())
        design = np.vstack([np.column_stack([power_train, ones, zeros]),
                            np.column_stack([power_train, ones, power_gap])])
        target = np.concatenate([data["train"][m], data["test"][m]])
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        residuals.append(design @ coef - target)
        rows.append({"delta": float(delta), "A_train": float(coef[0]), "C_train": float(coef[1]),
                     "A_gap": float(coef[2])})
    return np.concatenate(residuals), rows


def fit_per_delta(data):
    """Stage 1: free A_train, A_gap and C_train per delta, shared exponent endpoints."""
    best = None
    for x0 in ([-0.5, -0.3, 0.5, 0.3], [-0.2, -0.2, 0.3, 0.3], [-1.0, -1.0, 0.7, 0.7]):
        res = optimize.least_squares(lambda e: _stage1_linear(e, data)[0], x0,
                                     bounds=(LOWER[EXPONENTS], UPPER[EXPONENTS]))
        if best is None or res.cost < best.cost:
            best = res
    _, rows = _stage1_linear(best.x, data)
    return {"exponents": dict(zip(PARAM_NAMES[EXPONENTS], map(float, best.x))), "per_delta": rows}


def _gamma_kernel_init(d, a_gap):
    """log A_gap = log a1 + a2 log d + a3 d is linear: fit it to the positive stage-1 values."""
    ok = (d > 0) & (a_gap > 0)
    if ok.sum() >= 3:
        design = np.column_stack([np.ones(ok.sum()), np.log(d[ok]), d[ok]])
        c = np.linalg.lstsq(design, np.log(a_gap[ok]), rcond=None)[0]
        return [math.exp(c[0]), c[1], c[2]]
    if ok.any():
        return [float(np.mean(a_gap[ok] / d[ok])), 1.0, 0.0]
    return [1e-3, 1.0, 0.0]


def _log_linear_init(d, c_train):
    """For fixed k2, C = k0 - k1 log(d + k2) - k3 d is linear: scan k2, solve the rest."""
    best = None
    for k2 in np.logspace(-5, 0, 26):
        design = np.column_stack([np.ones_like(d), -np.log(d + k2), -d])
        coef, *_ = np.linalg.lstsq(design, c_train, rcond=None)
        err = np.sum((design @ coef - c_train) ** 2)
        if best is None or err < best[0]:
            best = (err, [coef[0], coef[1], k2, coef[2]])
    return best[1]


def _inside(p):
    """Clip into the box, strictly inside finite bounds (least_squares needs a feasible start)."""
    margin = 1e-9 * (1 + np.abs(np.where(np.isfinite(LOWER), LOWER, 0)))
    return np.clip(p, LOWER + margin, UPPER - margin)


def _init_from_stage1(stage1):
    rows = stage1["per_delta"]
    d = np.array([r["delta"] for r in rows])
    a_train = np.array([r["A_train"] for r in rows])
    p = np.array([np.median(a_train[a_train > 0]) if np.any(a_train > 0) else 1.0,
                  *stage1["exponents"].values(),
                  *_gamma_kernel_init(d, np.array([r["A_gap"] for r in rows])),
                  *_log_linear_init(d, np.array([r["C_train"] for r in rows]))])
    return _inside(p)


def _random_start(rng, init):
    """A start near init in scale, anywhere in the sign-allowed range for the shape parameters."""
    p = init.copy()
    p[0] *= math.exp(rng.normal(0, 0.5))
    p[EXPONENTS] = rng.uniform(LOWER[EXPONENTS], UPPER[EXPONENTS])
    p[5] *= math.exp(rng.normal(0, 1.0))
    p[6] = rng.uniform(0.2, 2.0)
    p[7] = rng.uniform(-30.0, 10.0)
    p[9] *= math.exp(rng.normal(0, 0.5))
    p[10] = 10 ** rng.uniform(-4, 0)
    return _inside(p)


# ---- stage 2: the joint law ----------------------------------------------------------------------

def _joint_fit(data, starts):
    """Least squares on domain train and test loss from each start; the lowest cost wins."""
    t, d = data["t"], data["d"]
    target = np.concatenate([data["train"], data["test"]])

    def residuals(p):
        train, gap = law_terms(p, t, d)
        return np.concatenate([train, train + gap]) - target

    def jacobian(p):
        j_train, j_gap = _law_jacobians(p, t, d)
        return np.vstack([j_train, j_train + j_gap])

    best = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for x0 in starts:
            try:
                res = optimize.least_squares(residuals, x0, jac=jacobian, bounds=(LOWER, UPPER),
                                             x_scale="jac", max_nfev=2000)
            except ValueError:          # a start whose residuals overflow: skip it
                continue
            if np.isfinite(res.cost) and (best is None or res.cost < best.cost):
                best = res
    if best is None:
        raise FitLawsError("the joint fit failed from every starting point")
    return best.x, math.sqrt(2 * best.cost / len(target))


def _sign_flags(p, deltas):
    """Parameters that ended on a bound: the data wanted to break the expected sign or range."""
    why = {"b_train": "train loss that does not fall (b_train(delta) reaches 0)",
           "b_gap_lo": "a gap that does not grow (b_gap(delta) reaches 0)",
           "b_gap_hi": "a gap that grows linearly or faster (b_gap(delta) reaches 1)",
           "a1": "no train-test gap at all (a1 = 0): the law reduces to a saturating power law",
           "a2": "a flat A_gap(delta): A_gap(0) = 0 is barely enforced (a2 at its lower bound)",
           "k1": "C_train(delta) does not fall near delta = 0 (k1 at its bound 0)",
           "k2": "a log singularity of C_train at delta = 0 (k2 at its lower bound)"}
    ends = np.array([0.0, max(deltas)])
    b_train, b_gap = _exponents(p, ends)
    flags = []
    if np.max(b_train) > -1e-4:
        flags.append(why["b_train"])
    if np.min(b_gap) < 1e-4:
        flags.append(why["b_gap_lo"])
    if np.max(b_gap) > 1 - 1e-4:
        flags.append(why["b_gap_hi"])
    if p[5] < 1e-8:
        flags.append(why["a1"])
    for i, name in ((6, "a2"), (9, "k1"), (10, "k2")):
        if p[i] <= LOWER[i] * (1 + 1e-3) + 1e-8:
            flags.append(why[name])
    if abs(p[7]) >= UPPER[7] * (1 - 1e-3):
        flags.append(f"a3 at its bound ({p[7]:.0f})")
    return flags


def _stage1_flags(stage1):
    """What the free per-delta fits say about the law's assumptions."""
    flags = []
    for row in stage1["per_delta"]:
        if row["delta"] > 0 and row["A_gap"] < 0:
            flags.append(f"stage 1: delta={row['delta']:g} has a negative gap coefficient "
                         "(its test loss falls below its train loss)")
        if row["A_train"] < 0:
            flags.append(f"stage 1: delta={row['delta']:g} has a rising domain train loss, which "
                         "the law cannot describe (exclude the run, or raise --min_tokens)")
    a_train = [row["A_train"] for row in stage1["per_delta"] if row["A_train"] > 0]
    if a_train and max(a_train) > A_TRAIN_SPREAD * min(a_train):
        flags.append(f"stage 1: A_train varies {max(a_train) / min(a_train):.0f}x across deltas; "
                     "the law shares one A_train, so expect a poor fit")
    return flags


def _zero_gap_check(runs):
    """At delta = 0 both domain splits are unseen: a clear gap means they differ in distribution."""
    gaps = np.concatenate([r.test - r.train for r in runs if r.delta == 0] or [np.empty(0)])
    if len(gaps) == 0:
        return None
    mean = float(np.mean(gaps))
    if abs(mean) > ZERO_GAP_TOLERANCE:
        _warn(f"delta=0 runs have a mean domain test-train gap of {mean:+.3f} nats; the law assumes "
              "none without domain data, so it ends up in the residuals (do the domain train and "
              "test splits come from the same distribution?)")
    return {"mean": mean, "std": float(np.std(gaps)), "n": int(len(gaps))}


def _bootstrap_indices(runs, unit, rng):
    """Indices into the stacked points of one bootstrap replicate."""
    offsets = np.cumsum([0] + [len(r.tokens) for r in runs])
    spans = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(runs))]
    if unit == "points":
        return np.concatenate([rng.choice(s, size=len(s)) for s in spans])
    chosen = []
    for delta in sorted({r.delta for r in runs}):
        members = [i for i, r in enumerate(runs) if r.delta == delta]
        chosen += list(rng.choice(members, size=len(members)))
    return np.concatenate([spans[i] for i in chosen])


def _resolve_bootstrap_unit(runs, unit):
    if unit not in ("auto", "runs", "points"):
        raise FitLawsError(f"bootstrap_unit must be auto, runs or points, not {unit!r}")
    counts = [sum(r.delta == d for r in runs) for d in {r.delta for r in runs}]
    if unit == "runs" and min(counts) < 2:  # every replicate would be the data itself: zero-width intervals
        raise FitLawsError("--bootstrap_unit runs resamples runs within each delta and needs two or more "
                           "of every delta: use points (or auto)")
    if unit != "auto":
        return unit
    return "runs" if min(counts) >= 2 else "points"


def _bootstrap(runs, data, params, n, unit, rng):
    boot = []
    for _ in range(n):
        idx = _bootstrap_indices(runs, unit, rng)
        sample = {k: v[idx] for k, v in data.items()}
        boot.append(_joint_fit(sample, [params])[0])
    return np.array(boot)


def fit_pretraining_law(runs, starts=8, seed=0, bootstrap=0, bootstrap_unit="auto", t_scale=None):
    """Fit the 12-parameter law (stage 1 then the joint fit); optionally bootstrap it.

    t_scale is the token unit (default: the power of ten nearest the largest token count). It is
    part of the law, not just of its numerics: A_train is shared while the exponent varies with
    delta, so A_train (T/s)^b(d) describes another family for another s. Refits that check a law
    (holdout_check, fit_until_check) therefore reuse its unit."""
    check_compatible(runs)
    _check_enough_data(runs)
    rng = np.random.default_rng(seed)
    max_tokens = max(float(r.tokens.max()) for r in runs)
    t_scale = t_scale or _token_scale(max_tokens)
    data = _stack(runs, t_scale)
    stage1 = fit_per_delta(data)
    init = _init_from_stage1(stage1)
    params, rmse = _joint_fit(data, [init] + [_random_start(rng, init)
                                              for _ in range(max(starts, 1) - 1)])
    deltas = sorted({r.delta for r in runs})
    for row in stage1["per_delta"]:     # the imposed delta-functions next to the free values
        row["A_gap_law"] = float(_a_gap(params, row["delta"]))
        row["C_train_law"] = float(_c_train(params, row["delta"]))
    law = Law(params, t_scale, deltas, max_tokens, rmse, stage1,
              _sign_flags(params, deltas) + _stage1_flags(stage1), gap_at_zero=_zero_gap_check(runs))
    if bootstrap > 0:
        law.bootstrap_unit = _resolve_bootstrap_unit(runs, bootstrap_unit)
        law.boot = _bootstrap(runs, data, params, bootstrap, law.bootstrap_unit, rng)
    return law


# ------------------------------------------------------------------------------------------------
# Baselines that can only saturate
# ------------------------------------------------------------------------------------------------

def effective_tokens(tokens, delta, domain_tokens, r_star=R_STAR):
    """Pretraining tokens 'worth' the domain data seen, D'/delta, with Muennighoff et al.'s
    D' = U + U R* (1 - exp(-R/R*)): equal to tokens until the first repeat, then saturating."""
    tokens = np.asarray(tokens, dtype=float)
    if delta == 0:
        return tokens
    seen = tokens * delta
    unique = np.minimum(seen, domain_tokens)
    repeats = seen / unique - 1
    return (unique + unique * r_star * (1 - np.exp(-repeats / r_star))) / delta


def fit_saturating(x, y):
    """L = E + B / x^beta fitted as Chinchilla does: Huber loss (threshold 1e-3) on log loss, summed,
    from a grid of starts, with E = exp(e) and B = exp(b) kept positive.

    Chinchilla minimised that sum with L-BFGS. least_squares(loss="huber", f_scale=delta) minimises
    the very same sum (its cost is delta^2/2 * rho((r/delta)^2), which is Huber_delta(r)), but with
    a trust-region method that uses the residual structure. It reaches the same minimum in fewer,
    cheaper steps; L-BFGS on this tiny, nearly piecewise-linear objective must also be rescaled, or
    its gradient test (made for O(1) functions) stops it at the start."""
    log_x, log_y = np.log(x), np.log(y)

    def residuals(theta):
        e, b, beta = theta
        return np.logaddexp(e, b - beta * log_x) - log_y

    def jacobian(theta):
        e, b, beta = theta
        weight_e = np.exp(e - np.logaddexp(e, b - beta * log_x))
        return np.column_stack([weight_e, 1 - weight_e, -(1 - weight_e) * log_x])

    best = None
    for x0 in _saturating_starts(x, y):
        res = optimize.least_squares(residuals, x0, jac=jacobian, loss="huber",
                                     f_scale=HUBER_DELTA, bounds=([-np.inf, -np.inf, 0.0],
                                                                  [np.inf, np.inf, 5.0]))
        if best is None or res.cost < best.cost:
            best = res
    e, b, beta = best.x
    return {"E": math.exp(e), "log_B": float(b), "beta": float(beta)}


def _saturating_starts(x, y, keep=2):
    """Starting points (log E, log B, beta): a grid over beta, with E and B for each solved by linear
    least squares (the law is linear in them); the best few with E, B > 0, plus a generic one."""
    scored = []
    for beta in np.linspace(0.05, 2.0, 40):
        design = np.column_stack([np.ones_like(x), x ** -beta])
        (e, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        if e > 0 and b > 0:
            scored.append((np.sum((design @ [e, b] - y) ** 2), [math.log(e), math.log(b), beta]))
    scored.sort(key=lambda s: s[0])
    return [s[1] for s in scored[:keep]] + [[math.log(0.9 * y.min()), 0.0, 0.5]]


BASELINES = ("chinchilla", "data_constrained")


def _baseline_x(name, tokens, delta, domain_tokens):
    return tokens if name == "chinchilla" else effective_tokens(tokens, delta, domain_tokens)


def fit_baselines(runs, t_scale):
    """Both baselines, per delta, on the domain test loss (x in units of t_scale)."""
    fits = {"t_scale": t_scale, "domain_tokens": runs[0].domain_tokens}
    for name in BASELINES:
        fits[name] = {}
        for delta in sorted({r.delta for r in runs}):
            group = [r for r in runs if r.delta == delta]
            x = np.concatenate([_baseline_x(name, r.tokens, delta, r.domain_tokens) for r in group])
            fits[name][delta] = fit_saturating(x / t_scale, np.concatenate([r.test for r in group]))
    return fits


def predict_baseline(fits, name, tokens, delta):
    """Domain test loss of a baseline; an unfitted delta interpolates the parameters (E, log B,
    beta) linearly between its fitted neighbours (clamped at the ends)."""
    deltas = sorted(fits[name])
    params = {k: np.interp(delta, deltas, [fits[name][d][k] for d in deltas])
              for k in ("E", "log_B", "beta")}
    x = _baseline_x(name, tokens, delta, fits["domain_tokens"]) / fits["t_scale"]
    return params["E"] + np.exp(params["log_B"] - params["beta"] * np.log(x))


# ------------------------------------------------------------------------------------------------
# Extrapolation checks
# ------------------------------------------------------------------------------------------------

def _errors(pred, y, n_params):
    ape = 100 * np.abs(pred - y) / y
    return {"rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "mape": float(np.mean(ape)),
            "max_ape": float(np.max(ape)), "n": int(len(y)), "n_params": int(n_params)}


def _law_errors(law, baselines, runs):
    """Error of the paper's law and each baseline on the domain test loss of `runs`, with the
    number of parameters each fitted (the baselines have 3 per delta)."""
    y = np.concatenate([r.test for r in runs])
    pred = np.concatenate([law.predict(r.tokens, r.delta)["test"] for r in runs])
    out = {"paper_law": _errors(pred, y, len(PARAM_NAMES))}
    for name in BASELINES:
        pred = np.concatenate([predict_baseline(baselines, name, r.tokens, r.delta) for r in runs])
        out[name] = _errors(pred, y, 3 * len(baselines[name]))
    return out


def _observed_onset(runs, noise):
    """Tokens of the lowest observed test loss if the curve then rises by more than 3 x `noise`
    (the fit's RMSE), so that a noisy flat end does not count as overfitting; else None."""
    tokens = np.concatenate([r.tokens for r in runs])
    test = np.concatenate([r.test for r in runs])
    i = int(np.argmin(test))
    return float(tokens[i]) if test[np.argmax(tokens)] - test[i] > 3 * noise else None


def _n_points(runs):
    return int(sum(len(r.tokens) for r in runs))


def _check_curves(law, baselines, runs, delta):
    """Test-loss forecasts of every law at `delta` from the first eval to twice the last, with the
    observed points: the picture of a check (only the paper's law can turn up)."""
    own = [r for r in runs if r.delta == delta]
    tokens = np.concatenate([r.tokens for r in own])
    grid = np.geomspace(tokens.min(), 2 * tokens.max(), 100)
    curves = {"delta": delta, "tokens": grid, "paper_law": law.predict(grid, delta)["test"]}
    for name in BASELINES:
        curves[name] = predict_baseline(baselines, name, grid, delta)
    curves["observed"] = {"tokens": tokens, "test": np.concatenate([r.test for r in own])}
    return curves


def _refit(runs, starts, seed, check, t_scale):
    """Fit the law for a check; its warnings were already given by the main fit, and its errors
    name the check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitLawsWarning)
            return fit_pretraining_law(runs, starts=starts, seed=seed, t_scale=t_scale)
    except FitLawsError as exc:
        raise FitLawsError(f"{check}: {exc}") from None


def holdout_check(runs, delta, starts=8, seed=0, t_scale=None):
    """Refit without the runs at `delta`; report the error predicting them."""
    held = [r for r in runs if math.isclose(r.delta, delta, rel_tol=1e-9, abs_tol=1e-12)]
    if not held:
        raise FitLawsError(f"--holdout_frac {delta:g}: no run has that domain_frac "
                           f"(have {sorted({r.delta for r in runs})})")
    kept = [r for r in runs if all(r is not h for h in held)]
    law = _refit(kept, starts, seed, f"--holdout_frac {delta:g}", t_scale)
    baselines = fit_baselines(kept, law.t_scale)
    return {"delta": held[0].delta, "n_fit_points": _n_points(kept), "t_scale": law.t_scale,
            "errors": _law_errors(law, baselines, held),
            "onset_predicted": law.onset(held[0].delta),
            "onset_observed": _observed_onset(held, law.rmse),
            "curves": _check_curves(law, baselines, held, held[0].delta)}


def fit_until_check(runs, max_tokens, starts=8, seed=0, t_scale=None):
    """Refit on points with tokens <= max_tokens; report the error on the points beyond. The curves
    show the largest delta, where turning up matters most."""
    early = [r.subset(r.tokens <= max_tokens) for r in runs]
    late = [r for r in (r.subset(r.tokens > max_tokens) for r in runs) if len(r.tokens)]
    if not late:
        raise FitLawsError(f"--fit_until {max_tokens:.3g}: no eval points beyond it to check")
    law = _refit(early, starts, seed, f"--fit_until {max_tokens:.3g}", t_scale)
    baselines = fit_baselines(early, law.t_scale)
    return {"fit_until": max_tokens, "n_fit_points": _n_points(early), "t_scale": law.t_scale,
            "errors": _law_errors(law, baselines, late),
            "curves": _check_curves(law, baselines, runs, max(r.delta for r in runs))}


# ------------------------------------------------------------------------------------------------
# The finetuning drop
# ------------------------------------------------------------------------------------------------

DROP_MODES = ("shared", "offset", "per_delta")


@dataclass
class Drop:
    """The finetuning drop Delta(T) = a (T/t_scale)^b + c. params maps "all" (mode shared) or each
    finetuned delta (modes offset, per_delta, constant) to its {"a", "b", "c"}."""
    mode: str
    params: dict
    t_scale: float
    cv_rmse: dict
    reason: str
    max_tokens: float = math.inf     # the last finetuned checkpoint: beyond it the law extrapolates
    min_tokens: float = 0.0          # the first one: below it, too


def _fit_power_offset(x, y, labels):
    """y = a x^b + c_label. For fixed b this is linear in a and the c's: scan b, refine it in its
    grid cell, solve the rest. Returns {label: {"a", "b", "c"}}."""
    levels = np.unique(labels)
    onehot = (labels[:, None] == levels[None, :]).astype(float)

    def solve(b):
        design = np.column_stack([x ** b, onehot])
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        return float(np.sum((design @ coef - y) ** 2)), coef

    grid = np.linspace(-3.0, 3.0, 241)
    errs = [solve(b)[0] for b in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    b = optimize.minimize_scalar(lambda v: solve(v)[0], bounds=(lo, hi), method="bounded").x
    b = b if solve(b)[0] <= errs[i] else grid[i]
    coef = solve(b)[1]
    return {float(level): {"a": float(coef[0]), "b": float(b), "c": float(c)}
            for level, c in zip(levels, coef[1:])}


def _drop_fittable(mode, x, deltas):
    """Whether a mode's parameters are determined: a power law with an offset needs 3 distinct
    token counts (with two, every exponent fits); in offset mode the shape (a, b) comes from
    differences within each delta."""
    distinct = [len(np.unique(x[deltas == d])) for d in np.unique(deltas)]
    if len(np.unique(x)) < 3:
        return False
    if mode == "per_delta":
        return min(distinct) >= 3
    return mode == "shared" or sum(n - 1 for n in distinct) >= 2


def _fit_drop_mode(mode, x, deltas, drops):
    if mode == "shared":
        return {"all": _fit_power_offset(x, drops, np.zeros(len(x)))[0.0]}
    if mode == "offset":
        return _fit_power_offset(x, drops, deltas)
    return {float(d): _fit_power_offset(x[deltas == d], drops[deltas == d],
                                        np.zeros(int(np.sum(deltas == d))))[0.0]
            for d in np.unique(deltas)}


def _loo_rmse(mode, x, deltas, drops, t_scale):
    """Leave-one-out error of a mode, or None when some left-out fit would be undetermined."""
    errs = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        if not _drop_fittable(mode, x[keep], deltas[keep]):
            return None
        drop = Drop(mode, _fit_drop_mode(mode, x[keep], deltas[keep], drops[keep]), t_scale, {}, "")
        errs.append(predict_drop(drop, x[i] * t_scale, deltas[i]) - drops[i])
    return float(np.sqrt(np.mean(np.square(errs))))


def _choose_drop_mode(x, deltas, drops, t_scale, mode):
    """The fittable mode with the lowest leave-one-out error (fewer parameters break ties and
    decide when nothing can be cross-validated). Returns (mode, cv errors, reason)."""
    fittable = {m: _drop_fittable(m, x, deltas) for m in DROP_MODES}
    cv = {m: _loo_rmse(m, x, deltas, drops, t_scale) if fittable[m] else None for m in DROP_MODES}
    if mode != "auto":
        if not fittable[mode]:
            raise FitLawsError(f"drop mode {mode}: too few distinct pretraining token counts among "
                               "the finetuned checkpoints")
        return mode, cv, "chosen by the user"
    options = [m for m in DROP_MODES if fittable[m]]
    if not options:
        return "constant", cv, "checkpoints span < 3 token counts: no curve in T can be fitted"
    best = min(options, key=lambda m: (cv[m] is None, cv[m] or 0.0))
    if cv[best] is None:
        return best, cv, "too few checkpoints to cross-validate; took the simplest fittable mode"
    scores = "; ".join(f"{m} {cv[m]:.4f}" for m in options if cv[m] is not None)
    return best, cv, f"lowest leave-one-out RMSE ({scores})"


def fit_finetune_drop(ft_results, mode="auto"):
    """Fit Delta(T) = a T^b + c to finetuned checkpoints: one curve for all deltas ("shared"), one
    level c per delta with a shared decay ("offset"), or a curve per delta ("per_delta")."""
    if mode not in ("auto",) + DROP_MODES:
        raise FitLawsError(f"drop mode must be auto or one of {DROP_MODES}, not {mode!r}")
    if not ft_results:
        raise FitLawsError("no usable finetune results")
    tokens = np.array([f["tokens"] for f in ft_results])
    deltas = np.array([f["delta"] for f in ft_results])
    drops = np.array([f["drop"] for f in ft_results])
    t_scale = _token_scale(tokens.max())
    x = tokens / t_scale
    chosen, cv, reason = _choose_drop_mode(x, deltas, drops, t_scale, mode)
    if chosen == "constant":
        _warn("finetune drop: " + reason + "; using the measured drop per delta at every budget")
        params = {float(d): {"a": 0.0, "b": 0.0, "c": float(np.mean(drops[deltas == d]))}
                  for d in np.unique(deltas)}
    else:
        params = _fit_drop_mode(chosen, x, deltas, drops)
    return Drop(chosen, params, t_scale, cv, reason, float(tokens.max()), float(tokens.min()))


def predict_drop(drop, tokens, delta):
    """Predicted finetuning drop; modes with per-delta parameters interpolate the drop linearly
    between the finetuned deltas (and hold it constant beyond them). Never below zero: the best
    point of a finetuning run includes its starting checkpoint, so finetuning cannot raise the loss
    (an extrapolated curve could say otherwise)."""
    x = np.asarray(tokens, dtype=float) / drop.t_scale
    if drop.mode == "shared":
        return np.maximum(_power_offset(drop.params["all"], x), 0.0)
    deltas = sorted(drop.params)
    return np.maximum(np.interp(delta, deltas, [_power_offset(drop.params[d], x) for d in deltas]),
                      0.0)


def _power_offset(p, x):
    return p["a"] * x ** p["b"] + p["c"]


# ------------------------------------------------------------------------------------------------
# Forecast and recommendation
# ------------------------------------------------------------------------------------------------

def recommend(law, drop, target_tokens, candidates, domain_tokens):
    """Post-finetuning domain test loss of each candidate delta at the target budget; the argmin.
    Without a drop fit the pretraining test loss is compared instead."""
    rows = []
    for delta in candidates:
        drop_value = float(predict_drop(drop, target_tokens, delta)) if drop else 0.0
        pretrain = float(law.predict(target_tokens, delta)["test"])
        row = {"delta": float(delta), "pretrain_test_loss": pretrain, "drop": drop_value,
               "post_ft_loss": pretrain - drop_value,
               "repeats": target_tokens * delta / domain_tokens,
               "onset_tokens": law.onset(delta),
               "extrapolated_delta": not (min(law.deltas) <= delta <= max(law.deltas))}
        if law.boot is not None and len(law.boot):
            row["_boot"] = np.array([law.predict(target_tokens, delta, p)["test"]
                                     for p in law.boot]) - drop_value
            lo, hi = np.percentile(row["_boot"], [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)])
            row["post_ft_ci"] = [float(lo), float(hi)]
        rows.append(row)
    if any("_boot" in r for r in rows):
        winners = np.argmin(np.stack([r.pop("_boot") for r in rows]), axis=0)
        for i, row in enumerate(rows):
            row["win_frac"] = float(np.mean(winners == i))
    best = min(rows, key=lambda r: r["post_ft_loss"])
    return {"target_tokens": float(target_tokens), "uses_finetune_drop": drop is not None,
            "drop_extrapolation": target_tokens / drop.max_tokens if drop else None,
            "drop_below_checkpoints": drop.min_tokens / target_tokens if drop else None,
            "candidates": rows, "recommended": best}


# ------------------------------------------------------------------------------------------------
# Output: JSON, report, plots
# ------------------------------------------------------------------------------------------------

def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json_atomic(obj, path):
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fit_laws.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _fmt_tokens(tokens):
    if tokens is None:
        return "none in range"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.3g}"


def _fmt_errors(title, errors):
    lines = [title, f"  {'law':<18}{'params':>7}{'RMSE':>9}{'MAPE %':>9}{'max %':>9}{'points':>8}"]
    for name, e in errors.items():
        lines.append(f"  {name:<18}{e['n_params']:7d}{e['rmse']:9.4f}{e['mape']:9.3f}"
                     f"{e['max_ape']:9.3f}{e['n']:8d}")
    return lines


def format_report(results):
    """The printed table: parameters, errors, drop law, forecast and recommendation."""
    law = results["law"]
    lines = [f"Overfitting law ({len(results['inputs']['runs'])} runs, deltas "
             f"{law['deltas']}; tokens in units of t_scale = {law['t_scale']:.0e})",
             f"  {'param':<10}{'value':>11}   {int(CI_LEVEL * 100)}% bootstrap CI"]
    for name, value in law["params"].items():
        ci = law["ci"].get(name)
        ci_text = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "(no bootstrap)"
        lines.append(f"  {name:<10}{value:11.4g}   {ci_text}")
    lines += ["  flags:"] + [f"    - {flag}" for flag in law["flags"]] if law["flags"] else \
        ["  flags: none"]
    lines.append("Stage 1, each delta with free A_train, A_gap, C_train (next to the fitted "
                 "A_gap(delta), C_train(delta)):")
    lines.append(f"  {'delta':>7}{'A_train':>10}{'A_gap':>10}{'A_gap(d)':>10}{'C_train':>10}"
                 f"{'C_train(d)':>11}")
    for row in law["stage1"]["per_delta"]:
        lines.append(f"  {row['delta']:7g}{row['A_train']:10.4g}{row['A_gap']:10.4g}"
                     f"{row['A_gap_law']:10.4g}{row['C_train']:10.4g}{row['C_train_law']:11.4g}")
    in_sample = results["errors"]["in_sample"]
    lines += _fmt_errors("Fit errors, domain test loss, in sample:", in_sample)
    if in_sample["paper_law"]["rmse"] > min(in_sample[name]["rmse"] for name in BASELINES):
        lines.append("  note: the paper's law fits these runs worse than the saturating baselines; "
                     "check the flags and plots before trusting its forecasts")
    if "holdout" in results["errors"]:
        h = results["errors"]["holdout"]
        lines += _fmt_errors(f"Held-out delta {h['delta']:g} (fit without it, on "
                             f"{h['n_fit_points']} points):", h["errors"])
        lines.append(f"  onset: paper_law predicts {_fmt_tokens(h['onset_predicted'])}, the "
                     f"baselines never (they only saturate); observed "
                     f"{_fmt_tokens(h['onset_observed'])}")
    if "fit_until" in results["errors"]:
        f = results["errors"]["fit_until"]
        lines += _fmt_errors(f"Beyond {_fmt_tokens(f['fit_until'])} tokens (fit on the "
                             f"{f['n_fit_points']} points up to it):", f["errors"])
    drop = results["drop"]
    if drop:
        lines.append(f"Finetuning drop Delta(T) = a T^b + c (T in units of {drop['t_scale']:.0e}), "
                     f"mode {drop['mode']}: {drop['reason']}")
        for key, p in drop["params"].items():
            lines.append(f"  {key:<8} a={p['a']:.4g} b={p['b']:.4g} c={p['c']:.4g}")
    else:
        lines.append("Finetuning drop: no --finetune results; ranking by pretraining test loss")
    rec = results["forecast"]
    lines.append(f"Forecast at {_fmt_tokens(rec['target_tokens'])} tokens "
                 f"(|D_dom| = {_fmt_tokens(results['inputs']['domain_train_tokens'])}):")
    lines.append(f"  {'delta':>7}{'pretrain':>10}{'drop':>8}{'post-FT':>9}  {'CI':<17}"
                 f"{'repeats':>9}{'onset':>15}{'wins':>6}")
    for r in rec["candidates"]:
        ci = r.get("post_ft_ci")
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        wins = f"{r['win_frac']:.0%}" if "win_frac" in r else "-"
        mark = " *" if r["extrapolated_delta"] else ""
        lines.append(f"  {r['delta']:7g}{r['pretrain_test_loss']:10.4f}{r['drop']:8.4f}"
                     f"{r['post_ft_loss']:9.4f}  {ci_text:<17}{r['repeats']:9.3g}"
                     f"{_fmt_tokens(r['onset_tokens']):>15}{wins:>6}{mark}")
    if (rec["drop_extrapolation"] or 0) > 1:
        lines.append(f"  note: the drop law is extrapolated {rec['drop_extrapolation']:.3g}x beyond the "
                     "last finetuned checkpoint")
    if (rec.get("drop_below_checkpoints") or 0) > 1:
        lines.append(f"  note: the target is {rec['drop_below_checkpoints']:.3g}x below the first finetuned "
                     "checkpoint: the drop law is extrapolated back to it")
    best = rec["recommended"]
    which = "post-finetuning" if rec["uses_finetune_drop"] else "pretraining"
    lines.append(f"Recommended domain_frac: {best['delta']:g} ({which} domain test loss "
                 f"{best['post_ft_loss']:.4f}, {best['repeats']:.3g} repeats of D_dom)"
                 + ("   * = outside the fitted deltas" if any(r["extrapolated_delta"]
                                                              for r in rec["candidates"]) else ""))
    return "\n".join(lines)


def plot_curves(runs, law, path, target_tokens, candidates=()):
    """Data and fitted train / gap / test curves per delta (dashed beyond the data); candidate deltas
    that were never trained get a dotted forecast in the test panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    deltas = sorted({r.delta for r in runs})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(deltas)))
    t_lo = min(float(r.tokens.min()) for r in runs)
    t_hi = max(law.max_tokens, target_tokens)
    grid = np.geomspace(t_lo, t_hi, 200)
    for delta, color in zip(deltas, colors):
        pred = law.predict(grid, delta)
        for ax, key in zip(axes, ("train", "gap", "test")):
            inside = grid <= law.max_tokens
            ax.plot(grid[inside], pred[key][inside], color=color, label=f"delta={delta:g}")
            ax.plot(grid[~inside], pred[key][~inside], color=color, ls="--")
        for r in (r for r in runs if r.delta == delta):
            for ax, y in zip(axes, (r.train, r.test - r.train, r.test)):
                ax.plot(r.tokens, y, "o", ms=3, color=color, alpha=0.6)
    for ax, title in zip(axes, ("domain train loss", "train-test gap", "domain test loss")):
        ax.set_xscale("log")
        ax.set_xlabel("pretraining tokens T")
        ax.set_title(title)
    for i, delta in enumerate(sorted(set(candidates) - set(deltas))):   # deltas never trained
        axes[2].plot(grid, law.predict(grid, delta)["test"], ":", color="k", alpha=0.6, lw=1,
                     label="untrained candidates" if i == 0 else None)
        axes[2].annotate(f"{delta:g}", (grid[-1], law.predict(grid[-1], delta)["test"]), fontsize=7)
    axes[2].axvline(target_tokens, color="gray", ls="-.", lw=0.8, label="target")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_checks(errors, path):
    """One panel per extrapolation check: observed domain test loss and each law's forecast."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = [(k, errors[k]) for k in ("holdout", "fit_until") if k in errors]
    fig, axes = plt.subplots(1, len(checks), figsize=(6.5 * len(checks), 4.5), squeeze=False)
    for ax, (kind, check) in zip(axes[0], checks):
        curves = check["curves"]
        ax.plot(curves["observed"]["tokens"], curves["observed"]["test"], "o", ms=3, color="gray",
                label="observed")
        for name, style in (("paper_law", "-"), ("chinchilla", "--"), ("data_constrained", ":")):
            ax.plot(curves["tokens"], curves[name], style, label=name)
        if kind == "fit_until":
            ax.axvline(check["fit_until"], color="k", lw=0.8, label="fit until")
            ax.set_title(f"fit on T <= {_fmt_tokens(check['fit_until'])}; "
                         f"delta={curves['delta']:g}")
        else:
            ax.set_title(f"delta={curves['delta']:g} held out of the fit")
        ax.set_xscale("log")
        ax.set_xlabel("pretraining tokens T")
        ax.set_ylabel("domain test loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recommendation(recommendation, path):
    """Predicted post-finetuning (and pretraining) domain test loss against delta at the target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = recommendation["candidates"]
    d = np.array([r["delta"] for r in rows])
    post = np.array([r["post_ft_loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(d, post, "o-", label="after finetuning")
    if all("post_ft_ci" in r for r in rows):
        ci = np.array([r["post_ft_ci"] for r in rows])
        ax.fill_between(d, ci[:, 0], ci[:, 1], alpha=0.2,
                        label=f"{int(CI_LEVEL * 100)}% bootstrap interval")
    ax.plot(d, [r["pretrain_test_loss"] for r in rows], "s--", alpha=0.6, label="before finetuning")
    best = recommendation["recommended"]
    ax.plot([best["delta"]], [best["post_ft_loss"]], "r*", ms=15, label=f"best: {best['delta']:g}")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("domain_frac delta")
    ax.set_ylabel("domain test loss")
    ax.set_title(f"forecast at {_fmt_tokens(recommendation['target_tokens'])} tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parse_tokens(text):
    """'2e10', '20B', '6M', '1.5T' -> float tokens."""
    text = str(text).strip()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:].upper())
    try:
        value = float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"token count must be positive: {text!r}")
    return value


def _parse_candidates(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"candidates must be fractions in [0, 1): {text!r}")
    return values


def _parser():
    p = argparse.ArgumentParser(prog="fit_laws.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="pretraining run folders")
    p.add_argument("--finetune", nargs="+", default=[], metavar="FT",
                   help="finetune folders or finetune.json files")
    p.add_argument("--target_tokens", type=parse_tokens, default=None,
                   help="pretraining budget to recommend for (default: the largest T seen)")
    p.add_argument("--candidates", type=_parse_candidates, default=DEFAULT_CANDIDATES)
    p.add_argument("--holdout_frac", type=float, default=None,
                   help="also refit without this delta and report the error predicting it")
    p.add_argument("--fit_until", type=parse_tokens, default=None,
                   help="also refit on tokens <= this and report the error beyond")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap refits (0 = none)")
    p.add_argument("--bootstrap_unit", choices=("auto", "runs", "points"), default="auto")
    p.add_argument("--starts", type=int, default=8, help="starting points of the joint fit")
    p.add_argument("--drop_mode", choices=("auto",) + DROP_MODES, default="auto")
    p.add_argument("--min_tokens", type=parse_tokens, default=0.0,
                   help="ignore eval points below this many tokens (warmup transients)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fit_results.json", help="results JSON; plots go next to it")
    p.add_argument("--no_plots", action="store_true")
    return p


def _analyse(args):
    runs = load_runs(args.run_dirs, min_tokens=args.min_tokens)
    finetunes = load_finetunes(args.finetune, dataset_id=runs[0].dataset_id, model_config=runs[0].model[0])
    law = fit_pretraining_law(runs, args.starts, args.seed, args.bootstrap, args.bootstrap_unit)
    baselines = fit_baselines(runs, law.t_scale)
    drop = fit_finetune_drop(finetunes, args.drop_mode) if args.finetune else None
    target = args.target_tokens or law.max_tokens
    domain_tokens = runs[0].domain_tokens
    errors = {"in_sample": _law_errors(law, baselines, runs)}
    if args.holdout_frac is not None:
        errors["holdout"] = holdout_check(runs, args.holdout_frac, args.starts, args.seed, law.t_scale)
    if args.fit_until is not None:
        errors["fit_until"] = fit_until_check(runs, args.fit_until, args.starts, args.seed, law.t_scale)
    results = {
        "inputs": {"runs": [{"path": r.path, "domain_frac": r.delta, "n_points": len(r.tokens)}
                            for r in runs],
                   "finetune": finetunes, "dataset_id": runs[0].dataset_id, "model": runs[0].model,
                   "domain_train_tokens": domain_tokens},
        "settings": {k: v for k, v in vars(args).items() if k not in ("run_dirs", "finetune")},
        "law": {"t_scale": law.t_scale, "deltas": law.deltas, "params": law.param_dict(),
                "ci": law.ci(), "bootstrap_unit": law.bootstrap_unit, "flags": law.flags,
                "rmse": law.rmse, "stage1": law.stage1, "gap_at_zero": law.gap_at_zero},
        "baselines": {name: baselines[name] for name in BASELINES},
        "errors": errors,
        "drop": drop and {"mode": drop.mode, "params": drop.params, "t_scale": drop.t_scale,
                          "cv_rmse": drop.cv_rmse, "reason": drop.reason,
                          "max_tokens": drop.max_tokens, "min_tokens": drop.min_tokens},
        "forecast": recommend(law, drop, target, args.candidates, domain_tokens),
    }
    results["settings"]["target_tokens"] = target
    return results, runs, law


def main(argv=None):
    """Run the CLI; returns the results dict (also written to --out)."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitLawsWarning)
        try:
            results, runs, law = _analyse(args)
        except FitLawsError as exc:
            raise SystemExit(f"fit_laws: {exc}") from None
        finally:
            messages = list(dict.fromkeys(  # once each, in order
                str(w.message) if issubclass(w.category, FitLawsWarning)
                else f"{w.category.__name__}: {w.message}" for w in caught))
            for message in messages:
                print(f"fit_laws: warning: {message}", file=sys.stderr)
    results["warnings"] = messages
    stem = os.path.splitext(args.out)[0]
    has_checks = {"holdout", "fit_until"} & set(results["errors"])
    results["plots"] = [] if args.no_plots else [
        stem + suffix for suffix in ("_curves.png", "_recommendation.png")
        + (("_checks.png",) if has_checks else ())]
    write_json_atomic(results, args.out)
    if not args.no_plots:
        plot_curves(runs, law, results["plots"][0], results["settings"]["target_tokens"],
                    args.candidates)
        plot_recommendation(results["forecast"], results["plots"][1])
        if has_checks:
            plot_checks(results["errors"], results["plots"][2])
    print(format_report(results))
    print(f"results: {args.out}" + "".join(f"\nplot: {p}" for p in results["plots"]))
    return _jsonable(results)


if __name__ == "__main__":
    main()
