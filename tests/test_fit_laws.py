"""Tests for fit_laws.py on synthetic runs written in train.py's and finetune.py's formats.

The ground truth below is written out independently of fit_laws.py's own model code, so a wrong sign
or exponent in the module cannot cancel out. Its numbers are chosen so the question has a clear
answer: at the 5e10-token target the best post-finetuning delta is 0.02 while the best
pretraining-only delta is 0.05 (the finetuning drop shrinks with delta), each by > 0.01 nats, and
delta = 0.1 overfits inside the data (test loss minimum at ~7.2e10 tokens).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fit_laws  # noqa: E402
from fit_laws import FitLawsError, FitLawsWarning  # noqa: E402

TRUE = dict(A_train=1.0, b_train_s=-0.6, b_train_g=-0.3, b_gap_s=0.8, b_gap_g=0.3,
            a1=3.0, a2=1.0, a3=-2.0, k0=2.0, k1=0.15, k2=0.002, k3=0.5)
UNIT = 1e10                                  # the truth's token unit (fit_laws picks its own)
DELTAS = [0.0, 0.001, 0.01, 0.02, 0.05, 0.1]
CANDIDATES = [0.0, 0.001, 0.01, 0.02, 0.05, 0.1]
TOKENS = np.linspace(2.5e9, 1e11, 40)        # eval points, evenly spaced in steps as train.py logs
TARGET = 5e10
DOMAIN_TOKENS = 30_000_000
FT_TOKENS = [1e10, 2e10, 4e10, 7e10, 1e11]   # finetuned checkpoints per delta
NOISE = 0.002
MODEL = {"n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 256, "block_size": 128}


def true_losses(tokens, delta):
    """(domain train, domain test) loss of the synthetic world."""
    p, t = TRUE, np.asarray(tokens, dtype=float) / UNIT
    b_train = delta * p["b_train_s"] + (1 - delta) * p["b_train_g"]
    b_gap = delta * p["b_gap_s"] + (1 - delta) * p["b_gap_g"]
    train = (p["A_train"] * t ** b_train + p["k0"] - p["k1"] * np.log(delta + p["k2"])
             - p["k3"] * delta)
    gap = p["a1"] * delta ** p["a2"] * np.exp(p["a3"] * delta) * t ** b_gap
    return train, train + gap


def true_drop(tokens, delta):
    """Finetuning lowers the domain loss less the more domain data pretraining already had."""
    return 0.2 / (1 + 30 * delta) * (np.asarray(tokens, dtype=float) / UNIT) ** -0.2 + 0.03


def true_argmin(tokens, candidates, with_drop=True):
    post = [true_losses(tokens, d)[1] - (true_drop(tokens, d) if with_drop else 0)
            for d in candidates]
    return candidates[int(np.argmin(post))]


def write_run(folder, delta, rng, dataset_id="ds-abc", model=MODEL, tokens=TOKENS, extra_lines=()):
    """A run folder in train.py's format: config.json and log.jsonl (step 0 at tokens 0 first)."""
    os.makedirs(folder, exist_ok=True)
    config = {"domain_frac": delta, "data_dir": "data/x", "dataset_id": dataset_id,
              "model": "cpu-mini", "model_config": model, "n_params": 800_000,
              "domain_train_tokens": DOMAIN_TOKENS, "seed": 0}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    train, test = true_losses(tokens, delta)
    train = train + rng.normal(0, NOISE, len(tokens))
    test = test + rng.normal(0, NOISE, len(tokens))
    lines = [{"step": 0, "tokens": 0, "domain_train_loss": 5.5, "domain_test_loss": 5.5}]
    for i, (t, tr, te) in enumerate(zip(tokens, train, test), 1):
        lines.append({"step": i * 100, "tokens": int(t), "domain_frac": delta,
                      "domain_epochs": t * delta / DOMAIN_TOKENS, "lr": 1e-3,
                      "train_loss": 3.0, "general_val_loss": 3.1, "domain_train_loss": float(tr),
                      "domain_test_loss": float(te), "tokens_per_s": 1e4, "elapsed_s": float(i)})
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for line in list(lines) + list(extra_lines):
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return folder


def write_finetune(folder, delta, tokens, rng, drop=true_drop, dataset_id="ds-abc", replay=0.0):
    """A finetune folder in finetune.py's format."""
    os.makedirs(folder, exist_ok=True)
    before = float(true_losses(tokens, delta)[1])
    after = before - float(drop(tokens, delta)) + rng.normal(0, NOISE / 2)
    best = {"lr": 1e-4, "warmup": 100, "step": 500, "epochs": 3.0, "domain_test_loss": after,
            "general_val_loss": 3.2, "domain_train_loss": after - 0.1}
    record = {"init": f"ckpt_{int(tokens)}.pt", "pretrain_tokens": int(tokens), "domain_frac": delta,
              "dataset_id": dataset_id, "replay": replay,
              "pretrained": {"domain_test_loss": before, "domain_train_loss": before - 0.05,
                             "general_val_loss": 3.1},
              "best": best, "configs": [{"lr": 1e-4, "warmup": 100, "best": best,
                                         "curve": [{"step": 500, "epochs": 3.0, **best}]}]}
    with open(os.path.join(folder, "finetune.json"), "w") as f:
        json.dump(record, f)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Six runs and five finetuned checkpoints per delta, written once for the module."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(1234)
    runs = [write_run(str(root / f"run_{d:g}"), d, rng) for d in DELTAS]
    fts = [write_finetune(str(root / f"ft_{d:g}_{t:.0e}"), d, t, rng)
           for d in DELTAS for t in FT_TOKENS]
    return {"root": root, "runs": runs, "fts": fts}


@pytest.fixture(scope="module")
def fitted(study):
    runs = fit_laws.load_runs(study["runs"])
    law = fit_laws.fit_pretraining_law(runs, starts=4, seed=0, bootstrap=4)
    drop = fit_laws.fit_finetune_drop(fit_laws.load_finetunes(study["fts"]))
    return runs, law, drop


# ---- the law itself ------------------------------------------------------------------------------

def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    p = np.array(list(TRUE.values())) * rng.uniform(0.8, 1.2, 12)
    t, d = rng.uniform(0.1, 10, 30), rng.choice(DELTAS, 30)
    j_train, j_gap = fit_laws._law_jacobians(p, t, d)
    for i in range(12):
        step = np.zeros(12)
        step[i] = 1e-6 * max(1.0, abs(p[i]))
        up, down = fit_laws.law_terms(p + step, t, d), fit_laws.law_terms(p - step, t, d)
        np.testing.assert_allclose(j_train[:, i], (up[0] - down[0]) / (2 * step[i]), atol=1e-5)
        np.testing.assert_allclose(j_gap[:, i], (up[1] - down[1]) / (2 * step[i]), atol=1e-5)


def test_onset_is_the_minimum_of_the_test_loss():
    law = fit_laws.Law(np.array(list(TRUE.values())), UNIT, DELTAS, 1e11, 0.0)
    grid = np.geomspace(1e9, 1e14, 20001)
    for delta in (0.02, 0.05, 0.1):
        numeric = grid[np.argmin(true_losses(grid, delta)[1])]
        assert law.onset(delta) == pytest.approx(numeric, rel=1e-3)
    assert law.onset(0.0) is None            # no gap without domain data
    assert law.onset(0.001) is None          # ~1e16 tokens: beyond 1000x the data


# ---- synthetic recovery --------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,delta", [(1.5e11, 0.03), (1.5e11, 0.07), (3e10, 0.005),
                                          (2e11, 0.02), (1e11, 0.08)])
def test_predictions_at_unseen_points_within_one_percent(fitted, tokens, delta):
    _, law, _ = fitted
    pred = law.predict(tokens, delta)
    train, test = true_losses(tokens, delta)
    assert abs(pred["test"] - test) / test < 0.01
    assert abs(pred["train"] - train) / train < 0.01


def test_fit_is_clean_and_has_intervals(fitted):
    _, law, _ = fitted
    assert law.flags == []
    assert law.t_scale == 1e11
    ci = law.ci()
    assert set(ci) == set(fit_laws.PARAM_NAMES)
    assert all(lo <= hi for lo, hi in ci.values())
    assert law.bootstrap_unit == "points"      # one run per delta
    # stage 1 sees the gap grow with delta before any kernel is imposed
    gaps = [r["A_gap"] for r in law.stage1["per_delta"]]
    assert gaps[0] == pytest.approx(0, abs=0.01) and gaps[-1] > gaps[2] > gaps[1]


def test_bootstrap_resamples_whole_runs_when_deltas_have_seeds(fitted):
    runs, _, _ = fitted
    with pytest.raises(FitLawsError, match="needs two or more of every delta"):  # one run each: no spread
        fit_laws.fit_pretraining_law(runs, starts=1, bootstrap=2, bootstrap_unit="runs")
    rng = np.random.default_rng(9)
    seeds = runs + [fit_laws.Run(r.path + "_seed1", r.delta, r.dataset_id, r.model,
                                 r.domain_tokens, r.tokens,
                                 r.train + rng.normal(0, NOISE, len(r.tokens)),
                                 r.test + rng.normal(0, NOISE, len(r.tokens))) for r in runs]
    law = fit_laws.fit_pretraining_law(seeds, starts=1, bootstrap=3)
    assert law.bootstrap_unit == "runs" and law.boot.shape == (3, 12)
    data = fit_laws._stack(seeds, law.t_scale)
    for _ in range(5):   # a replicate draws runs within each delta: every delta stays present
        idx = fit_laws._bootstrap_indices(seeds, "runs", rng)
        assert len(idx) == len(data["d"]) and set(data["d"][idx]) == set(DELTAS)


def test_recommendation_matches_truth(fitted):
    _, law, drop = fitted
    rec = fit_laws.recommend(law, drop, TARGET, CANDIDATES, DOMAIN_TOKENS)
    assert true_argmin(TARGET, CANDIDATES) == 0.02
    assert rec["recommended"]["delta"] == 0.02
    assert rec["recommended"]["repeats"] == pytest.approx(TARGET * 0.02 / DOMAIN_TOKENS)
    for row in rec["candidates"]:
        truth = true_losses(TARGET, row["delta"])[1] - true_drop(TARGET, row["delta"])
        assert row["post_ft_loss"] == pytest.approx(truth, rel=0.01)
        lo, hi = row["post_ft_ci"]
        assert lo <= hi
    assert sum(r["win_frac"] for r in rec["candidates"]) == pytest.approx(1.0)
    # without the finetuning drop the answer is the pretraining argmin, a different delta
    plain = fit_laws.recommend(law, None, TARGET, CANDIDATES, DOMAIN_TOKENS)
    assert plain["recommended"]["delta"] == true_argmin(TARGET, CANDIDATES, with_drop=False) == 0.05


def test_onset_forecast_near_truth(fitted):
    _, law, _ = fitted
    true_law = fit_laws.Law(np.array(list(TRUE.values())), UNIT, DELTAS, 1e11, 0.0)
    assert law.onset(0.1) == pytest.approx(true_law.onset(0.1), rel=0.15)


def test_drop_law_per_delta_chosen_and_recovered(fitted):
    _, _, drop = fitted
    assert drop.mode == "per_delta"                      # the truth's drop depends on delta
    assert drop.cv_rmse["per_delta"] < drop.cv_rmse["shared"]
    for delta in (0.0, 0.02, 0.035, 0.1):                # 0.035 is interpolated
        assert fit_laws.predict_drop(drop, 6e10, delta) == pytest.approx(
            true_drop(6e10, delta), abs=0.01 if delta == 0.035 else 0.003)


def test_drop_law_offset_mode_from_three_checkpoints_per_delta():
    """Three finetuned checkpoints per delta (the cpu-mini study) cannot cross-validate a curve per
    delta; a shared decay with a level per delta is chosen and recovers the truth."""
    rng = np.random.default_rng(2)

    def truth(t, d):
        return 0.1 * (t / 1e6) ** -0.3 + 0.05 - 0.3 * d

    points = [{"path": "x", "delta": d, "tokens": t, "drop": truth(t, d) + rng.normal(0, 2e-4)}
              for d in (0.0, 0.01, 0.02, 0.05, 0.1, 0.2) for t in (1e6, 2e6, 4e6)]
    drop = fit_laws.fit_finetune_drop(points)
    assert drop.mode == "offset"
    assert drop.cv_rmse["per_delta"] is None and drop.cv_rmse["offset"] < drop.cv_rmse["shared"]
    assert "leave-one-out" in drop.reason
    for d in (0.0, 0.03, 0.2):
        assert fit_laws.predict_drop(drop, 4e7, d) == pytest.approx(truth(4e7, d), abs=2e-3)


def test_drop_cross_validation_leaves_the_point_out():
    """An outlier is predicted from the other points only, so its whole size shows in the error."""
    x = np.geomspace(1e8, 1e10, 7)
    y = 0.1 * (x / 1e10) ** -0.3 + 0.02
    y[3] += 0.05
    points = [{"path": "x", "delta": 0.0, "tokens": t, "drop": v} for t, v in zip(x, y)]
    drop = fit_laws.fit_finetune_drop(points, mode="shared")
    assert drop.cv_rmse["shared"] > 0.05 / math.sqrt(len(x))


def test_drop_forecast_is_never_negative():
    """A drop shrinking linearly in T extrapolates below zero; finetuning cannot raise the loss."""
    points = [{"path": "x", "delta": 0.1, "tokens": t, "drop": 0.3 - 1e-6 * t}
              for t in (1e5, 2e5, 3e5, 4e5)]
    drop = fit_laws.fit_finetune_drop(points, mode="shared")
    assert fit_laws.predict_drop(drop, 2.5e5, 0.1) == pytest.approx(0.05, abs=1e-3)
    assert fit_laws.predict_drop(drop, 1e6, 0.1) == 0.0
    assert drop.max_tokens == 4e5


def test_drop_law_shared_recovers_parameters():
    rng = np.random.default_rng(5)
    points = [{"path": "x", "delta": d, "tokens": t,
               "drop": 0.1 * (t / 1e9) ** -0.3 + 0.02 + rng.normal(0, 1e-4)}
              for d in (0.0, 0.05) for t in np.geomspace(1e8, 1e10, 6)]
    drop = fit_laws.fit_finetune_drop(points, mode="shared")
    p = drop.params["all"]
    assert drop.t_scale == 1e10
    assert p["b"] == pytest.approx(-0.3, abs=0.03)
    assert fit_laws.predict_drop(drop, 3e9, 0.02) == pytest.approx(0.1 * 3 ** -0.3 + 0.02,
                                                                   abs=1e-3)


def test_two_token_counts_never_fit_a_curve():
    """Checkpoints at the same two token counts for every delta (the micro study) determine only
    a (x2^b - x1^b): any exponent fits, so no mode with a curve may be chosen."""
    rng = np.random.default_rng(0)
    points = [{"path": "x", "delta": d, "tokens": t, "drop": 0.2 / (1 + 30 * d) * (t / 1e4) ** -0.2
               + rng.normal(0, 1e-3)} for d in (0.0, 0.01, 0.02, 0.05) for t in (4096, 8192)]
    with pytest.warns(FitLawsWarning, match="3 token counts"):
        drop = fit_laws.fit_finetune_drop(points)
    assert drop.mode == "constant"
    for mode in ("shared", "offset", "per_delta"):
        with pytest.raises(FitLawsError, match="too few distinct"):
            fit_laws.fit_finetune_drop(points, mode=mode)


def test_drop_law_falls_back_to_constant_with_one_token_count():
    points = [{"path": "x", "delta": d, "tokens": 1e9, "drop": 0.2 - d} for d in (0.0, 0.1)]
    with pytest.warns(FitLawsWarning, match="constant|token counts"):
        drop = fit_laws.fit_finetune_drop(points)
    assert drop.mode == "constant"
    assert fit_laws.predict_drop(drop, 5e9, 0.05) == pytest.approx(0.15)
    with pytest.raises(FitLawsError, match="too few distinct pretraining token counts"):
        fit_laws.fit_finetune_drop(points, mode="shared")


def test_flags_when_the_data_break_the_law(fitted, capsys):
    """A delta = 0 run whose domain loss rises (the model drifts away from the domain) and a domain
    test split that is harder than its train split are reported, not silently fitted."""
    runs, _, _ = fitted
    rising = [fit_laws.Run(r.path, r.delta, r.dataset_id, r.model, r.domain_tokens, r.tokens,
                           r.train + 5 * r.tokens / 1e11, r.test + 5 * r.tokens / 1e11 + 0.05)
              if r.delta == 0 else r for r in runs]
    with pytest.warns(FitLawsWarning, match="mean domain test-train gap of \\+0.05"):
        law = fit_laws.fit_pretraining_law(rising, starts=2)
    assert any("delta=0 has a rising domain train loss" in f for f in law.flags)
    assert law.gap_at_zero["mean"] == pytest.approx(0.05, abs=0.002)


# ---- extrapolation checks ------------------------------------------------------------------------

def test_holdout_of_the_largest_delta(fitted):
    runs, _, _ = fitted
    check = fit_laws.holdout_check(runs, 0.1, starts=4, seed=0)
    errors = check["errors"]
    assert errors["paper_law"]["n"] == len(TOKENS)
    assert errors["paper_law"]["max_ape"] < 1.0
    # the baselines can only reuse delta = 0.05's curve here, and it does not turn up
    assert errors["chinchilla"]["mape"] > 2 * errors["paper_law"]["mape"]
    assert errors["data_constrained"]["mape"] > 2 * errors["paper_law"]["mape"]
    assert check["onset_observed"] == pytest.approx(7.2e10, rel=0.1)
    assert check["onset_predicted"] == pytest.approx(check["onset_observed"], rel=0.25)
    # the forecast curves show it: only the paper's law turns up
    curves = check["curves"]
    assert 0 < np.argmin(curves["paper_law"]) < len(curves["tokens"]) - 1
    for name in ("chinchilla", "data_constrained"):
        assert np.all(np.diff(curves[name]) <= 1e-12)


def test_checks_never_see_the_data_they_score(fitted):
    """Shift the scored data by 0.3 nats: a check that fits on it would absorb part of the shift."""
    runs, _, _ = fitted
    shifted = [fit_laws.Run(r.path, r.delta, r.dataset_id, r.model, r.domain_tokens, r.tokens,
                            r.train + 0.3, r.test + 0.3) if r.delta == 0.1 else r for r in runs]
    held = fit_laws.holdout_check(shifted, 0.1, starts=2)
    assert held["n_fit_points"] == 5 * len(TOKENS)
    assert held["errors"]["paper_law"]["rmse"] == pytest.approx(0.3, abs=0.02)
    late = TOKENS > 5e10
    shifted = [fit_laws.Run(r.path, r.delta, r.dataset_id, r.model, r.domain_tokens, r.tokens,
                            r.train + 0.3 * late, r.test + 0.3 * late) for r in runs]
    until = fit_laws.fit_until_check(shifted, 5e10, starts=2)
    assert until["n_fit_points"] == 6 * int(np.sum(~late))
    assert until["errors"]["paper_law"]["rmse"] == pytest.approx(0.3, abs=0.02)


def test_fit_until_extrapolates_in_tokens(fitted):
    runs, _, _ = fitted
    check = fit_laws.fit_until_check(runs, 5e10, starts=4, seed=0)
    errors = check["errors"]
    assert errors["paper_law"]["n"] == sum(int(np.sum(TOKENS > 5e10)) for _ in DELTAS)
    assert errors["paper_law"]["max_ape"] < 1.0
    assert errors["paper_law"]["rmse"] < errors["chinchilla"]["rmse"]


# ---- baselines on their own synthetic data -------------------------------------------------------

def test_saturating_fit_recovers_chinchilla_curve():
    x = np.geomspace(0.01, 1, 30)
    y = 1.7 + 0.4 / x ** 0.35
    fit = fit_laws.fit_saturating(x, y)
    assert fit["E"] == pytest.approx(1.7, rel=1e-2)
    assert math.exp(fit["log_B"]) == pytest.approx(0.4, rel=2e-2)
    assert fit["beta"] == pytest.approx(0.35, rel=2e-2)


def test_saturating_fit_is_the_chinchilla_optimum():
    """Our least-squares Huber fit minimises Chinchilla's objective: L-BFGS cannot improve on it."""
    rng = np.random.default_rng(3)
    x = np.linspace(0.05, 1, 25)
    y = 2.0 + 0.3 / x ** 0.5 + rng.normal(0, 0.004, len(x))
    fit = fit_laws.fit_saturating(x, y)

    def chinchilla_objective(theta):
        r = np.logaddexp(theta[0], theta[1] - theta[2] * np.log(x)) - np.log(y)
        huber = np.where(np.abs(r) <= 1e-3, 0.5 * r ** 2, 1e-3 * (np.abs(r) - 0.5e-3))
        return huber.sum() / 1e-6                      # rescaled so L-BFGS's tests apply

    ours = np.array([math.log(fit["E"]), fit["log_B"], fit["beta"]])
    polished = optimize.minimize(chinchilla_objective, ours, method="L-BFGS-B")
    assert polished.fun >= chinchilla_objective(ours) * (1 - 1e-6)


def test_effective_tokens_discount_repeats():
    tokens = np.array([1e8, 1e9, 1e10, 1e12])
    eff = fit_laws.effective_tokens(tokens, 0.1, 1e8)
    # before the first repeat every token counts (1e8 tokens at 10% = 0.1 epoch)
    assert eff[0] == pytest.approx(1e8)
    assert np.all(np.diff(eff) > 0) and np.all(eff <= tokens)
    # saturation at U (1 + R*) / delta
    assert eff[-1] == pytest.approx(1e8 * (1 + fit_laws.R_STAR) / 0.1, rel=1e-3)
    np.testing.assert_array_equal(fit_laws.effective_tokens(tokens, 0.0, 1e8), tokens)


def test_data_constrained_baseline_recovers_its_own_world(tmp_path):
    """Runs generated by the data-constrained law are fitted (and interpolated) by it."""
    deltas, domain = [0.01, 0.05, 0.1], 2e8

    def world(tokens, delta):
        x = fit_laws.effective_tokens(tokens, delta, domain) / 1e11
        return 2.0 - 2 * delta + 0.5 / x ** (0.3 + delta)

    runs = [fit_laws.Run(f"r{d}", d, "ds", MODEL, int(domain), TOKENS, world(TOKENS, d),
                         world(TOKENS, d)) for d in deltas]
    fits = fit_laws.fit_baselines(runs, 1e11)
    for d in deltas:
        pred = fit_laws.predict_baseline(fits, "data_constrained", TOKENS, d)
        np.testing.assert_allclose(pred, world(TOKENS, d), rtol=1e-3)
    # the saturating baseline can never turn back up
    grid = np.geomspace(1e9, 1e14, 50)
    assert np.all(np.diff(fit_laws.predict_baseline(fits, "chinchilla", grid, 0.1)) <= 1e-12)


# ---- command line -----------------------------------------------------------------------------------

def test_cli_end_to_end(study, tmp_path, capsys):
    out = tmp_path / "res" / "fit.json"
    argv = study["runs"] + ["--finetune"] + study["fts"] + [
        "--target_tokens=50B", "--candidates", "0,0.001,0.01,0.02,0.05,0.1", "--bootstrap", "3",
        "--starts=3", "--holdout_frac", "0.1", "--fit_until", "5e10", "--out", str(out)]
    results = fit_laws.main(argv)
    printed = capsys.readouterr().out
    assert "Recommended domain_frac: 0.02" in printed
    assert "Held-out delta 0.1" in printed and "data_constrained" in printed
    saved = json.loads(out.read_text())
    assert saved == results
    assert fit_laws.format_report(saved) in printed      # study.py reprints it from the JSON
    assert saved["forecast"]["recommended"]["delta"] == 0.02
    assert saved["settings"]["target_tokens"] == 5e10
    assert saved["drop"]["mode"] == "per_delta"
    assert set(saved["errors"]) == {"in_sample", "holdout", "fit_until"}
    # the checks refit in the main law's token unit
    assert saved["errors"]["fit_until"]["t_scale"] == saved["errors"]["holdout"]["t_scale"] == saved["law"]["t_scale"]
    assert saved["law"]["gap_at_zero"]["n"] == len(TOKENS)
    assert [p[-len("_checks.png"):] for p in saved["plots"]][-1] == "_checks.png"
    for plot in saved["plots"]:
        assert os.path.getsize(plot) > 10_000
    assert not [f for f in os.listdir(out.parent) if f.endswith(".tmp")]


def test_a_target_below_the_finetuned_checkpoints_is_noted(study, tmp_path, capsys):
    fit_laws.main(study["runs"] + ["--finetune"] + study["fts"] + [
        "--target_tokens=2.5e9", "--bootstrap", "0", "--starts=2", "--no_plots", "--out", str(tmp_path / "f.json")])
    assert "4x below the first finetuned checkpoint" in capsys.readouterr().out


def test_cli_is_deterministic_given_seed(study, tmp_path):
    argv = study["runs"] + ["--bootstrap", "2", "--starts", "2", "--no_plots", "--seed", "7"]
    first = fit_laws.main(argv + ["--out", str(tmp_path / "a.json")])
    second = fit_laws.main(argv + ["--out", str(tmp_path / "b.json")])
    assert first["law"] == second["law"] and first["forecast"] == second["forecast"]
    assert first["drop"] is None and not first["forecast"]["uses_finetune_drop"]


def test_cli_error_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    runs = [write_run(str(tmp_path / f"r{d}"), d, rng) for d in DELTAS[:3]]
    proc = subprocess.run([sys.executable, fit_laws.__file__, *runs, "--no_plots",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "fit_laws: the 12-parameter law needs >= 4 distinct domain_frac values, >= 3 of them "
        "nonzero (C_train has 4 parameters, A_gap 3); got [0.0, 0.001, 0.01]"]
    assert not (tmp_path / "x.json").exists()


# ---- bad input ---------------------------------------------------------------------------------------

def _runs(tmp_path, **overrides):
    rng = np.random.default_rng(0)
    return [write_run(str(tmp_path / f"r{d}"), d, rng, **(overrides if d == 0.1 else {}))
            for d in DELTAS]


@pytest.mark.parametrize("override,message", [
    ({"dataset_id": "other"}, "different datasets"),
    ({"model": {**MODEL, "n_layer": 8}}, "different model sizes"),
])
def test_mixed_runs_are_refused(tmp_path, override, message):
    with pytest.raises(FitLawsError, match=message):
        fit_laws.load_runs(_runs(tmp_path, **override))


def test_missing_fields_are_named(tmp_path):
    dirs = _runs(tmp_path)
    with open(os.path.join(dirs[1], "log.jsonl"), "a") as f:
        f.write(json.dumps({"step": 9999, "tokens": 2e11, "domain_train_loss": 3.0}) + "\n")
        f.write(json.dumps({"step": 10000, "tokens": 2e11}) + "\n")
    with pytest.raises(FitLawsError, match=r"log.jsonl line 42: missing field 'domain_test_loss'"):
        fit_laws.load_runs(dirs)
    config = os.path.join(dirs[2], "config.json")
    cfg = json.load(open(config))
    del cfg["domain_frac"]
    json.dump(cfg, open(config, "w"))
    with pytest.raises(FitLawsError, match="config.json: missing field 'domain_frac'"):
        fit_laws.load_run(dirs[2])
    with pytest.raises(FitLawsError, match="not found"):
        fit_laws.load_run(str(tmp_path / "nowhere"))


def test_nan_points_excluded_with_count_and_resumed_steps_deduplicated(tmp_path):
    rng = np.random.default_rng(0)
    extra = [{"step": 100, "tokens": int(TOKENS[0]), "domain_train_loss": 9.0,
              "domain_test_loss": 9.0},                                   # resumed: replaces step 100
             {"step": 50_000, "tokens": 2e11, "domain_train_loss": float("nan"),
              "domain_test_loss": 3.0},
             {"step": 50_100, "tokens": 2.1e11, "domain_train_loss": None,
              "domain_test_loss": 3.0},
             '{"step": 50200, "tokens": 2.2e11, "domain_tr']                 # still being written
    folder = write_run(str(tmp_path / "r"), 0.05, rng, extra_lines=extra)
    with pytest.warns(FitLawsWarning) as record:
        run = fit_laws.load_run(folder)
    messages = " | ".join(str(w.message) for w in record)
    assert "excluded 2 eval point(s)" in messages and "truncated last line" in messages
    assert len(run.tokens) == len(TOKENS)                 # step-0 line skipped, NaNs dropped
    assert run.train[0] == 9.0                            # the last line for step 100 won


def test_too_little_data_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    short = [write_run(str(tmp_path / f"r{d}"), d, rng, tokens=TOKENS[:2]) for d in DELTAS]
    with pytest.raises(FitLawsError, match="2 usable eval point"):
        fit_laws.fit_pretraining_law(fit_laws.load_runs(short))


def test_checks_refit_in_the_unit_they_are_given(fitted):
    """The token unit is part of the law (A_train is shared, the exponent is not): a check of a law
    must refit in that law's unit, not in the one its subset of the data would pick."""
    runs, law, _ = fitted
    assert fit_laws.fit_until_check(runs, 3e10, starts=1)["t_scale"] == 1e10  # what 3e10 tokens pick
    assert fit_laws.fit_until_check(runs, 3e10, starts=1, t_scale=law.t_scale)["t_scale"] == law.t_scale == 1e11


def test_check_arguments_are_validated(fitted):
    runs, _, _ = fitted
    with pytest.raises(FitLawsError, match="no run has that domain_frac"):
        fit_laws.holdout_check(runs, 0.3)
    with pytest.raises(FitLawsError, match="no eval points beyond"):
        fit_laws.fit_until_check(runs, 1e12)


def test_bad_finetune_results(tmp_path):
    rng = np.random.default_rng(0)
    other = write_finetune(str(tmp_path / "other"), 0.01, 1e10, rng, dataset_id="other")
    with pytest.raises(FitLawsError, match="dataset_id 'other' differs"):
        fit_laws.load_finetunes([other], dataset_id="ds-abc")
    good = write_finetune(str(tmp_path / "good"), 0.01, 1e10, rng)
    replayed = write_finetune(str(tmp_path / "replayed"), 0.01, 2e10, rng, replay=0.1)
    with pytest.raises(FitLawsError, match="replay fractions"):
        fit_laws.load_finetunes([good, replayed])
    empty = write_finetune(str(tmp_path / "empty"), 0.02, 1e10, rng)
    record = json.load(open(os.path.join(empty, "finetune.json")))
    record["best"] = None                             # finetune.py found no result
    json.dump(record, open(os.path.join(empty, "finetune.json"), "w"))
    with pytest.warns(FitLawsWarning, match="excluded"):
        points = fit_laws.load_finetunes([os.path.join(good, "finetune.json"), empty])
    assert [p["delta"] for p in points] == [0.01]     # a json path works as well as its folder
    assert points[0]["drop"] == pytest.approx(true_drop(1e10, 0.01), abs=0.005)
    bigger = write_finetune(str(tmp_path / "bigger"), 0.01, 1e10, rng)
    record = json.load(open(os.path.join(bigger, "finetune.json")))
    record["model_config"] = {**MODEL, "n_layer": 32, "tie_embeddings": True}
    json.dump(record, open(os.path.join(bigger, "finetune.json"), "w"))
    with pytest.raises(FitLawsError, match="another shape"):
        fit_laws.load_finetunes([bigger], model_config={**MODEL, "tie_embeddings": True})
    record["model_config"] = {**MODEL, "tie_embeddings": False}  # finetuning unties: the same shape
    json.dump(record, open(os.path.join(bigger, "finetune.json"), "w"))
    assert len(fit_laws.load_finetunes([bigger], model_config={**MODEL, "tie_embeddings": True})) == 1
    with np.errstate(divide="ignore"):  # the synthetic world's losses at T = 0 are infinite
        untrained = write_finetune(str(tmp_path / "untrained"), 0.01, 0, rng)
    with pytest.warns(FitLawsWarning, match="0 pretraining tokens"):
        assert fit_laws.load_finetunes([untrained]) == []


def test_config_with_a_model_dict_only(tmp_path):
    """The brief's layout (config["model"] a dict, no model_config) is read as well."""
    folder = write_run(str(tmp_path / "r"), 0.02, np.random.default_rng(0))
    config = json.load(open(os.path.join(folder, "config.json")))
    config["model"] = config.pop("model_config")
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    assert fit_laws.load_run(folder).model == (MODEL, 800_000)


def test_token_counts_parse():
    assert fit_laws.parse_tokens("20B") == 2e10
    assert fit_laws.parse_tokens("1.5T") == 1.5e12
    assert fit_laws.parse_tokens("6e6") == 6e6
    with pytest.raises(Exception):
        fit_laws.parse_tokens("lots")
