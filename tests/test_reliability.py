"""Reliability: a run killed at any moment reruns to exactly the uninterrupted run, a full disk stops it
in one line with the last checkpoint intact, nothing half-written is trusted, and every bad value is
refused in one line before anything is written.

The kills are real and exact: the script runs in a fresh process that SIGKILLs itself halfway through
its n-th write of a chosen file (an atomic write's temporary file, or a log line), which leaves what a
kill -9 at that moment leaves. Reruns are compared with an uninterrupted run of the same command: the
logs must be identical except for timing fields, the checkpoints weight for weight."""
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import data
import evaluate
import finetune
import run_folder
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"tokens_per_s", "mfu", "elapsed_s"}  # the only fields a rerun may change


def train_args(data_dir, out_dir, *extra):
    """32 steps of 8 x 32 tokens, an eval (log line and ckpt_latest.pt) every 8, a milestone at step 16."""
    return ["--data_dir", data_dir, "--out_dir", out_dir, "--model=cpu-tiny", "--seq_len", "32", "--batch_size", "8",
            "--max_tokens", "8192", "--eval_interval", "8", "--eval_windows", "8", "--warmup_steps", "4",
            "--lr", "3e-3", "--domain_frac", "0.25", "--ckpt_tokens", "4096", *extra]


def finetune_args(init, out_dir, *extra):
    """Two configurations of 14 steps, an eval (log line and finetune.json) every 4, the best one kept."""
    return ["--init", init, "--out_dir", out_dir, "--batch_size", "8", "--lr", "1e-3,3e-3", "--warmup", "2",
            "--max_epochs", "0.3", "--extend_epochs", "0.3", "--eval_interval", "4", "--patience", "3", "--save_best", *extra]


KILL_HOOK = '''
import io, json, os, signal
import run_folder, settings


def kill_in_write(name, n):
    """SIGKILL this process halfway through its n-th write of a file called `name`."""
    seen = []

    def halfway(path, content):  # what a kill in the middle of a write leaves: the first half
        with open(path, "ab") as f:
            f.write(content[:len(content) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    def is_nth(path):
        seen.append(os.path.basename(path) == name)
        return seen[-1] and sum(seen) == n

    atomic_write, append_jsonl = settings.atomic_write, run_folder.append_jsonl

    def killing_atomic_write(path, write_fn, mode="wb"):
        if is_nth(path):
            buffer = io.BytesIO() if "b" in mode else io.StringIO()
            write_fn(buffer)
            content = buffer.getvalue()
            halfway(f"{path}.tmp{os.getpid()}", content if isinstance(content, bytes) else content.encode())
        atomic_write(path, write_fn, mode)

    def killing_append_jsonl(path, record):
        if is_nth(path):
            halfway(path, (json.dumps(record) + "\\n").encode())
        append_jsonl(path, record)

    settings.atomic_write, run_folder.append_jsonl = killing_atomic_write, killing_append_jsonl
'''


def run(script, args, kill=None):
    """`python SCRIPT ARGS` in a fresh process; kill=(name, n) kills it halfway through its n-th write of name."""
    if kill is None:
        cmd = [sys.executable, os.path.join(ROOT, script), *args]
    else:
        module = script[:-3]
        program = (f"import sys\nsys.path.insert(0, {ROOT!r})\nimport {module}\n{KILL_HOOK}\n"
                   f"kill_in_write({kill[0]!r}, {kill[1]})\n{module}.main({args!r})\n")
        cmd = [sys.executable, "-c", program]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:  # strictly: a cut-off line fails here
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def same_weights(path_a, path_b):
    a, b = (torch.load(p, weights_only=True)["model"] for p in (path_a, path_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temporary_files(out_dir):
    return glob.glob(os.path.join(out_dir, "*.tmp*"))


def assert_halfway(out_dir, name):
    """The kill came halfway through a write of `name`: a cut-off log line or half a temporary file."""
    if name == "log.jsonl":
        with open(os.path.join(out_dir, name)) as f:
            assert not f.read().endswith("\n")
    else:
        assert [os.path.basename(p).split(".tmp")[0] for p in temporary_files(out_dir)] == [name]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """Uninterrupted runs: (pretraining folder, finetuning folder of its step-16 milestone), and the
    ckpt_latest.pt of step 16 that the run keeps until step 24 (milestones hold the weights alone)."""
    root = tmp_path_factory.mktemp("reference")
    pre, ft, killed = str(root / "pre"), str(root / "ft"), str(root / "killed")
    for script, args in (("train.py", train_args(tiny_data, pre)),
                         ("finetune.py", finetune_args(os.path.join(pre, "ckpt_4096.pt"), ft))):
        done = run(script, args)
        assert done.returncode == 0, done.stderr[-2000:]
    assert run("train.py", train_args(tiny_data, killed), ("log.jsonl", 4)).returncode == -signal.SIGKILL
    return pre, ft, os.path.join(killed, "ckpt_latest.pt")


# ---------------------------------------------------------------------------------------------
# Kills

@pytest.mark.parametrize("kill, reruns, says", [
    (("ckpt_latest.pt", 1), ([], ["--resume"]), "killed before its first checkpoint"),  # either command restarts
    (("ckpt_4096.pt", 1), (["--resume"],), None),  # mid-run, halfway through a checkpoint (a milestone)
    (("log.jsonl", 3), (["--resume"],), "cut-off last line"),  # halfway through the step-16 log line
], ids=["first-checkpoint", "checkpoint", "log-line"])
def test_a_killed_run_reruns_to_the_uninterrupted_run(reference, tiny_data, tmp_path, kill, reruns, says):
    killed = str(tmp_path / "killed")
    assert run("train.py", train_args(tiny_data, killed), kill).returncode == -signal.SIGKILL
    assert_halfway(killed, kill[0])
    for n, rerun in enumerate(reruns):
        out = shutil.copytree(killed, str(tmp_path / f"rerun{n}"))
        again = run("train.py", train_args(tiny_data, out, *rerun))
        assert again.returncode == 0, again.stderr[-2000:]
        assert says is None or says in again.stderr
        assert not temporary_files(out)
        assert read_log(out) == read_log(reference[0])
        for name in ("ckpt_4096.pt", "ckpt_latest.pt"):
            assert same_weights(os.path.join(out, name), os.path.join(reference[0], name)), name


@pytest.mark.parametrize("kill", [("finetune.json", 8), ("ckpt_best.pt", 1), ("log.jsonl", 8)],
                         ids=["results", "best-checkpoint", "log-line"])
def test_a_killed_finetuning_reruns_to_the_uninterrupted_one(reference, tmp_path, kill):
    """finetune.json: during the second configuration; ckpt_best.pt: as the first one finishes; the log:
    a line of the second configuration. The rerun removes the temporary files the kill left."""
    init, out = os.path.join(reference[0], "ckpt_4096.pt"), str(tmp_path / "ft")
    assert run("finetune.py", finetune_args(init, out), kill).returncode == -signal.SIGKILL
    assert_halfway(out, kill[0])
    again = run("finetune.py", finetune_args(init, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert not temporary_files(out)
    assert read_json(os.path.join(out, "finetune.json")) == read_json(os.path.join(reference[1], "finetune.json"))
    assert read_log(out) == read_log(reference[1])
    assert same_weights(os.path.join(out, "ckpt_best.pt"), os.path.join(reference[1], "ckpt_best.pt"))


# ---------------------------------------------------------------------------------------------
# A full disk

@contextlib.contextmanager
def small_disk(folder, size):
    """A tmpfs of `size` bytes mounted at folder; yields a function that resizes it."""
    os.makedirs(folder)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", folder],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        yield lambda new_size: subprocess.run(["mount", "-o", f"remount,size={new_size // 1024}k", folder], check=True)
    finally:
        subprocess.run(["umount", folder], check=True)


def last_line(stderr):
    return stderr.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars


def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes(reference, tiny_data, tmp_path):
    """Room for two ckpt_latest.pt (one and its replacement) and half a milestone: the step-16
    milestone fits, the ckpt_latest.pt after it does not. The run stops in one line; once there is
    room, --resume ends as the uninterrupted run."""
    latest, milestone = (os.path.getsize(os.path.join(reference[0], f)) for f in ("ckpt_latest.pt", "ckpt_4096.pt"))
    with small_disk(str(tmp_path / "disk"), int(2 * latest + milestone / 2)) as resize:
        out = str(tmp_path / "disk" / "run")
        full = run("train.py", train_args(tiny_data, out))
        assert full.returncode == 1
        assert last_line(full.stderr) == (f"train.py: cannot write in {out}: No space left on device (the disk is "
                                          f"full); {out}/ckpt_latest.pt is intact: free space, then rerun the same "
                                          f"command with --resume")
        assert not temporary_files(out)
        assert run_folder.load_checkpoint(os.path.join(out, "ckpt_latest.pt"))["step"] == 8
        resize(64 << 20)
        again = run("train.py", train_args(tiny_data, out, "--resume"))
        assert again.returncode == 0, again.stderr[-2000:]
        assert read_log(out) == read_log(reference[0])
        assert same_weights(os.path.join(out, "ckpt_latest.pt"), os.path.join(reference[0], "ckpt_latest.pt"))


def test_a_full_disk_stops_finetuning_in_one_line_and_the_rerun_completes(reference, tmp_path):
    """Room for half of ckpt_best.pt: the first configuration's results fit, its best checkpoint does not."""
    init = os.path.join(reference[0], "ckpt_4096.pt")
    best = os.path.getsize(os.path.join(reference[1], "ckpt_best.pt"))
    with small_disk(str(tmp_path / "disk"), best // 2) as resize:
        out = str(tmp_path / "disk" / "ft")
        full = run("finetune.py", finetune_args(init, out))
        assert full.returncode == 1
        assert last_line(full.stderr) == (f"finetune.py: cannot write in {out}: No space left on device (the disk "
                                          f"is full); {out}/finetune.json keeps the finished configurations: free "
                                          f"space, then rerun the same command")
        assert not temporary_files(out)
        resize(64 << 20)
        again = run("finetune.py", finetune_args(init, out))
        assert again.returncode == 0, again.stderr[-2000:]
        assert read_json(os.path.join(out, "finetune.json")) == read_json(os.path.join(reference[1], "finetune.json"))
        assert same_weights(os.path.join(out, "ckpt_best.pt"), os.path.join(reference[1], "ckpt_best.pt"))


# ---------------------------------------------------------------------------------------------
# Run folders and damaged files

def killed_run(reference, out):
    """A run folder as a kill right after the step-16 checkpoint leaves it: ckpt_latest.pt of step 16,
    log lines up to step 16."""
    os.makedirs(out)
    shutil.copy(reference[2], os.path.join(out, "ckpt_latest.pt"))
    shutil.copy(os.path.join(reference[0], "config.json"), out)
    with open(os.path.join(reference[0], "log.jsonl")) as f:
        lines = f.readlines()[:3]
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.writelines(lines)
    return out


def snapshot(folder):
    """Every file under folder, name and bytes."""
    files = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def refusal(script, argv, capsys):
    """(exit status, stderr) of `python SCRIPT ARGV` for an input the script refuses, run in this process
    the way its __main__ block runs it (test_the_scripts_print_the_same_line runs them for real)."""
    main = {"train.py": train.main, "finetune.py": finetune.main, "evaluate.py": evaluate.main}[script]
    capsys.readouterr()
    try:
        main(argv)
    except SystemExit as e:  # argparse's errors: the scripts' parsers print them in one line
        return e.code, capsys.readouterr().err
    except (train.TrainError, data.DataError) as e:
        return 1, capsys.readouterr().err + f"{script}: {e}\n"
    pytest.fail(f"{script} {' '.join(argv)} was accepted")


def test_a_run_folder_is_resumable_or_says_how_to_recover(reference, tiny_data, tmp_path, capsys):
    out = killed_run(reference, str(tmp_path / "run"))
    os.remove(os.path.join(out, "ckpt_latest.pt"))
    shutil.copy(os.path.join(reference[0], "ckpt_4096.pt"), out)  # as if ckpt_latest.pt had been deleted
    before = snapshot(str(tmp_path))
    for rerun in ([], ["--resume"]):
        status, err = refusal("train.py", train_args(tiny_data, out, *rerun), capsys)
        assert (status, err.count("\n")) == (1, 1)
        assert "has milestone checkpoints but no ckpt_latest.pt, and milestones hold weights only: go on" in err
    status, err = refusal("train.py", train_args(tiny_data, str(tmp_path / "typo"), "--resume"), capsys)
    assert "--resume: " in err and "holds no run to continue; start it without --resume" in err
    assert snapshot(str(tmp_path)) == before
    os.remove(os.path.join(out, "ckpt_4096.pt"))  # no checkpoint at all, but evals worth keeping
    before = snapshot(str(tmp_path))
    status, err = refusal("train.py", train_args(tiny_data, out, "--resume"), capsys)
    assert "log.jsonl holds 3 evals but there is no checkpoint" in err and "move the folder away" in err
    assert snapshot(str(tmp_path)) == before
    # a milestone is no ckpt_latest.pt: it has no optimizer state or data position to resume exactly
    shutil.copy(os.path.join(reference[0], "ckpt_4096.pt"), os.path.join(out, "ckpt_latest.pt"))
    before = snapshot(str(tmp_path))
    status, err = refusal("train.py", train_args(tiny_data, out, "--resume"), capsys)
    assert (status, err.count("\n")) == (1, 1) and "holds weights only" in err and "--init_from" in err
    assert snapshot(str(tmp_path)) == before
    # the advice works: a new run from the newest milestone goes on from its tokens
    other = str(tmp_path / "other")
    again = run("train.py", train_args(tiny_data, other, "--init_from", os.path.join(reference[0], "ckpt_4096.pt")))
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r["tokens"] for r in read_log(other)] == [6144, 8192]


def test_damaged_files_are_refused_in_one_line_and_kept(reference, tiny_data, tmp_path, capsys):
    out = killed_run(reference, str(tmp_path / "run"))
    with open(os.path.join(out, "log.jsonl")) as f:
        lines = f.readlines()
    with open(os.path.join(out, "log.jsonl"), "w") as f:  # not a cut-off last line: a damaged one
        f.writelines([lines[0], lines[1][:20] + "\n", lines[2]])
    ft = str(tmp_path / "ft")
    shutil.copytree(reference[1], ft)
    with open(os.path.join(ft, "finetune.json"), "r+") as f:
        f.truncate(len(f.read()) // 2)
    before = snapshot(str(tmp_path))
    status, err = refusal("train.py", train_args(tiny_data, out, "--resume"), capsys)
    assert (status, err.count("\n")) == (1, 1) and "log.jsonl line 2 is not a log record" in err
    status, err = refusal("finetune.py", finetune_args(os.path.join(reference[0], "ckpt_4096.pt"), ft), capsys)
    assert (status, err.count("\n")) == (1, 1) and "finetune.json is damaged" in err and "move it away" in err
    assert snapshot(str(tmp_path)) == before


# ---------------------------------------------------------------------------------------------
# Bad values: refused in one line that names the flag, before anything is written

TRAIN_CASES = [
    ("--lr", "-1", "--lr -1.0: must be a number > 0"),
    ("--lr", "nan", "--lr nan: must be a number > 0"),
    ("--lr", "fast", "argument --lr: invalid float value: 'fast'"),
    ("--min_lr", "-0.0003", "--min_lr -0.0003: must be a number >= 0"),
    ("--min_lr", "0.01", "--min_lr 0.01 is above --lr 0.003"),
    ("--beta1", "2", "--beta1 2.0: must be in [0, 1)"),
    ("--beta2", "1", "--beta2 1.0: must be in [0, 1)"),
    ("--eps", "0", "--eps 0.0: must be a number > 0"),
    ("--weight_decay", "-0.1", "--weight_decay -0.1: must be a number >= 0"),
    ("--grad_clip", "-1", "--grad_clip -1.0: must be a number >= 0"),
    ("--horizon_mult", "nan", "--horizon_mult nan: must be a number >= 1"),
    ("--horizon_mult", "0.5", "--horizon_mult 0.5: must be a number >= 1"),
    ("--schedule", "bogus", "argument --schedule: invalid choice: 'bogus' (choose from 'cosine_truncated', "
                            "'constant')"),
    ("--domain_frac", "1.2", "--domain_frac 1.2: must be in [0, 1)"),
    ("--seq_len", "0", "--seq_len 0: must be a positive integer"),
    ("--batch_size", "2.5", "argument --batch_size: invalid integer value: '2.5'"),
    ("--grad_accum", "3", "batch_size 8 must split into grad_accum 3 micro-batches"),
    ("--eval_interval", "0", "--eval_interval 0: must be a positive integer"),
    ("--warmup_steps", "-1", "--warmup_steps -1: must be an integer >= 0"),
    ("--seed", "-1", "--seed -1: must be an integer >= 0"),
    ("--max_tokens", "0", "--max_tokens 0: must be a token count > 0"),
    ("--max_tokens", "100", "--max_tokens 100 is less than one step (8 x 32 tokens): raise it"),
    ("--ckpt_tokens", "1M", "--ckpt_tokens 1M is beyond --max_tokens 8192"),
    ("--ckpt_tokens", "soon", "--ckpt_tokens 'soon': give comma-separated token counts"),
    ("--model", "gpt-7", "argument --model: invalid choice: 'gpt-7' (choose from 'cpu-tiny', 'cpu-mini', "),
    ("--device", "tpu", "--device tpu: use auto, cpu, cuda, cuda:N or mps"),
    ("--dtype", "int8", "argument --dtype: invalid choice: 'int8' (choose from 'auto', 'float32', 'bfloat16', "
                        "'float16')"),
    ("--dtype", "nosuch", "argument --dtype: invalid choice: 'nosuch'"),
    ("--compile", "maybe", "argument --compile: expected true or false, got 'maybe'"),
    ("--parallel", "zero3", "argument --parallel: invalid choice: 'zero3' (choose from 'ddp', 'fsdp')"),
    ("--act_ckpt", "sometimes", "argument --act_ckpt: expected true or false, got 'sometimes'"),
    ("--ckpt_interval", "12", "--ckpt_interval 12 is not a multiple of --eval_interval 8"),
    ("--ckpt_interval", "-8", "--ckpt_interval -8: must be an integer >= 0"),
    ("--memory_gb", "-1", "--memory_gb -1.0: must be a number of GB >= 0"),
    ("--memory_gb", "0.0001", "the memory plan needs"),
    ("--config", "BAD_JSON", "--config BAD_JSON is not valid JSON"),
    ("--config", "LIST_JSON", "--config LIST_JSON: expected a JSON object of settings"),
    ("--config", "BAD_VALUE_JSON", "--config BAD_VALUE_JSON: argument --lr: invalid float value: '[0.1]'"),
] + ([("--device", "cuda", "--device cuda: 0 CUDA GPUs are visible here")] if not torch.cuda.is_available() else [])

FINETUNE_CASES = [
    ("--max_epochs", "nan", "--max_epochs nan: must be a number of epochs > 0"),
    ("--max_epochs", "0", "--max_epochs 0.0: must be a number of epochs > 0"),
    ("--eval_epochs", "-1", "--eval_epochs -1.0: must be a number of epochs > 0"),
    ("--patience", "0", "--patience 0: must be a positive integer"),
    ("--replay", "1", "--replay 1.0: must be in [0, 1)"),
    ("--lr", "nan", "--lr must be numbers > 0 and --warmup integers >= 0"),
    ("--lr", "0x", "--lr must be numbers > 0 and --warmup integers >= 0"),
    ("--warmup", "-1", "--lr must be numbers > 0 and --warmup integers >= 0"),
    ("--beta2", "1", "--beta2 1.0: must be in [0, 1)"),
    ("--weight_decay", "-0.1", "--weight_decay -0.1: must be a number >= 0"),
    ("--batch_size", "0", "--batch_size 0: must be a positive integer"),
    ("--device", "tpu", "--device tpu: use auto, cpu, cuda, cuda:N or mps"),
    ("--dtype", "int8", "argument --dtype: invalid choice: 'int8' (choose from 'auto', 'float32', 'bfloat16', "
                        "'float16')"),
    ("--config", "BAD_JSON", "--config BAD_JSON is not valid JSON"),
]

EVALUATE_CASES = [
    ("--sample", "-3", "argument --sample: -3: must be an integer >= 0"),
    ("--temperature", "0", "argument --temperature: 0: must be a number > 0"),
    ("--top_k", "-1", "argument --top_k: -1: must be an integer >= 0"),
    ("--seed", "-1", "argument --seed: -1: must be an integer >= 0"),
    ("--batch_size", "0", "argument --batch_size: 0: must be a positive integer"),
    ("--device", "tpu", "--device tpu: use auto, cpu, cuda, cuda:N or mps"),
    ("--out", "NO_FOLDER", "--out NO_FOLDER: cannot write a file there; give a path in an existing, writable folder"),
    ("--out", "A_FOLDER", "--out A_FOLDER: cannot write a file there"),
]


@pytest.mark.parametrize("script, flag, value, message", [
    pytest.param(script, *case, id=f"{script}{case[0]}={case[1]}")
    for script, cases in (("train.py", TRAIN_CASES), ("finetune.py", FINETUNE_CASES), ("evaluate.py", EVALUATE_CASES))
    for case in cases])
def test_a_bad_value_is_refused_in_one_line_and_nothing_is_written(reference, tiny_data, tmp_path, capsys,
                                                                   script, flag, value, message):
    """Each script on a folder it would write to if the value were good: a resumable run, a finished
    finetuning grid (rewritten at its end), an earlier results file."""
    run_dir, ft_dir, results = str(tmp_path / "run"), str(tmp_path / "ft"), str(tmp_path / "results.jsonl")
    killed_run(reference, run_dir)
    shutil.copytree(reference[1], ft_dir)
    with open(results, "w") as f:
        f.write('{"earlier": "results"}\n')
    paths = {"BAD_JSON": '{"lr": 3e-3,}', "LIST_JSON": "[1, 2]", "BAD_VALUE_JSON": '{"lr": [0.1]}'}
    for name, text in paths.items():
        paths[name] = str(tmp_path / f"{name.lower()}.json")
        with open(paths[name], "w") as f:
            f.write(text)
    paths.update(NO_FOLDER=str(tmp_path / "no" / "results.jsonl"), A_FOLDER=run_dir)
    value, message = paths.get(value, value), message.replace(value, paths.get(value, value))
    argv = {"train.py": train_args(tiny_data, run_dir, "--resume"),
            "finetune.py": finetune_args(os.path.join(reference[0], "ckpt_4096.pt"), ft_dir),
            "evaluate.py": [os.path.join(run_dir, "ckpt_latest.pt"), "--out", results, "--n_items", "4"]}[script]
    before = snapshot(str(tmp_path))
    status, err = refusal(script, argv + [flag, value], capsys)
    assert status != 0
    assert err.count("\n") == 1 and message in err and flag in err, err
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("script, args, status, line", [
    ("train.py", ["--lr", "nan"], 1, "train.py: --lr nan: must be a number > 0"),
    ("finetune.py", ["--init", "x.pt", "--max_epochs", "nan"], 1,
     "finetune.py: --max_epochs nan: must be a number of epochs > 0"),
    ("evaluate.py", ["x.pt", "--sample", "-3"], 2,
     "evaluate.py: argument --sample: -3: must be an integer >= 0 (see --help)"),
])
def test_the_scripts_print_the_same_line(script, args, status, line):
    """What `refusal` reproduces in this process, for real: the exit status and the one line."""
    done = run(script, args)
    assert (done.returncode, done.stderr) == (status, line + "\n")
