"""fit_laws.py on synthetic runs written in train.py's and finetune.py's formats.

Two synthetic worlds, each written out here independently of fit_laws' own formulas, so that a wrong
sign or exponent in the module cannot cancel out:
- the paper's law (one domain set, one seed): at 6e10 and 1.2e11 tokens the best delta after finetuning
  is 0.05, and delta 0.1 overfits inside the data (its test loss turns up at ~3e11 tokens by the closed
  form). There the paper's law minus its drop must recommend, and forecast within 1%.
- repeats (a CPU-scale study: a 40K-token domain set and subsets of a quarter and an eighth, two seeds):
  every delta's domain test loss saturates, plus a penalty past 50 repeats. Pilots of the whole set
  (<= 4M tokens, <= 20 repeats) never reach it, but delta 0.2 repeats the set 80 times by 16M, where
  the best delta after finetuning is 0.1 (0.2 is best at 8M). The subset arms reach it: the
  repeat-aware forecast must say so, where `direct` (which cannot turn up) recommends 0.2.
"""
import json
import math
import os

import numpy as np
import pytest

import fit_laws
import laws_report

TRUE = fit_laws.Params(A_train=1.0, b_train_s=-0.6, b_train_g=-0.3, b_gap_s=3.0, b_gap_g=-0.1,
                       a1=3.0, a2=1.0, a3=-2.0, k0=2.0, k1=0.15, k2=0.002, k3=0.5)
UNIT = 1e10                                  # the truth's token unit (fit_laws picks its own)
DELTAS = [0.0, 0.001, 0.01, 0.02, 0.05, 0.1]
TOKENS = np.linspace(2.5e9, 1.2e11, 40)      # eval points, evenly spaced in steps as train.py logs them
FT_TOKENS = [5e9, 1e10, 1.5e10, 3e10, 6e10, 1.2e11]  # finetuned checkpoints: pilots up to 3e10, then 2x and 4x
STEP = 2 ** 20                               # tokens per step (batch x seq_len) in config.json
DOMAIN_TOKENS = 30_000_000
NOISE = 0.002
MODEL = {"n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 256, "seq_len": 1024}


def true_losses(tokens, delta):
    """(domain train, domain test) loss of the synthetic world: the paper's law, written out."""
    p, t = TRUE, np.asarray(tokens, dtype=float) / UNIT
    b_train = delta * p.b_train_s + (1 - delta) * p.b_train_g
    b_gap = delta * p.b_gap_s + (1 - delta) * p.b_gap_g
    train = p.A_train * t ** b_train + p.k0 - p.k1 * np.log(delta + p.k2) - p.k3 * delta
    return train, train + p.a1 * delta ** p.a2 * np.exp(p.a3 * delta) * t ** b_gap


def true_after(tokens, delta):
    """Finetuning takes off less the more domain data pretraining had (a log ratio, shrinking with T)."""
    shrink = 0.1 / (1 + 30 * delta) * (np.asarray(tokens, dtype=float) / UNIT) ** -0.2 + 0.03
    return true_losses(tokens, delta)[1] * np.exp(-shrink)


def write_run(folder, delta, rng, dataset_id="ds", model=MODEL, lines=None, domain_tokens=DOMAIN_TOKENS, seed=0,
              data_dir=None, step=STEP, curves=true_losses, tokens=TOKENS, noise=NOISE):
    os.makedirs(folder, exist_ok=True)
    config = {"domain_frac": delta, "dataset_id": dataset_id, "model_config": model, "batch_size": step // model["seq_len"],
              "domain_train_tokens": domain_tokens, "seed": seed, "data_dir": data_dir}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    if lines is None:
        train, test = curves(tokens, delta)
        lines = [{"step": 0, "tokens": 0, "domain_train_loss": 5.5, "domain_test_loss": 5.5}]
        lines += [{"step": i, "tokens": int(t), "domain_train_loss": float(a), "domain_test_loss": float(b)}
                  for i, (t, a, b) in enumerate(zip(tokens, train + rng.normal(0, noise, len(tokens)),
                                                    test + rng.normal(0, noise, len(tokens))), 1)]
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return folder


def write_finetune(folder, delta, tokens, rng, dataset_id="ds", model=MODEL, replay=0.0, converged=True, seed=0,
                   before=None, after=None, noise=NOISE / 2):
    os.makedirs(folder, exist_ok=True)
    before = float(true_losses(tokens, delta)[1]) if before is None else before
    after = float(true_after(tokens, delta)) if after is None else after
    record = {"pretrain_tokens": int(tokens), "domain_frac": delta, "dataset_id": dataset_id, "replay": replay,
              "model_config": {**model, "tie_embeddings": False},
              "pretrained": {"domain_test_loss": before, "general_val_loss": 3.0},
              "best": {"domain_test_loss": after + rng.normal(0, noise), "general_val_loss": 3.1, "converged": converged},
              "settings": {"pretrain_config": {"seed": seed}}}
    with open(os.path.join(folder, "finetune.json"), "w") as f:
        json.dump(record, f)
    return folder


def fitted_test_loss(law, tokens, delta):
    """The fitted law's domain test loss: train loss plus gap."""
    return sum(fit_laws.law(law.params, np.asarray(tokens, dtype=float) / law.t_scale, delta))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("world"), np.random.default_rng(0)
    runs = [write_run(str(root / f"d{d}"), d, rng) for d in DELTAS]
    fts = [write_finetune(str(root / f"ft_d{d}_{t:g}"), d, t, rng) for d in DELTAS for t in FT_TOKENS]
    return root, runs, fts


@pytest.fixture(scope="module")
def results(world):
    root, runs, fts = world
    return fit_laws.main(runs + ["--finetune", *fts, "--target_tokens", "5e10", "--fit_until", "3e10",
                                 "--bootstrap", "3", "--candidates", "0,0.005,0.01,0.02,0.05,0.1,0.2",
                                 "--out", str(root / "fit" / "fit_results.json")])


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    x = fit_laws.inside(fit_laws.to_vector(TRUE))
    t, d = rng.uniform(0.1, 3, 64), rng.choice(DELTAS, 64)

    def train_and_test(x):  # as fit_law stacks its residuals
        train, gap = fit_laws.law(fit_laws.to_params(x), t, d)
        return np.concatenate([train, train + gap])

    jacobian = fit_laws.jacobian(x, t, d)
    for i in range(len(x)):
        h = 1e-6 * max(1.0, abs(x[i]))
        up, down = (train_and_test(x + s * h * np.eye(len(x))[i]) for s in (1, -1))
        np.testing.assert_allclose(jacobian[:, i], (up - down) / (2 * h), rtol=1e-4, atol=1e-6)


def test_onset_is_the_minimum_of_the_test_loss():
    grid = np.geomspace(1e9, 1e14, 20001)
    test = np.sum(fit_laws.law(TRUE, grid / UNIT, 0.1), axis=0)
    assert fit_laws.onset(TRUE, 0.1, UNIT, 1e12) == pytest.approx(grid[np.argmin(test)], rel=1e-3)
    assert fit_laws.onset(TRUE, 0.0, UNIT, 1e12) is None  # no domain data, no gap


def test_the_fit_recovers_the_law_within_one_percent(world):
    _, runs, _ = world
    loaded, _ = fit_laws.load_runs(runs, [])
    law = fit_laws.fit_law(loaded, 1e11)
    assert law.flags == []
    for tokens in (5e10, 1.5e11, 3e11):  # inside, 1.25x and 2.5x beyond the data
        for delta in (0.005, 0.03, 0.07, 0.1):  # deltas between the fitted ones, and a fitted one
            assert float(fitted_test_loss(law, tokens, delta)) == pytest.approx(true_losses(tokens, delta)[1], rel=0.01)


def test_no_parameters_cancel_and_no_forecast_goes_below_zero():
    """Curves straight in log T (a logarithm, no floor in sight) used to give A_train = 9418 against
    k0 = -9417; with C_train(1) >= 0 the floor stays a loss, and no forecast can go below zero."""
    runs = [fit_laws.Run(f"d{d}", d, DOMAIN_TOKENS, 0, TOKENS, 4.0 - 0.3 * np.log(TOKENS / 1e9) - 2 * d,
                         4.1 - 0.3 * np.log(TOKENS / 1e9) - d) for d in DELTAS]
    law = fit_laws.fit_law(runs, 1e11)
    assert law.params.A_train < 50 and abs(law.params.k0) < 50
    grid = np.geomspace(1e9, 1e16, 50)
    assert all(np.all(fitted_test_loss(law, grid, d) > 0) for d in (0, 0.01, 0.1, 0.5, 1.0))
    rng = np.random.default_rng(0)
    lo, hi = np.array(fit_laws.LOWER), np.minimum(np.array(fit_laws.UPPER), 100)
    for _ in range(200):  # anywhere inside the bounds
        p = fit_laws.to_params(rng.uniform(lo, hi))
        assert np.all(np.sum(fit_laws.law(p, grid / 1e10, rng.uniform(0, 1)), axis=0) >= 0)


def test_forecasts_after_finetuning_stay_positive_far_beyond_the_data():
    """A drop that grows fast in the pilots would extrapolate past the pretrained loss if it were a
    difference; as a log ratio it only shrinks the loss, and the direct fit never rises or goes below 0."""
    points = [fit_laws.Finetuned("x", d, DOMAIN_TOKENS, 0, t, 3.0, 3.0 - 0.5 * d * t / 1e9, 3.0) for d in (0.1, 0.2)
              for t in (1e9, 2e9, 4e9)]
    direct, drop = (fit_laws.fit_post_ft(points, kind, 1e9) for kind in ("direct", "drop"))
    for d in (0.1, 0.15, 0.2):
        for t in (1e10, 1e12):
            assert 0 <= float(direct(t, d)) <= float(direct(4e9, d))  # never below zero, never rising
            assert 0 < 3.0 * math.exp(-float(drop(t, d))) < math.inf


def test_where_the_data_follow_the_papers_law_its_forecast_recommends(results):
    """The pilots' own check (refitted on T <= 1.5e10, forecasting 3e10) picks law - drop, which then
    forecasts 2x and 4x the pilots within 1% and recommends the best delta."""
    check = results["check"]
    assert check["fit_until"] == math.ceil(3e10 / STEP) * STEP  # rounded up to a whole step, like a milestone
    assert check["pilot_budgets"] == [5e9, 1e10, 1.5e10, 3e10]
    assert check["by"] == "after_law" and check["choice"]["scored"] == 3e10
    assert check["choice"]["mean_abs_error_pct"]["after_law"] < check["choice"]["mean_abs_error_pct"]["after_repeats"]
    assert [b["tokens"] for b in check["budgets"]] == [6e10, 1.2e11]
    for budget in check["budgets"]:
        for row in budget["rows"]:  # the measured values are the finetunes' own (one seed: no standard error)
            assert row["measured_after"] == pytest.approx(float(true_after(budget["tokens"], row["delta"])), abs=0.01)
            assert row["se_after"] is None and row["seeds"] == [0]
        summary = budget["summary"]["after_law"]
        assert summary["recommended"] == budget["best_measured"] == 0.05 and summary["regret_pct"] == 0
        assert summary["max_abs_error_pct"] < 1.0 and summary["spearman"] > 0.9
        assert summary["within"] == len(budget["rows"]) and budget["missing_seeds"] == []


def test_a_held_out_delta_is_forecast_from_the_others(world, tmp_path):
    """--holdout_delta: the law's delta-functions carry the forecast to a domain_frac it never saw."""
    root, runs, fts = world
    check = fit_laws.main(runs + ["--finetune", *fts, "--holdout_delta", "0.05", "--bootstrap", "0", "--no_plots",
                                  "--out", str(tmp_path / "h.json")])["check"]
    assert check["scope"] == "without delta 0.05" and [b["tokens"] for b in check["budgets"]] == FT_TOKENS
    for budget in check["budgets"]:
        [row] = budget["rows"]
        assert row["delta"] == 0.05 and abs(row["error_pct"]["law"]) < 1.0
        assert abs(row["error_pct"]["after_law"]) < (1.0 if budget["tokens"] >= 1e10 else 1.5)  # 5e9: the drop's edge


def test_the_check_never_sees_what_it_scores(world, tmp_path):
    """Everything beyond --fit_until may change without changing the forecasts: only the measurements."""
    root, runs, fts = world
    rng = np.random.default_rng(5)
    changed = []
    for d, run in zip(DELTAS, runs):
        lines = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
        for line in lines:
            if line["tokens"] > 3e10 + STEP:
                line["domain_test_loss"] += 0.5  # the late evals go wrong
        changed.append(write_run(str(tmp_path / f"d{d}"), d, rng, lines=lines))
    args = ["--finetune", *fts, "--fit_until", "3e10", "--bootstrap", "0", "--no_plots"]
    original = fit_laws.main(runs + args + ["--out", str(tmp_path / "a.json")])["check"]
    altered = fit_laws.main(changed + args + ["--out", str(tmp_path / "b.json")])["check"]
    for a, b in zip(original["budgets"], altered["budgets"]):
        assert [r["forecast"] for r in a["rows"]] == [r["forecast"] for r in b["rows"]]


def test_regret_and_rank_agreement_are_read_from_the_measurements(results):
    for budget in results["check"]["budgets"]:
        rows = budget["rows"]
        best = min(r["measured_after"] for r in rows)
        for key, s in budget["summary"].items():
            pick = next(r for r in rows if r["delta"] == s["recommended"])
            assert s["regret_pct"] == pytest.approx(100 * (pick["measured_after"] - best) / best)
            assert s["max_abs_error_pct"] == pytest.approx(max(abs(r["error_pct"][key]) for r in rows))
            assert s["within"] == sum(abs(r["error_pct"][key]) <= 1.0 for r in rows)


def test_the_choice_is_by_expected_regret_with_ties_named():
    """Over bootstrap draws the candidate of least expected regret wins, not the best point forecast; a
    runner-up whose difference to it has an interval holding zero is a tie; ineligible ones never win."""
    point = np.array([1.00, 0.99, 1.10])
    draws = np.array([[1.00, 0.98, 0.90], [1.00, 1.05, 0.90], [1.00, 1.06, 0.90], [1.00, 0.97, 0.90]])
    pick = fit_laws.choose(point, draws, np.array([True, True, False]))
    regret_1 = 100 * np.mean(np.maximum(draws[:, 1] - 1.0, 0) / np.minimum(draws[:, 1], 1.0))
    assert pick["index"] == 0 and pick["expected_regret_pct"][1] == pytest.approx(regret_1)
    assert pick["tie"] == 1  # 0.99 - 1.00 ... 1.06 - 1.00: the interval holds zero
    clear = np.array([[1.00, 1.10, 1.20], [1.00, 1.12, 1.30], [1.00, 1.09, 1.25], [1.00, 1.11, 1.22]])
    assert fit_laws.choose(point, clear, np.array([True, True, True])) == \
        {"index": 0, "expected_regret_pct": pytest.approx([0, 10.5, 24.25]), "tie": None}
    assert fit_laws.choose(point, np.zeros((0, 3)), np.array([True, True, False])) == \
        {"index": 1, "expected_regret_pct": None, "tie": None}


def test_the_recommendation_matches_the_truth_and_labels_candidates(results):
    forecast = results["forecast"]
    rows = {r["delta"]: r for r in forecast["rows"]}
    truth = {d: float(true_after(5e10, d)) for d in rows if d <= 0.1}
    assert forecast["recommended"]["delta"] == min(truth, key=truth.get) == 0.05
    assert not rows[0.005]["trained"] and rows[0.005]["inside"]  # between fitted deltas: forecast, labelled
    assert not rows[0.2]["inside"]  # beyond the fitted deltas: shown, never recommended
    eligible = [r for r in rows.values() if r["inside"]]
    assert forecast["recommended"]["expected_regret_pct"] == min(r["expected_regret_pct"] for r in eligible)
    for d in (0.01, 0.05, 0.1):
        assert rows[d][forecast["by"]] == pytest.approx(truth[d], rel=0.01)


def test_cli_writes_json_and_plots_deterministically(world, results, tmp_path, capsys):
    root, runs, fts = world
    path = str(root / "fit" / "fit_results.json")
    with open(path) as f:
        assert json.load(f) == results
    for plot in results["plots"]:
        assert os.path.getsize(plot) > 10_000
    assert {os.path.basename(p) for p in results["plots"]} == {
        "fit_results_curves.png", "fit_results_repeats.png", "fit_results_check.png", "fit_results_recommendation.png"}
    again = fit_laws.main(runs + ["--finetune", *fts, "--target_tokens", "5e10", "--fit_until", "3e10",
                                  "--bootstrap", "3", "--candidates", "0,0.005,0.01,0.02,0.05,0.1,0.2",
                                  "--out", str(tmp_path / "again.json")])
    assert again["forecast"] == results["forecast"] and again["check"] == results["check"]
    printed = capsys.readouterr().out
    assert "Recommended domain_frac: 0.05" in printed
    with open(tmp_path / "again.json") as f:  # the JSON alone remakes the report and every plot, byte for byte
        saved = json.load(f)
    assert laws_report.format_report(saved) + "\n" in printed
    for plot, remade in zip(again["plots"], laws_report.plot_all(saved, str(tmp_path / "remade")), strict=True):
        with open(plot, "rb") as f, open(remade, "rb") as g:
            assert f.read() == g.read(), remade


def test_a_negative_gap_is_flagged_only_when_it_is_significant():
    rng = np.random.default_rng(3)
    runs = []
    for d in DELTAS:
        train, test = true_losses(TOKENS, d)
        runs.append(fit_laws.Run(f"d{d}", d, DOMAIN_TOKENS, 0, TOKENS, train + rng.normal(0, 0.02, 40),
                                 train + rng.normal(0, 0.02, 40)))
    flags = fit_laws.fit_law(runs, 1e11).flags  # no gap at all, only noise: nothing significant
    assert not any("negative gap" in f for f in flags)
    runs[-1] = runs[-1]._replace(test=runs[-1].train - 0.3 * (TOKENS / UNIT) ** 0.5)  # well below train, growing
    assert any("delta 0.1 has a significantly negative gap" in f for f in fit_laws.fit_law(runs, 1e11).flags)


# --- the repeats world: subsets of the domain set, seeds, an onset beyond the whole set's pilots ----------

U_FULL, ONSET, C = 40_000, 50.0, 2.5  # penalty c d^1 ln(E / 50)^2: 0.11 nats at delta 0.2 and 80 repeats
R_MODEL = {**MODEL, "seq_len": 128}
R_STEP, R_TOKENS = 4096, np.arange(1, 123) * 131072  # evals every 32 steps of 4096 tokens, to 16M
R_MILESTONES = [0.5e6, 1e6, 2e6, 4e6, 8e6, 16e6]
R_FULL = [0.0, 0.02, 0.05, 0.1, 0.2]
R_SUBSETS = {10_000: [0.05, 0.1, 0.2], 5_000: [0.1, 0.2]}


def repeat_penalty(tokens, delta, u):
    repeats = np.asarray(tokens, dtype=float) * delta / u
    return C * delta * np.maximum(np.log(np.maximum(repeats, 1e-30) / ONSET), 0) ** 2


def pretrained(tokens, delta, u=U_FULL):
    """A domain test loss that saturates faster with more domain data and higher with a smaller set."""
    x = np.asarray(tokens, dtype=float) / 1e7
    return 1.75 + 0.3 * (U_FULL / u) ** 0.1 + (0.2 + 2.5 * math.exp(-25 * delta)) * x ** -0.35 \
        + repeat_penalty(tokens, delta, u)


def finetuned(tokens, delta, u=U_FULL):
    """After finetuning: lower the more domain data, a flatter curve, the same penalty (finetuning cannot
    undo memorisation). At 16M: 1.989, 1.981, 1.969, 1.949 and 2.019 for deltas 0 to 0.2 (0.2 is best at
    8M); at 64M delta 0.02 is best (0.1 and 0.05 are past the onset there)."""
    x = np.asarray(tokens, dtype=float) / 1e7
    return 1.62 + 0.3 * (U_FULL / u) ** 0.1 - 0.4 * delta + 0.08 * x ** -0.3 + repeat_penalty(tokens, delta, u)


def repeats_world(root, subsets=R_SUBSETS):
    """Run and finetune folders of the repeats world, with dataset folders whose meta.json the subset
    check reads. Returns (runs, finetunes)."""
    rng, runs, fts = np.random.default_rng(11), [], []
    for u in [U_FULL, *subsets]:
        os.makedirs(root / f"data{u}", exist_ok=True)
        splits = {s: {"sha256": s, "tokens": 1} for s in ("general_train", "general_val", "domain_train", "domain_test")}
        with open(root / f"data{u}" / "meta.json", "w") as f:
            json.dump({"tokenizer": "byte", "vocab_size": 257, "dataset_id": f"ds{u}", "shard_dir": "shards",
                       "splits": {**splits, "domain_train": {"sha256": f"dom{u}", "tokens": u}}}, f)
    for seed in (0, 1):
        for u, deltas in [(U_FULL, R_FULL), *subsets.items()]:
            milestones = R_MILESTONES if u == U_FULL else R_MILESTONES[:4]
            tokens = R_TOKENS[R_TOKENS <= max(milestones) + R_STEP]
            for d in deltas:
                name = f"u{u}_d{d}_s{seed}"
                runs.append(write_run(str(root / name), d, rng, dataset_id=f"ds{u}", model=R_MODEL, domain_tokens=u,
                                      seed=seed, data_dir=str(root / f"data{u}"), step=R_STEP, tokens=tokens,
                                      curves=lambda t, d, u=u: (pretrained(t, d, u) - 0.1, pretrained(t, d, u)),
                                      noise=0.003))
                fts += [write_finetune(str(root / f"ft_{name}_{t:g}"), d, t, rng, dataset_id=f"ds{u}", model=R_MODEL,
                                       seed=seed, before=float(pretrained(t, d, u)), after=float(finetuned(t, d, u)),
                                       noise=0.006) for t in milestones]
    return runs, fts


@pytest.fixture(scope="module")
def repeats(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeats")
    runs, fts = repeats_world(root)
    return runs, fts, fit_laws.main(runs + ["--finetune", *fts, "--fit_until", "4e6", "--rolling", "--bootstrap", "4",
                                            "--target_tokens", "64e6", "--candidates", "0,0.02,0.05,0.1,0.2",
                                            "--no_plots", "--out", str(root / "fit.json")])


def test_the_penalty_is_found_where_only_the_subsets_reach_it(repeats):
    _, _, results = repeats
    p = results["check"]["penalty"]
    assert p["e0"] == pytest.approx(ONSET, rel=0.2) and abs(p["kappa"]) < 0.2
    for tokens, delta in ((16e6, 0.2), (16e6, 0.1), (64e6, 0.05)):  # the target's repeats: 80, 40, 80
        fitted = fit_laws.Penalty(**p)(tokens, delta, U_FULL)
        assert fitted == pytest.approx(repeat_penalty(tokens, delta, U_FULL), abs=0.02)
    assert results["check"]["reach"] > 2  # the eighth at delta 0.2 reached 150 repeats by 4M


def test_repeats_foresee_the_overfitting_that_direct_cannot(repeats):
    """At 16M (4x the pilots, 80 repeats at delta 0.2) the best delta is 0.1: repeats recommends it and
    forecasts every delta within max(1%, 2 standard errors) of the seed means; direct picks 0.2."""
    _, _, results = repeats
    check = results["check"]
    assert check["by"] == "after_repeats" and check["pilot_budgets"] == [0.5e6, 1e6, 2e6, 4e6]
    at_16m = next(b for b in check["budgets"] if b["tokens"] == 16e6)
    truth = {d: float(finetuned(16e6, d)) for d in R_FULL}
    assert at_16m["best_measured"] == min(truth, key=truth.get) == 0.1
    for row in at_16m["rows"]:
        assert row["seeds"] == [0, 1] and row["se_after"] > 0
        assert row["measured_after"] == pytest.approx(truth[row["delta"]], abs=0.02)
    assert at_16m["summary"]["after_repeats"]["recommended"] == 0.1
    assert at_16m["summary"]["after_repeats"]["within"] == len(R_FULL)
    assert at_16m["summary"]["after_direct"]["recommended"] == 0.2 and at_16m["summary"]["after_direct"]["regret_pct"] > 2
    by_budget = [b["delta"] for b in results["best_by_budget"]]
    assert by_budget == sorted(by_budget, reverse=True) and by_budget[0] > by_budget[-1]  # less delta for more tokens


def test_rolling_origins_score_every_budget_up_to_4x(repeats):
    _, _, results = repeats
    assert [(r["origin"], r["tokens"]) for r in results["rolling"]] == [
        (2e6, 4e6), (2e6, 8e6), (4e6, 8e6), (4e6, 16e6), (8e6, 16e6)]
    at = {(r["origin"], r["tokens"]): r for r in results["rolling"]}
    check_16m = next(b for b in results["check"]["budgets"] if b["tokens"] == 16e6)["summary"]["after_repeats"]
    assert at[(4e6, 16e6)]["regret_pct"] == check_16m["regret_pct"]  # the same check as the main one
    assert all(r["deltas"] == len(R_FULL) and r["by"] in fit_laws.AFTER for r in results["rolling"])


def test_without_subsets_the_onset_is_flagged_unobserved(tmp_path):
    runs, fts = repeats_world(tmp_path, subsets={})
    results = fit_laws.main(runs + ["--finetune", *fts, "--bootstrap", "0", "--no_plots", "--target_tokens", "64e6",
                                    "--out", str(tmp_path / "fit.json")])
    rows = {r["delta"]: r for r in results["forecast"]["rows"]}
    reach = results["reach"] * results["penalty"]["e0"]  # the most repeats seen, over the onset's unit
    assert [d for d, r in rows.items() if r["unobserved"]] == [d for d in R_FULL if 64e6 * d / U_FULL > reach]
    assert rows[0.2]["unobserved"] and not rows[0]["unobserved"]


def test_seeds_missing_at_a_budget_are_named_and_the_rest_used(repeats, tmp_path):
    runs, fts, _ = repeats
    kept = [f for f in fts if not f.endswith("u40000_d0.2_s1_1.6e+07")]
    check = fit_laws.main(runs + ["--finetune", *kept, "--fit_until", "4e6", "--bootstrap", "0", "--no_plots",
                                  "--out", str(tmp_path / "fit.json")])["check"]
    at_16m = next(b for b in check["budgets"] if b["tokens"] == 16e6)
    row = next(r for r in at_16m["rows"] if r["delta"] == 0.2)
    assert row["seeds"] == [0] and row["se_after"] is None and at_16m["missing_seeds"] == ["delta 0.2 lacks seed 1"]


# --- bad input: one line that says what to do, nothing written ----------------------------------------

def fails(args, capsys, *match):
    with pytest.raises(SystemExit) as exit_info:
        fit_laws.main(args)
    message = str(exit_info.value.code) if exit_info.value.code != 2 else capsys.readouterr().err
    assert message.startswith("fit_laws.py") and "\n" not in message.strip(), message
    for m in match:
        assert m in message, message


def test_bad_input_is_one_line(world, tmp_path, capsys):
    root, runs, fts = world
    out = str(tmp_path / "fit.json")
    rng = np.random.default_rng(7)
    fails(runs[:3] + ["--out", out], capsys, "4 or more domain_frac values")
    fails(runs + [write_run(str(tmp_path / "other"), 0.2, rng, dataset_id="other"), "--out", out], capsys,
          "from two datasets")
    fails(runs + [write_run(str(tmp_path / "wide"), 0.2, rng, model={**MODEL, "d_model": 256}), "--out", out],
          capsys, "differ in model_config")
    short = write_run(str(tmp_path / "short"), 0.2, rng, lines=[{"step": 1, "tokens": 1e9, "domain_train_loss": 3,
                                                                 "domain_test_loss": 3}])
    fails(runs + [short, "--out", out], capsys, "usable evals", "train longer")
    fails(runs + ["--finetune", *fts, "--fit_until", "2e11", "--out", out], capsys, "nothing to score", "beyond --fit_until")
    fails(runs + ["--finetune", *fts, "--fit_until", "2e9", "--out", out], capsys, "no finetune is left", "raise it")
    fails(runs + ["--finetune", *fts[:2], "--out", out], capsys, "3 or more pretraining token counts")
    fails(runs + ["--finetune", write_finetune(str(tmp_path / "ftx"), 0.1, 1e10, rng, dataset_id="x"), "--out", out],
          capsys, "finetuned on dataset x")
    fails(runs + ["--finetune", write_finetune(str(tmp_path / "ftr"), 0.1, 1e10, rng, replay=0.1), "--out", out],
          capsys, "replayed general data")
    fails(runs + ["--candidates", "0.3,0.5", "--out", out], capsys, "within the fitted domain_frac range")
    fails(runs + ["--candidates", "1.5", "--out", out], capsys, "--candidates")
    fails(runs + ["--target_tokens", "1e10", "--out", out], capsys, "below the pilots", "larger target")
    fails([str(tmp_path / "nowhere"), "--out", out], capsys, "does not exist")
    assert not os.path.exists(out)


def test_subsets_must_hold_out_what_the_whole_set_does(repeats, tmp_path, capsys):
    """A subset prepared with another seed or test_frac has another test split: its runs measure something
    else, and are refused; so is a subset whose dataset folder is gone."""
    runs, _, _ = repeats
    data_dir = json.load(open(os.path.join(runs[-1], "config.json")))["data_dir"]
    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    meta["splits"]["domain_test"]["sha256"] = "another"
    os.makedirs(tmp_path / "data", exist_ok=True)
    with open(tmp_path / "data" / "meta.json", "w") as f:
        json.dump(meta, f)
    config = json.load(open(os.path.join(runs[-1], "config.json")))
    moved = tmp_path / "moved"
    os.makedirs(moved)
    for data, name in ((str(tmp_path / "data"), "other test split"), (str(tmp_path / "gone"), "gone")):
        with open(moved / "config.json", "w") as f:
            json.dump({**config, "data_dir": data}, f)
        with open(moved / "log.jsonl", "w") as f:
            f.write(open(os.path.join(runs[-1], "log.jsonl")).read())
        fails([r for r in runs if r != runs[-1] and "u5000" not in r] + [str(moved), "--out", str(tmp_path / "f.json")],
              capsys, *(["other domain_test", "same sources, --seed, --val_frac and --test_frac"] if name != "gone"
                        else ["which is gone", "put them back"]))


def test_damaged_logs(world, tmp_path, capsys):
    """A cut-off last line (a run still writing) is dropped with a warning, NaN evals too; a damaged line
    in the middle is refused; a resumed run's repeated step keeps its last line."""
    root, runs, _ = world
    lines = [json.loads(line) for line in open(os.path.join(runs[-1], "log.jsonl"))]
    nan = [dict(lines[5], domain_test_loss=float("nan"))]
    repeated = [dict(lines[10], domain_test_loss=9.0), lines[10]]
    rng = np.random.default_rng(0)
    folder = write_run(str(tmp_path / "d0.1"), 0.1, rng, lines=lines[:5] + nan + lines[6:10] + repeated + lines[11:]
                       + ['{"step": 99, "tok'])
    warnings = []
    loaded, _ = fit_laws.load_runs(runs[:-1] + [folder], warnings)
    assert len(loaded[-1].tokens) == len(lines) - 2  # step 0 and the NaN eval are out, the repeat kept once
    assert 9.0 not in loaded[-1].test and any("NaN" in w for w in warnings)
    assert "cut-off last line" in capsys.readouterr().err
    write_run(folder, 0.1, rng, lines=lines[:5] + ["{damaged"] + lines[5:])
    fails(runs[:-1] + [folder, "--out", str(tmp_path / "x.json")], capsys, "line 6")


def test_an_unconverged_finetune_is_named(world, tmp_path):
    root, runs, fts = world
    warnings = []
    _, setting = fit_laws.load_runs(runs, warnings)
    late = write_finetune(str(tmp_path / "late"), 0.1, 1e10, np.random.default_rng(1), converged=False)
    points = fit_laws.load_finetunes(fts[:2] + [late], setting, warnings)
    assert len(points) == 3 and len(warnings) == 1 and "late" in warnings[0] and "unconverged" in warnings[0]
