"""Which pilots let the laws choose right at 4x their budget? A simulation with fit_laws.py's own code.

    python tests/simulate_pilots.py --replicates 20 --noise 0.006

The truth is test_fit_laws.py's repeats world (ABC-like: a 40K-token domain set that starts to overfit
at 50 repeats, with a penalty c d ln(E / 50)^2 past it, so that delta 0.1 beats 0.2 at 16M tokens).
Each replicate draws a study from it, with noise on every pretraining eval and on every loss after
finetuning (--noise, relative: one seed's spread on the real studies is 0.4-0.9%), runs the forecast
check fitted on the pilots (T <= 4M) and scores the recommending forecast's pick at 16M (its point
forecast's argmin: no bootstrap, to keep it fast) against the noise-free truth. Two designs of pilots:
    one seed   the whole set at deltas 0, 0.02, 0.05, 0.1, 0.2 (the studies before domain subsets)
    subsets    the same on two seeds, plus arms on U/4 (deltas 0.05, 0.1, 0.2) and U/8 (0.1, 0.2)
It prints each design's mean regret, how often the regret exceeds 0.5%, the median largest error and
which deltas were recommended. It is not a test (pytest does not collect it): it lives here beside
the world it draws from.
"""
import argparse
import collections
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fit_laws  # noqa: E402
import test_fit_laws as world  # noqa: E402

DESIGNS = {"one seed": ([0], {}), "subsets": ([0, 1], world.R_SUBSETS)}
TARGET, PILOTS = 16e6, 4e6


def draw_study(rng, seeds: list[int], subsets: dict, noise: float):
    """Runs (pretraining evals) and finetuned points of one study drawn from the world."""
    runs, points = [], []
    for seed in seeds:
        for u, deltas in [(world.U_FULL, world.R_FULL), *subsets.items()]:
            milestones = world.R_MILESTONES if u == world.U_FULL else [m for m in world.R_MILESTONES if m <= PILOTS]
            tokens = world.R_TOKENS[world.R_TOKENS <= max(milestones) + world.R_STEP]
            for d in deltas:
                test = world.pretrained(tokens, d, u) + rng.normal(0, 0.003, len(tokens))
                runs.append(fit_laws.Run(f"u{u}_d{d}_s{seed}", d, u, seed, tokens, test - 0.1, test))
                points += [fit_laws.Finetuned(f"u{u}_d{d}_s{seed}_{t:g}", d, u, seed, t, float(world.pretrained(t, d, u)),
                                              float(world.finetuned(t, d, u)) * (1 + rng.normal(0, noise)), 3.0)
                           for t in milestones]
    return runs, points


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, default=20, help="studies drawn per design")
    p.add_argument("--noise", type=float, default=0.006, help="relative noise of one loss after finetuning")
    args = p.parse_args(argv)
    truth = {d: float(world.finetuned(TARGET, d)) for d in world.R_FULL}
    best = min(truth.values())
    for name, (seeds, subsets) in DESIGNS.items():
        regrets, errors, picks = [], [], collections.Counter()
        for replicate in tqdm(range(args.replicates), desc=name):
            runs, points = draw_study(np.random.default_rng(replicate), seeds, subsets, args.noise)
            # fitted on the pilots: the milestones up to 4M (a milestone is the first whole step past it)
            check = fit_laws.forecast_check(runs, points, PILOTS + world.R_STEP, None, 1e7, 0, 0)
            at = next(b for b in check["budgets"] if b["tokens"] == TARGET)
            forecast = {r["delta"]: r["forecast"][check["by"]] for r in at["rows"]}
            pick = min(forecast, key=forecast.get)
            regrets.append(100 * (truth[pick] - best) / best)
            errors.append(max(abs(100 * (forecast[d] - truth[d]) / truth[d]) for d in truth))
            picks[pick] += 1
        print(f"{name}: mean regret {np.mean(regrets):.2f}% (above 0.5% in {np.mean(np.array(regrets) > 0.5):.0%} "
              f"of studies), median largest error {np.median(errors):.2f}%, recommended "
              + ", ".join(f"{d:g} x{n}" for d, n in sorted(picks.items())), flush=True)


if __name__ == "__main__":
    main()
