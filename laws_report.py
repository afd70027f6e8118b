"""How a fit of the laws reads: its report and plots, made from fit_laws.py's results JSON alone.

fit_laws.py prints this report and saves these plots after every fit; scripts/study.py puts the same
lines in a study's REPORT.md. Everything here reads the JSON (fitted curves included), so a results
file is a complete record: what was fitted, forecast, checked and recommended, and how it was drawn.

The report, in the order a reader needs it:
  1. the forecast check: every model refitted on the pilots alone, its forecasts of the larger
     budgets against the seed means measured there (error %, within the goal, the recommendation's regret);
  2. the rolling origins: the same check fitted up to each budget, one row per forecast budget;
  3. the paper's law (its parameters and bootstrap intervals, and flags where its assumptions strain),
     the repeat penalty and the curves after finetuning;
  4. the forecast at the target budget and the recommended domain_frac.
The plots: the paper's law against the evals (curves), every arm after finetuning against its repeats
(repeats), forecast against measured (check), the forecast at the target and the best domain_frac
by budget (recommendation).
"""
import numpy as np

# How the report names each forecast (fit_laws.py, part 3).
LABEL = {"law": "paper's law", "after_law": "law - drop", "after_direct": "direct", "after_repeats": "repeats"}


def approx(tokens: float) -> str:
    """4001792 -> 4.0M: a token count for reading (settings.format_tokens names checkpoints exactly)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.3g}"


def aligned(rows: list[list], widths: list[int], indent: str) -> list[str]:
    """A table's rows, each cell right-aligned in its column."""
    return [indent + " ".join(f"{cell:>{w}}" for cell, w in zip(row, widths)) for row in rows]


def measured(row: dict) -> str:
    return f"{row['measured_after']:.4f}" + (f"+-{row['se_after']:.4f}" if row["se_after"] is not None else "")


def choice_line(check: dict) -> str:
    c = check["choice"]
    if c is None:
        return f"{LABEL[check['by']]} recommends (too few finetuned budgets for the pilots to choose)"
    return (f"{LABEL[check['by']]} recommends: refitted on T <= {approx(c['fitted_until'])}, it forecast "
            f"{approx(c['scored'])} with mean |error| {c['mean_abs_error_pct']['after_repeats']:.2f}% (repeats) against "
            f"{c['mean_abs_error_pct']['after_law']:.2f}% (law - drop)")


def check_lines(check: dict) -> list[str]:
    p = check["penalty"]
    lines = [f"Forecast check: every model refitted on {check['scope']} (finetunes at "
             f"{', '.join(approx(t) for t in check['pilot_budgets'])}); {choice_line(check)}. Penalty: onset at "
             f"E0 = {p['e0']:.3g} repeats (U^{p['kappa']:+.2f}), c = {p['c']:.3g} d^{p['gamma']:.2f}; the runs reached "
             f"{check['reach']:.2g}x their onset. Measured: seed mean +- standard error."]
    for b in check["budgets"]:
        after = list(b["summary"])  # the forecasts after finetuning, in fit_laws.AFTER's order
        table = [["delta", "after", *(LABEL[k] for k in after), "before", LABEL["law"]]]
        for r in b["rows"]:
            cell = {k: f"{v:.4f} ({r['error_pct'][k]:+.2f})" for k, v in r["forecast"].items()}
            table.append([f"{r['delta']:g}", measured(r), *(cell[k] for k in after), f"{r['measured_before']:.4f}",
                          cell["law"]])
        lines.append(f"  at {approx(b['tokens'])} tokens, after finetuning (measured, then each forecast and its "
                     f"error %) and before:" + "".join(f" ({m})" for m in b["missing_seeds"]))
        lines += aligned(table, [6, 15] + [17] * len(after) + [7, 17], "    ")
        for key, s in b["summary"].items():
            rho = "n/a" if s["spearman"] is None else f"{s['spearman']:+.2f}"
            tie = f" (a tie with {s['tie']:g})" if s["tie"] is not None else ""
            lines.append(f"    {LABEL[key]:>17}: recommends {s['recommended']:g}{tie} (best measured "
                         f"{b['best_measured']:g}), regret {s['regret_pct']:.2f}%, Spearman {rho}, largest error "
                         f"{s['max_abs_error_pct']:.2f}%, {s['within']} of {len(b['rows'])} within the goal")
    return lines


def rolling_lines(rows: list[dict]) -> list[str]:
    table = [["fitted", "forecast", "by", "recommends", "best", "regret %", "largest error %", "within goal"]]
    table += [[approx(r["origin"]), approx(r["tokens"]), LABEL[r["by"]],
               f"{r['recommended']:g}" + (f" (tie {r['tie']:g})" if r["tie"] is not None else ""),
               f"{r['best_measured']:g}", f"{r['regret_pct']:.2f}", f"{r['max_abs_error_pct']:.2f}",
               f"{r['within']} of {r['deltas']}"] for r in rows]
    return ["Rolling origins: fitted up to each budget, forecasting those up to 4x larger (against seed means):"] + \
        aligned(table, [7, 9, 10, 16, 5, 9, 16, 12], "  ")


def format_report(results: dict) -> str:
    law, fc, p = results["law"], results["forecast"], results["penalty"]
    lines = check_lines(results["check"]) + [""] if results.get("check") else []
    lines += rolling_lines(results["rolling"]) + [""] if results.get("rolling") else []
    lines += [f"The paper's law ({law['runs']} runs of the whole set, deltas {law['deltas']}; T in units of "
              f"{law['t_scale']:.0e} tokens): RMSE {law['rmse']:.4f} on domain train and test loss",
              f"  {'param':<10}{'value':>11}   {results['ci_level']:.0%} interval"]
    for name, value in law["params"].items():
        ci = law["interval"].get(name)
        lines.append(f"  {name:<10}{value:11.4g}   " + (f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-"))
    lines.append("  flags: " + ("none" if not law["flags"] else "; ".join(law["flags"])))
    if p:
        lines.append(f"Repeats (the finetunes of domain sets of {', '.join(f'{u:,}' for u in results['domain_sets'])} "
                     f"tokens): onset E0 = {p['e0']:.3g} repeats of the whole set, E0_U = E0 (U / U_full)^"
                     f"{p['kappa']:.3f}; penalty {p['c']:.3g} d^{p['gamma']:.3f} ln(E / E0_U)^2 past it; the pilots "
                     f"reached {results['reach']:.3g}x their onset")
    for kind, fitted in results["post"].items():
        lines.append(f"  after finetuning, {kind}: exponent {fitted['exponent']:.3g}, per delta "
                     + ", ".join(f"{d}: ({a:.3g}, {c:.3g})" for d, (a, c) in fitted["coef"].items()))
    if results["choice"]:
        lines.append("  " + choice_line({"by": fc["by"], "choice": results["choice"]}))
    keys = [k for k in fc["rows"][0] if k in LABEL]
    table = [["delta", "repeats", *(LABEL[k] for k in keys), "interval", "exp. regret", "onset (law)"]]
    table += [[f"{r['delta']:g}", f"{r['repeats']:.3g}", *(f"{r[k]:.4f}" for k in keys),
               f"[{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]" if "interval" in r else "-",
               f"{r['expected_regret_pct']:.2f}%" if "interval" in r and r["inside"] else "-",
               approx(r["onset"]) if r["onset"] else "-"] for r in fc["rows"]]
    notes = [""] + [("  onset not observed" if r["unobserved"] else "") + ("" if r["trained"] else "  untrained" if
                    r["inside"] else "  outside the fitted deltas: not recommended") for r in fc["rows"]]
    lines.append(f"Forecast at {approx(fc['target_tokens'])} tokens (|D_dom| = {results['domain_tokens']:,} tokens; "
                 f"recommended by {LABEL[fc['by']]}, by expected regret over the bootstrap):")
    lines += [row + note for row, note in zip(aligned(table, [7, 8] + [17] * len(keys) + [17, 11, 11], "  "), notes)]
    best = fc["recommended"]
    tie = f"; a tie with {fc['tie']:g}, within the forecast's own noise" if fc["tie"] is not None else ""
    lines.append(f"Recommended domain_frac: {best['delta']:g} ({best['repeats']:.3g} repeats of D_dom){tie}")
    return "\n".join(lines + [f"warning: {w}" for w in results["warnings"]])


def plot_all(results: dict, stem: str) -> list[str]:
    """The figures (curves, and repeats and check where the results have them, recommendation) as
    {stem}_{name}.png; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fc, curves, figures = results["forecast"], results["curves"], {}

    figures["curves"], axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for curve, color in zip(curves["law"], plt.cm.viridis(np.linspace(0, 0.9, len(curves["law"])))):
        train_loss, gap = np.array(curve["train"]), np.array(curve["gap"])
        for ax, y in zip(axes, (train_loss, gap, train_loss + gap)):
            ax.plot(curves["tokens"], y, color=color, label=f"delta {curve['delta']:g}")
        for r in results["runs"]:
            if r["delta"] == curve["delta"] and r["domain_tokens"] == results["domain_tokens"]:
                train_loss, test = np.array(r["train"]), np.array(r["test"])
                for ax, y in zip(axes, (train_loss, test - train_loss, test)):
                    ax.plot(r["tokens"], y, ".", ms=3, color=color, alpha=0.5)
    for ax, title in zip(axes, ("domain train loss", "train-test gap", "domain test loss")):
        ax.set(xscale="log", xlabel="pretraining tokens", ylabel=title, title=f"{title}: evals (dots), the paper's law")
    axes[2].legend(fontsize=8)

    if curves["arms"]:  # every arm's losses after finetuning (seed means) against its repeats, and its fit
        figures["repeats"], ax = plt.subplots(figsize=(7.5, 5))
        points, sizes = results["finetunes"], sorted({a["domain_tokens"] for a in curves["arms"]}, reverse=True)
        for arm, color in zip(curves["arms"], plt.cm.viridis(np.linspace(0, 0.9, len(curves["arms"])))):
            d, u = arm["delta"], arm["domain_tokens"]
            if d == 0:  # no repeats to place it at
                continue
            tokens = sorted({p["tokens"] for p in points if (p["delta"], p["domain_tokens"]) == (d, u)})
            means = [np.mean([p["after"] for p in points if (p["delta"], p["domain_tokens"], p["tokens"]) == (d, u, t)])
                     for t in tokens]
            ax.plot(np.array(tokens) * d / u, means, "os^vD"[sizes.index(u) % 5], color=color, ms=5)
            ax.plot(np.array(arm["tokens"]) * d / u, arm["loss"], "-", color=color, lw=1,
                    label=f"delta {d:g}, U = {u:,}" + (" (the whole set)" if u == sizes[0] else ""))
        onsets = {a["domain_tokens"]: a["onset"] for a in curves["arms"]}
        for u in sizes:
            ax.axvline(onsets[u], color="gray", ls="--", lw=0.8)
        ax.set(xscale="log", xlabel="repeats of the domain set E = T delta / U (dashed: onsets)",
               ylabel="domain test loss after finetuning", title="every arm (seed means) and its fit, to 4x its pilots")
        ax.legend(fontsize=6, ncol=2)

    if results.get("check"):
        figures["check"], ax = plt.subplots(figsize=(6.5, 5.5))
        for b in results["check"]["budgets"]:
            for key, marker in zip(b["summary"], "s^o"):
                rows = b["rows"]
                ax.errorbar([r["measured_after"] for r in rows], [r["forecast"][key] for r in rows],
                            xerr=[r["se_after"] or 0 for r in rows], fmt=marker, capsize=2,
                            label=f"{LABEL[key]} at {approx(b['tokens'])}")
            for r in b["rows"]:
                ax.annotate(f"{r['delta']:g}", (r["measured_after"], r["forecast"][results["check"]["by"]]), fontsize=7,
                            xytext=(4, -8), textcoords="offset points")
        lims = np.array(ax.get_xlim())
        ax.plot(lims, lims, "k-", lw=0.8, label="forecast = measured")
        ax.fill_between(lims, lims * 0.99, lims * 1.01, color="gray", alpha=0.25, label="within 1%")
        ax.set(xlabel="measured loss after finetuning (seed mean +- standard error)",
               ylabel="forecast from the pilots alone", title=f"forecast check: fitted on {results['check']['scope']}")
        ax.legend(fontsize=7)

    figures["recommendation"], (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for trained, marker, label in ((True, "o", "trained deltas"), (False, "^", "untrained candidates")):
        rows = [r for r in fc["rows"] if r["trained"] == trained]
        if rows:  # a bootstrap interval need not hold the point fit (clipped at 0); no interval, no bar
            y = np.array([r[fc["by"]] for r in rows])
            ci = np.array([r.get("interval") or [v, v] for r, v in zip(rows, y)])
            ax.errorbar([r["delta"] for r in rows], y, yerr=np.clip([y - ci[:, 0], ci[:, 1] - y], 0, None), capsize=3,
                        fmt=marker, mfc=None if trained else "none", label=label)
    ax.plot(fc["recommended"]["delta"], fc["recommended"][fc["by"]], "r*", ms=14, label="recommended")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set(xlabel="domain_frac (symlog axis)", ylabel=f"forecast domain test loss ({LABEL[fc['by']]})",
           title=f"forecast at {approx(fc['target_tokens'])} tokens ({results['ci_level']:.0%} intervals)")
    ax.legend(fontsize=8)
    ax2.plot(*zip(*[(b["tokens"], b["delta"]) for b in results["best_by_budget"]]), "o-",
             label=f"best domain_frac ({LABEL[fc['by']]})")
    ax2.set(xscale="log", xlabel="pretraining budget (tokens)", ylabel="best domain_frac",
            title="best domain_frac by budget", ylim=(0, 1.1 * max(r["delta"] for r in fc["rows"] if r["inside"])))
    ax2.legend(fontsize=8)
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(f"{stem}_{name}.png", dpi=110)
        plt.close(fig)
    return [f"{stem}_{name}.png" for name in figures]
