"""One folder, one writer. A second process on a folder that one is writing is refused in one line with
exit status 1: train.py --resume on a running run, finetune.py on the same output, data.py on the same
dataset folder, study.py on the same out_dir. The first process's outputs are then byte for byte those
of a process that ran alone (a study's: the second one wrote and started nothing, as its whole run is
minutes long). A lock left by a SIGKILLed process blocks nothing. data.py's --part
processes share a dataset folder at once and still make the dataset that one process makes.

The first process of each pair waits at a gate (until a file appears) once it holds the lock and has
written part of its output, so that the second one surely comes while the first is running."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import settings
import train
from conftest import write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"tokens_per_s", "mfu", "elapsed_s"}  # the only fields two runs of one command may differ in
SCRIPTS = {"train": "train.py", "finetune": "finetune.py", "data": "data.py", "study": os.path.join("scripts", "study.py")}

# A script's main(argv), as `python SCRIPT argv` runs it, with the test corpus cut into several units and
# one function held at a gate: the call for which `holds` is true waits, in whichever process makes it
# (a pool's worker too), until the file `go` exists, having written its pid to the file `waiting`.
LAUNCHER = '''
import os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "scripts"))
import corpora, data, settings, {module}
corpora.UNIT_BYTES = 2000
sys.argv = [os.path.join({root!r}, {script!r})] + {argv!r}


def at_gate(original, holds):
    def wrapper(*args, **kwargs):
        if holds(*args) and not os.path.exists({go!r}):
            with open({waiting!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            while not os.path.exists({go!r}):
                time.sleep(0.02)
        return original(*args, **kwargs)
    return wrapper


{gate}
{module}.main(sys.argv[1:])
'''
GATES = {  # where each script waits: after writing part of its output
    "train": "data.Mixture.get_batch = at_gate(data.Mixture.get_batch, lambda mixture, step, *rest: step == 12)",
    "finetune": "data.Mixture.get_batch = at_gate(data.Mixture.get_batch, lambda mixture, step, *rest: step == 6)",
    "data": "settings.atomic_write = at_gate(settings.atomic_write, lambda path, *rest: path.endswith('000001.npz'))",
    "part": "settings.atomic_write = at_gate(settings.atomic_write, lambda path, *rest: path.endswith('.npz'))",
    "final": "data.assemble = at_gate(data.assemble, lambda *args: True)",
    "study": "study.prepare = at_gate(study.prepare, lambda *args: True)",
}


class Gated:
    """A script started in the background, waiting at its gate (GATES[gate]) until release()."""
    started = []  # every one, so that a failed test leaves none behind (no_process_left)

    def __init__(self, tmp_path, name, script, argv, gate):
        self.go, self.waiting, self.output = (str(tmp_path / f"{name}.{what}") for what in ("go", "waiting", "txt"))
        program = LAUNCHER.format(root=ROOT, module=script, script=SCRIPTS[script], argv=argv, go=self.go,
                                  waiting=self.waiting, gate=GATES[gate])
        with open(self.output, "w") as output:
            self.process = subprocess.Popen([sys.executable, "-c", program], stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, "OMP_NUM_THREADS": "1"})
        Gated.started.append(self)
        deadline = time.time() + 120
        while not os.path.exists(self.waiting):  # (written once the gate holds the process)
            assert self.process.poll() is None, self.tail()
            assert time.time() < deadline, self.tail()
            time.sleep(0.02)

    def tail(self) -> str:
        with open(self.output) as f:
            return f.read()[-3000:]

    def release(self) -> int:
        open(self.go, "w").close()
        return self.process.wait(timeout=300)

    def kill(self) -> list[int]:
        """SIGKILL the script, as kill -9 does; the pids of the processes it started (a pool's workers),
        which live on."""
        with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
        self.process.kill()
        self.process.wait()
        return children


@pytest.fixture(autouse=True)
def no_process_left():
    yield
    for gated in Gated.started:
        if gated.process.poll() is None:
            for pid in gated.kill():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    Gated.started.clear()


def run(script, argv) -> subprocess.CompletedProcess:
    """`python SCRIPT argv`, as a user runs it."""
    return subprocess.run([sys.executable, os.path.join(ROOT, SCRIPTS[script]), *argv], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_refused(done, script, folder, holder):
    """Exit status 1 and one line that names the folder and the process that holds it."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{os.path.basename(SCRIPTS[script])}: {folder} is being written by "
                                  f"{os.path.basename(SCRIPTS[script])} (pid {holder.process.pid} on "
                                  f"{socket.gethostname()} since "), done.stderr
    assert "wait for that one to end (or stop it) and run this again" in done.stderr


def files(folder) -> dict:
    """Every file under folder (relative path -> bytes) but the lock file, which says who held it."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != settings.LOCK_NAME:
                with open(os.path.join(root, name), "rb") as f:
                    found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


def log_lines(folder) -> list[dict]:
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def assert_same_output(folder, alone):
    """The same files, byte for byte, but a log.jsonl, whose lines agree but for their timing fields."""
    a, b = files(folder), files(alone)
    assert a.keys() == b.keys()
    if "log.jsonl" in a:
        assert log_lines(folder) == log_lines(alone)
    for name in a.keys() - {"log.jsonl"}:
        assert a[name] == b[name], name


def second_is_refused(tmp_path, script, argv, out, second_argv) -> str:
    """`script argv` (writing `out`) alone, its folder then moved aside; the same again, held at its gate
    once it has written part of `out`, while `script second_argv` comes: that one is refused in one line,
    and the first then ends with the output of the one alone. Returns the folder of the one alone."""
    alone = str(tmp_path / "alone")
    done = run(script, argv)
    assert done.returncode == 0, done.stderr[-3000:]
    os.rename(out, alone)
    first = Gated(tmp_path, "first", script, argv, script)
    assert_refused(run(script, second_argv), script, out, first)
    assert first.release() == 0, first.tail()
    assert_same_output(out, alone)
    return alone


def train_args(data_dir, out_dir, *extra):
    """32 steps of 8 x 32 tokens, an eval (log line and ckpt_latest.pt) every 8, a milestone at step 16."""
    return ["--data_dir", data_dir, "--out_dir", out_dir, "--model=cpu-tiny", "--seq_len", "32", "--batch_size", "8",
            "--max_tokens", "8192", "--eval_interval", "8", "--eval_windows", "8", "--warmup_steps", "4",
            "--lr", "3e-3", "--domain_frac", "0.25", "--ckpt_tokens", "4096", *extra]


def finetune_args(init, out_dir):
    """Two configurations of 14 steps, an eval every 4, the best one kept."""
    return ["--init", init, "--out_dir", out_dir, "--batch_size", "8", "--lr", "1e-3,3e-3", "--warmup", "2",
            "--max_epochs", "0.3", "--extend_epochs", "0.3", "--eval_interval", "4", "--patience", "3", "--save_best"]


def data_args(corpus, out_dir, *extra):
    return ["--general", f"local:{corpus[0]}", "--domain", f"local:{corpus[1]}", "--tokenizer", "byte",
            "--val_frac", "0.1", "--test_frac", "0.1", "--workers", "1", "--out", out_dir, *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


def test_a_second_train_py_on_a_running_run_is_refused(tiny_data, tmp_path):
    """The first run waits at step 12, its step-8 checkpoint written; the same command with --resume is
    refused. A run killed there (its lock left behind) resumes with --resume to the run alone."""
    out = str(tmp_path / "run")
    alone = second_is_refused(tmp_path, "train", train_args(tiny_data, out), out, train_args(tiny_data, out, "--resume"))
    killed = str(tmp_path / "killed")
    Gated(tmp_path, "killed", "train", train_args(tiny_data, killed), "train").kill()
    done = run("train", train_args(tiny_data, killed, "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert log_lines(killed) == log_lines(alone)
    for name in ("ckpt_4096.pt", "ckpt_latest.pt"):
        a, b = (torch.load(os.path.join(d, name), weights_only=True)["model"] for d in (killed, alone))
        assert all(torch.equal(a[k], b[k]) for k in b), name


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pretrained") / "run")
    train.main(train_args(tiny_data, out))
    return os.path.join(out, "ckpt_4096.pt")


def test_a_second_finetune_py_on_the_same_output_is_refused(checkpoint, tmp_path):
    """The first grid waits in its first configuration; the same command is refused. A grid killed there
    reruns to the grid alone."""
    out = str(tmp_path / "ft")
    alone = second_is_refused(tmp_path, "finetune", finetune_args(checkpoint, out), out, finetune_args(checkpoint, out))
    killed = str(tmp_path / "killed")
    Gated(tmp_path, "killed", "finetune", finetune_args(checkpoint, killed), "finetune").kill()
    done = run("finetune", finetune_args(checkpoint, killed))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_output(killed, alone)


def test_a_second_data_py_on_the_same_folder_is_refused(corpus, tmp_path):
    """The first preparation waits at its second unit; the same command is refused. One killed there with
    2 workers, whose orphaned workers live on (one waits at the gate, both keep the files they inherited
    open), blocks nothing: the same command makes the dataset the one alone made."""
    out = str(tmp_path / "ds")
    alone = second_is_refused(tmp_path, "data", data_args(corpus, out), out, data_args(corpus, out))
    killed = str(tmp_path / "killed")
    orphans = Gated(tmp_path, "killed", "data", data_args(corpus, killed, "--workers", "2"), "data").kill()
    try:
        assert orphans and all(os.path.exists(f"/proc/{pid}") for pid in orphans)  # still there, at the gate
        done = run("data", data_args(corpus, killed))
        assert done.returncode == 0, done.stderr[-3000:]
        assert files(killed) == files(alone)
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_parts_share_a_folder_and_the_final_step_holds_it_alone(corpus, tmp_path):
    """Two parts tokenize into one folder at once (both wait at their first unit, both holding it); the
    final step is refused while they run, and a part while the final step runs; the dataset is the one
    a single preparation makes."""
    out, alone = str(tmp_path / "parts"), str(tmp_path / "alone")
    assert run("data", data_args(corpus, alone)).returncode == 0
    parts = [Gated(tmp_path, f"part{i}", "data", data_args(corpus, out, "--part", f"{i}/2"), "part") for i in range(2)]
    assert_refused(run("data", data_args(corpus, out)), "data", out, parts[1])  # the last part to start is named
    assert [part.release() for part in parts] == [0, 0], [part.tail() for part in parts]
    final = Gated(tmp_path, "final", "data", data_args(corpus, out), "final")
    assert_refused(run("data", data_args(corpus, out, "--part", "0/2")), "data", out, final)
    assert final.release() == 0, final.tail()
    assert files(out) == files(alone)


def test_a_second_study_py_on_the_same_out_dir_is_refused(tiny_data, tmp_path):
    """The first study waits as it starts its first stage; the same command is refused before it writes or
    starts anything, so the first goes on as if alone. A study killed there (its lock left behind) does
    not block the next start, which gets past the lock to the same gate."""
    out, results = str(tmp_path / "out"), str(tmp_path / "results")
    argv = ["--preset", "micro", "--data_dir", tiny_data, "--out_dir", out, "--results_dir", results]
    first = Gated(tmp_path, "first", "study", argv, "study")
    before = files(str(tmp_path))
    done = run("study", argv)
    assert_refused(done, "study", out, first)
    assert done.stdout == ""  # no stage was started
    assert files(str(tmp_path)) == before
    first.kill()
    Gated(tmp_path, "next", "study", argv, "study").kill()  # it got past the lock: it waits at the gate
