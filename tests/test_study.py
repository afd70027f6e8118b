"""The study driver end to end at a micro size: every stage runs and the report is filled from real runs."""
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import fit_laws
import settings
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import study  # noqa: E402  (scripts/ is not a package)
KILL_AT_LAST_MILESTONE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import settings, train
atomic_write = settings.atomic_write
def killing_atomic_write(path, *args, **kwargs):
    if os.path.basename(path) == "ckpt_8192.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    return atomic_write(path, *args, **kwargs)
settings.atomic_write = killing_atomic_write
train.main({args!r})
"""


def tables(report: str, heading: str) -> list[list[list[str]]]:
    """The markdown tables of a section, each as its rows of cells (without header and separator)."""
    section = report.split(f"## {heading}")[1].split("\n## ")[0]
    found, rows = [], None
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            rows = [] if rows is None else rows
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows is not None:
            found, rows = found + [rows[2:]], None
    return found


def table_rows(report: str, heading: str) -> list[list[str]]:
    return tables(report, heading)[0]


def test_micro_study_end_to_end(tiny_data, tmp_path):
    out, results = str(tmp_path / "out"), str(tmp_path / "results")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--preset", "micro", "--data_dir", tiny_data,
           "--out_dir", out, "--results_dir", results, "--jobs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preset = json.load(open(os.path.join(ROOT, "configs", "study", "micro.json")))
    report = open(os.path.join(results, "REPORT.md")).read()

    meta = json.load(open(os.path.join(tiny_data, "meta.json")))  # the dataset, and what it was read from
    assert f"Dataset `{meta['dataset_id']}` (local:" in report and "read from local or hosted files." in report

    def finetuned(delta, tokens, seed, subset=""):  # what finetune.py wrote
        return json.load(open(os.path.join(out, "finetune", f"{subset}d{delta:g}_s{seed}_{tokens}", "finetune.json")))

    rows = table_rows(report, "Domain test loss before and after finetuning")
    assert len(rows) == len(preset["deltas"]) * len(preset["milestones"])
    for row in rows:  # every number comes from the finetune.json files the runs wrote: seed means, then each seed
        delta, tokens = float(row[0]), int(row[1])
        fts = [finetuned(delta, tokens, seed) for seed in preset["seeds"]]
        after = [ft["best"]["domain_test_loss"] for ft in fts]
        assert float(row[2]) == round(np.mean([ft["pretrained"]["domain_test_loss"] for ft in fts]), 4)
        assert row[3] == f"{np.mean(after):.4f} ({', '.join(f'{a:.4f}' for a in after)})"
        assert float(row[5]) == round(np.mean([ft["best"]["general_val_loss"] for ft in fts]), 4)
        assert all(ft["best"]["domain_test_loss"] <= ft["pretrained"]["domain_test_loss"] for ft in fts)

    # The verdict comes first: the laws fitted on the pilots (<= 1/4 of the largest budget, and the subset
    # arms) against the seed means of the runs that reached the larger budgets.
    assert report.index("## The forecast check") < report.index("## Domain test loss before and after finetuning")
    check, last = table_rows(report, "The forecast check"), max(preset["milestones"])
    assert f"At {last / 1e3:.3g}K tokens (4x the pilots):" in report
    assert [float(r[0]) for r in check] == preset["deltas"]
    for row in check:
        after = [finetuned(float(row[0]), last, seed)["best"]["domain_test_loss"] for seed in preset["seeds"]]
        se = np.std(after, ddof=1) / np.sqrt(len(after))
        assert row[2] == f"{np.mean(after):.4f}+-{se:.4f} ({len(after)})"
        forecast, error = re.fullmatch(r"(\S+) \(([+-]\d+\.\d\d)%\)( \*)?", row[4]).groups()[:2]
        assert float(error) == pytest.approx(100 * (float(forecast) - np.mean(after)) / np.mean(after), abs=0.02)
    fit_results = json.load(open(os.path.join(out, "fit", "fit_results.json")))
    assert fit_results["check"]["fit_until"] == 2048 and fit_results["check"]["pilot_budgets"] == [512, 1024, 2048]
    assert re.search(r"regret \d+\.\d\d% \((met|not met): goal <= 0.5%\)", report)
    assert [(r["origin"], r["tokens"]) for r in fit_results["rolling"]] == [(2048, 8192)]
    [subset] = preset["subsets"]  # its runs went to the pilot budget, on their own nested dataset, every seed
    assert {r["domain_tokens"] for r in fit_results["runs"]} == {json.load(open(os.path.join(
        tiny_data, "meta.json")))["splits"]["domain_train"]["tokens"], fit_results["domain_sets"][-1]}
    assert fit_results["domain_sets"][-1] >= subset["domain_tokens"]
    for seed in preset["seeds"]:
        assert finetuned(0.4, 2048, seed, f"u{subset['domain_tokens'] // 1000}K_")["pretrain_tokens"] >= 2048
        assert not os.path.exists(os.path.join(out, "finetune", f"u1K_d0.4_s{seed}_8192"))
    assert len(table_rows(report, "Subset arms: where repeating the domain set starts to overfit")) == \
        len([d for d in preset["deltas"] if d > 0]) + len(subset["deltas"])

    gains = table_rows(report, "Relative gain and compute multiplier")
    assert [float(r[0]) for r in gains] == [d for d in preset["deltas"] if d > 0]
    assert all(re.fullmatch(r"[+-]\d+\.\d\d%", cell) for r in gains for cell in r[1:-1])
    assert len(table_rows(report, "Overfitting during pretraining")) == len(preset["deltas"])
    assert len(table_rows(report, "Downstream: the continuation task")) == len(preset["deltas"])
    assert "Recommended domain_frac" in report
    for png in ("pretraining.png", "finetuning.png", "fit_results_curves.png", "fit_results_recommendation.png",
                "fit_results_check.png"):
        assert os.path.getsize(os.path.join(results, png)) > 1000

    # Restartable. The run of delta 0.2 is killed after logging its last eval but before writing that
    # eval's checkpoints: its latest checkpoint is then an earlier one, and the last milestone is missing.
    # (Its own command again, SIGKILLed as it starts writing the last milestone.)
    run = os.path.join(out, "runs", "d0.2_s0")
    last = os.path.join(run, "ckpt_8192.pt")
    weights = torch.load(last, weights_only=True)["model"]
    config = json.load(open(os.path.join(run, "config.json")))
    args = [f"--{f.name}={config[f.name]}" for f in dataclasses.fields(train.TrainConfig)
            if config[f.name] not in (None, "")]
    shutil.rmtree(run)
    killed = subprocess.run([sys.executable, "-c", KILL_AT_LAST_MILESTONE.format(root=ROOT, args=args)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL and not os.path.exists(last), killed.stderr[-3000:]
    last_step = 8192 // (preset["train"]["batch_size"] * preset["train"]["seq_len"])
    assert torch.load(os.path.join(run, "ckpt_latest.pt"), weights_only=True)["step"] == \
        last_step - preset["train"]["eval_interval"]
    outputs = [os.path.join(root, f) for root, _, files in os.walk(out) for f in files
               if f in ("finetune.json", "log.jsonl", "eval.jsonl") and root != run]
    before = {f: open(f).read() for f in outputs}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 jobs, 2 at a time" in proc.stderr  # one pretraining run again, its command line first in its log
    trained = open(os.path.join(out, "logs", "pretrain_d0.2_s0.txt")).readline()
    assert trained.startswith("$") and f"--out_dir={run}" in trained and "--resume" in trained
    for name, tensor in torch.load(last, weights_only=True)["model"].items():  # the same checkpoint again
        torch.testing.assert_close(tensor, weights[name], rtol=1e-5, atol=1e-6)
    assert {f: open(f).read() for f in outputs} == before  # finetuning and evaluation: nothing redone
    assert "evaluate.py" not in proc.stdout


def test_every_study_preset_parses():
    """The presets nobody runs in CI (GPU, paper scale) still name valid flags."""
    import finetune
    import train
    for name in os.listdir(os.path.join(ROOT, "configs", "study")):
        preset = json.load(open(os.path.join(ROOT, "configs", "study", name)))
        assert {"data", "train", "deltas", "milestones", "finetune", "fit", "evaluate"} <= set(preset), name
        cfg = settings.parse_config(train.TrainConfig, [f"--{k}={v}" for k, v in preset["train"].items()], "")
        assert max(preset["milestones"]) == cfg.max_tokens, name
        settings.parse_config(finetune.FinetuneConfig, [f"--{k}={v}" for k, v in preset["finetune"].items()], "")
        assert len({d for d in preset["deltas"] if d > 0}) >= 3, name  # the 12-parameter law needs them
        assert study.pilots_until(preset) <= max(preset["milestones"]) / 4, name  # 3 or more pilot budgets
        fit_laws.parse_args(["run"] + study.flags(preset["fit"]))  # every fit setting is a flag of fit_laws.py
        study.check_repeats(preset, preset["data"]["domain_tokens"])  # the pilots reach the target's repeats


def test_a_preset_whose_pilots_cannot_reach_the_targets_repeats_is_refused():
    preset = json.load(open(os.path.join(ROOT, "configs", "study", "cpu-mini.json")))
    preset["subsets"] = [{"domain_tokens": 20000, "deltas": [0.1]}]  # 20 repeats by 4M, the target 80
    with pytest.raises(SystemExit) as refused:
        study.check_repeats(preset, 40000)
    assert str(refused.value) == ("study.py: the pilots reach 20 repeats of the domain set by 4M tokens, the largest "
                                  "budget 80: add a subset arm (\"subsets\": a smaller domain_tokens or a larger "
                                  "delta) that reaches it")


def test_jobs_run_in_parallel_with_their_own_logs(tmp_path, monkeypatch):
    """--jobs: every command runs, on cores / jobs threads, its output in its own log; a failing one
    stops the study with one line that names its log, after the others finished."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    write = "import os, sys; open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS']); print('hello', sys.argv[1])"
    jobs = {f"job{i}": [sys.executable, "-c", write, str(tmp_path / f"out{i}")] for i in range(3)}
    study.run_all(jobs, 2, str(tmp_path / "logs"))
    assert [open(tmp_path / f"out{i}").read() for i in range(3)] == ["2"] * 3
    log = open(tmp_path / "logs" / "job1.txt").read()  # the command line first, as run() shows it, then the output
    assert log == "$ " + " ".join(jobs["job1"]) + f"\nhello {tmp_path / 'out1'}\n"
    jobs["job0"] = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    jobs["job1"][-1] = str(tmp_path / "again")  # running beside job0: it finishes
    with pytest.raises(SystemExit) as failed:
        study.run_all(jobs, 2, str(tmp_path / "logs"))
    assert str(failed.value) == (f"study.py: job0 failed (exit 3): see {tmp_path / 'logs' / 'job0.txt'}; rerun the "
                                 f"same command once fixed, finished work is kept")
    assert open(tmp_path / "logs" / "job0.txt").read().endswith("\nboom\n") and os.path.exists(tmp_path / "again")


def test_why_a_forecast_missed_is_read_from_the_finetunes():
    """The report's explanation: from the last pilot, how far the measured loss (seed means of the whole
    set; a subset's finetunes do not count) and the forecast moved, a turn-up after the pilots, and
    repeats further past the onset than any pilot reached, all from the numbers it is given."""
    after = {1e6: 2.0, 2e6: 1.9, 4e6: 1.8, 8e6: 1.7, 16e6: 1.75}  # a turn-up after 8M
    fit_results = {"check": {"pilot_budgets": [1e6, 2e6, 4e6]}, "domain_tokens": 40000,
                   "finetunes": [{"delta": 0.2, "tokens": t, "after": a + s, "domain_tokens": 40000}
                                 for t, a in after.items() for s in (-0.01, 0.01)]
                   + [{"delta": 0.2, "tokens": 4e6, "after": 9.0, "domain_tokens": 5000}]}
    rows = [{"delta": 0.2, "measured_after": 1.75, "forecast": {"repeats": 1.6}, "error_pct": {"repeats": -8.57},
             "unobserved": True, "repeats": 80.0},
            {"delta": 0.1, "measured_after": 1.8, "forecast": {"repeats": 1.79}, "error_pct": {"repeats": -0.56},
             "unobserved": False, "repeats": 40.0}]
    right = {"repeats": {"recommended": 0.2, "tie": None, "regret_pct": 0.0}}
    line = study.why_missed(fit_results, {"tokens": 16e6, "rows": rows, "summary": right, "best_measured": 0.2},
                            "repeats")
    assert line == ("- Why the goals were missed here: the largest error is at delta 0.2 (-8.57%); from its last "
                    "pilot (4M tokens: 1.8000 after finetuning) the measured loss moved -0.0500 to 1.7500, the "
                    "forecast -0.2000 to 1.6000; the measured loss turned up after 8M tokens (1.7000); at 80 repeats "
                    "it is further past the onset than any pilot reached (onset not observed).")
    # a missed regret: how far apart the forecast put the pick and the best measured, and whether it said tie
    rows[1]["measured_after"] = 1.7
    for tie, noise in ((None, "beyond"), (0.1, "within")):
        wrong = {"repeats": {"recommended": 0.2, "tie": tie, "regret_pct": 100 * (1.75 - 1.7) / 1.7}}
        line = study.why_missed(fit_results, {"tokens": 16e6, "rows": rows, "summary": wrong, "best_measured": 0.1},
                                "repeats")
        assert line.endswith(f"; the forecast put delta 0.2 -10.61% against 0.1 ({noise} its own noise), the runs "
                             f"measured it +2.94%.")
