"""FSDP2 and sharded checkpoints, and the memory plan: 2 FSDP ranks give one process's losses, a
sharded run killed mid-way resumes exactly (and on another number of processes), its checkpoints load
in one process, damaged shards fail in one line, and the plan matches a step's measured peak."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import evaluate
import processes
import run_folder
import settings
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import memory_plan  # noqa: E402

TIMING = ("tokens_per_s", "mfu", "elapsed_s")
LOSSES = ("train_loss", "general_val_loss", "domain_train_loss", "domain_test_loss")

# A launcher that SIGKILLs its rank as it reaches a step's batch, as a kill -9 of a node would.
KILL_AT_STEP = '''
import os, signal, sys
sys.path.insert(0, {root!r})
import data, train
get_batch = data.Mixture.get_batch
def killing_get_batch(self, step, *args):
    if step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return get_batch(self, step, *args)
data.Mixture.get_batch = killing_get_batch
train.main(sys.argv[1:])
'''


def tiny_args(data_dir, out_dir, *extra):
    """16 steps of 8 x 32 tokens in 2 micro-batches, an eval (and ckpt_latest.pt) every 8, a milestone at 8."""
    return ["--data_dir", data_dir, "--out_dir", out_dir, "--model=cpu-tiny", "--seq_len", "32", "--batch_size", "8",
            "--grad_accum", "2", "--max_tokens", "4096", "--eval_interval", "8", "--eval_windows", "8",
            "--warmup_steps", "4", "--lr", "3e-3", "--domain_frac", "0.25", "--ckpt_tokens", "2048", *extra]


def torchrun(args, port, script=None, tmp_path=None):
    """train.py (or a launcher script's text) under torchrun with 2 gloo ranks."""
    path = os.path.join(ROOT, "train.py")
    if script is not None:
        path = str(tmp_path / "launcher.py")
        with open(path, "w") as f:
            f.write(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), path]
    return subprocess.run(cmd + args, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def assert_same_losses(a, b, rel):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in LOSSES:
            if ra[key] is not None:
                assert rb[key] == pytest.approx(ra[key], rel=rel), (ra["step"], key)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """The same run in one process (no wrapper at all) and on 2 FSDP ranks: (plain, fsdp) folders."""
    root = tmp_path_factory.mktemp("parallel")
    plain, fsdp = str(root / "plain"), str(root / "fsdp")
    train.main(tiny_args(tiny_data, plain))
    done = torchrun(tiny_args(tiny_data, fsdp, "--parallel", "fsdp"), port=29531)
    assert done.returncode == 0, done.stderr[-3000:]
    return plain, fsdp


def test_fsdp_gives_the_losses_of_one_process_and_writes_shards(runs):
    plain, fsdp = runs
    assert_same_losses(read_log(plain), read_log(fsdp), rel=1e-4)  # DDP == one process: test_train.py
    latest, milestone = os.path.join(fsdp, "ckpt_latest.pt"), os.path.join(fsdp, "ckpt_2048.pt")
    assert sorted(os.listdir(latest)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "info.pt"]  # a part per rank
    assert any(k.startswith("optimizer.") for k in run_folder.shard_contents(latest))
    assert not any(k.startswith("optimizer.") for k in run_folder.shard_contents(milestone))  # weights only
    assert run_folder.load_checkpoint(milestone)["step"] == 8 and "mixture" not in run_folder.load_checkpoint(milestone)
    assert not [f for f in os.listdir(fsdp) if ".tmp" in f or ".old" in f]


def test_a_sharded_checkpoint_loads_in_one_process(runs):
    """evaluate.py (one process, no process group) reads the 2 ranks' shards: the same weights as the
    one-process run's milestone and the same losses as the FSDP run logged."""
    plain, fsdp = runs
    model, ckpt = run_folder.load_model(os.path.join(fsdp, "ckpt_2048.pt"))
    reference, _ = run_folder.load_model(os.path.join(plain, "ckpt_2048.pt"))
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
    result = evaluate.evaluate_checkpoint(os.path.join(fsdp, "ckpt_2048.pt"), n_items=4, device="cpu")
    logged = next(r for r in read_log(fsdp) if r["step"] == 8)
    for key in LOSSES[1:]:
        assert result[key] == pytest.approx(logged[key], rel=1e-5)


def test_a_killed_sharded_run_resumes_exactly_on_any_number_of_processes(runs, tiny_data, tmp_path):
    """Killed (SIGKILL) as rank 0 reaches step 12: ckpt_latest.pt of step 8 is what is left. 2 ranks
    resume to exactly the uninterrupted run; one process resumes from the same shards to its losses."""
    killed = str(tmp_path / "killed")
    done = torchrun(tiny_args(tiny_data, killed, "--parallel", "fsdp"), port=29532,
                    script=KILL_AT_STEP.format(root=ROOT, step=12), tmp_path=tmp_path)
    assert done.returncode != 0 and run_folder.load_checkpoint(os.path.join(killed, "ckpt_latest.pt"))["step"] == 8
    one = shutil.copytree(killed, str(tmp_path / "one"))
    done = torchrun(tiny_args(tiny_data, killed, "--parallel", "fsdp", "--resume"), port=29533)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_log(killed) == read_log(runs[1])
    a, b = (run_folder.load_model(os.path.join(d, "ckpt_latest.pt"))[0].state_dict() for d in (killed, runs[1]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train.main(tiny_args(tiny_data, one, "--parallel", "fsdp", "--resume"))  # a process group of one
    assert_same_losses(read_log(one), read_log(runs[1]), rel=1e-5)


def test_a_sharded_weight_average_resumes_and_is_the_milestone(tiny_data, tmp_path):
    """--ema on 2 FSDP ranks, killed at step 12 and resumed: each rank's shard of the average comes
    back, so the log (the average's losses) is one process's; the milestone holds the average."""
    plain, killed = str(tmp_path / "plain"), str(tmp_path / "killed")
    train.main(tiny_args(tiny_data, plain, "--ema", "0.9"))
    done = torchrun(tiny_args(tiny_data, killed, "--parallel", "fsdp", "--ema", "0.9"), port=29534,
                    script=KILL_AT_STEP.format(root=ROOT, step=12), tmp_path=tmp_path)
    assert done.returncode != 0 and run_folder.load_checkpoint(os.path.join(killed, "ckpt_latest.pt"))["step"] == 8
    done = torchrun(tiny_args(tiny_data, killed, "--parallel", "fsdp", "--ema", "0.9", "--resume"), port=29535)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_losses(read_log(plain), read_log(killed), rel=1e-4)
    result = evaluate.evaluate_checkpoint(os.path.join(killed, "ckpt_2048.pt"), n_items=4, device="cpu")
    logged = next(r for r in read_log(killed) if r["step"] == 8)
    for key in LOSSES[1:]:
        assert result[key] == pytest.approx(logged[key], rel=1e-5)


def test_bad_sharded_checkpoints_fail_in_one_line(runs, tiny_data, tmp_path):
    plain, fsdp = runs
    with pytest.raises(train.TrainError, match="holds a model with d_model=64 \\(not 128\\)"):
        train.main(tiny_args(tiny_data, str(tmp_path / "wide"), "--d_model", "128", "--init_from",
                             os.path.join(fsdp, "ckpt_2048.pt")))
    with pytest.raises(train.TrainError, match="wrote sharded checkpoints: resume it with --parallel fsdp"):
        train.main(tiny_args(tiny_data, fsdp, "--resume", "--max_tokens", "4096"))
    with pytest.raises(train.TrainError, match="wrote single-file checkpoints: resume it with --parallel ddp"):
        train.main(tiny_args(tiny_data, plain, "--resume", "--parallel", "fsdp"))
    damaged = shutil.copytree(os.path.join(fsdp, "ckpt_2048.pt"), str(tmp_path / "ckpt_2048.pt"))
    with open(os.path.join(damaged, "__1_0.distcp"), "r+b") as f:  # half-written
        f.truncate(os.path.getsize(f.name) // 2)
    with pytest.raises(train.TrainError, match="__1_0.distcp is missing or cut short: checkpoint .* is damaged"):
        evaluate.main([damaged])
    os.remove(os.path.join(damaged, "__1_0.distcp"))
    with pytest.raises(train.TrainError, match="__1_0.distcp is missing or cut short"):
        run_folder.load_model(damaged)
    os.remove(os.path.join(damaged, ".metadata"))
    with pytest.raises(train.TrainError, match="not a complete checkpoint folder"):
        run_folder.load_model(damaged)
    os.remove(os.path.join(damaged, "info.pt"))
    with pytest.raises(train.TrainError, match="is a folder but not a checkpoint"):
        run_folder.load_model(damaged)


def test_a_failed_sharded_save_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    """The disk fills up during the step-8 checkpoint: one line, the step-0 checkpoint intact, no
    temporary folder. A kill between a save's two renames leaves it set aside; the rerun puts it back."""
    out, latest = str(tmp_path / "run"), os.path.join(str(tmp_path / "run"), "ckpt_latest.pt")
    write_data, writes = run_folder.dcp.FileSystemWriter.write_data, []

    def full_disk(self, *args, **kwargs):
        writes.append(1)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_data(self, *args, **kwargs)
    monkeypatch.setattr(run_folder.dcp.FileSystemWriter, "write_data", full_disk)
    try:
        with pytest.raises(train.TrainError) as failure:
            train.main(tiny_args(tiny_data, out, "--parallel", "fsdp", "--ckpt_tokens", ""))
    finally:
        dist.destroy_process_group()  # left by the failed run (a real one exits)
    assert str(failure.value) == (f"cannot write in {out}: No space left on device (the disk is full); {latest} is "
                                  f"intact: free space, then rerun the same command with --resume")
    assert run_folder.load_checkpoint(latest)["step"] == 0 and sorted(os.listdir(out)) == [
        settings.LOCK_NAME, "ckpt_latest.pt", "config.json", "log.jsonl"]
    monkeypatch.undo()
    os.rename(latest, latest + ".old8")  # as a kill after the first rename of the next save leaves it
    train.main(tiny_args(tiny_data, out, "--parallel", "fsdp", "--ckpt_tokens", "", "--resume"))
    assert [r["step"] for r in read_log(out)] == [0, 8, 16] and run_folder.load_checkpoint(latest)["step"] == 16


# ---------------------------------------------------------------------------------------------
# The memory plan

def test_the_plan_matches_the_measured_peak():
    """At small shapes that stress activations, weights, a large vocabulary and activation
    checkpointing in turn (scripts/memory_plan.py prints the same table)."""
    for row in memory_plan.compare():
        assert 0.8 <= row["ratio"] <= 1.2, row


def test_every_preset_fits_its_hardware_by_the_plan():
    for name, (gpus, memory_gb) in memory_plan.HARDWARE.items():
        cfg = memory_plan.preset_config(name)
        mc = train.model_config(cfg, memory_plan.GPT2_VOCAB)
        plan = processes.memory_plan(mc, cfg.batch_size // cfg.grad_accum, gpus, cfg.parallel, cfg.act_ckpt,
                                 torch.float32 if memory_gb is None else torch.bfloat16,
                                 "cpu" if memory_gb is None else "cuda")
        assert plan["total"] <= (memory_gb or 1) * 1e9, name
        assert cfg.grad_accum % gpus == 0, name


def test_a_run_that_cannot_fit_is_refused_with_a_fix_that_fits(tiny_data, tmp_path, capsys):
    """A budget between the plans of micro-batches of 4 and 8: refused before anything is written,
    with the grad_accum that fits, which then runs."""
    mc = train.model_config(settings.parse_config(train.TrainConfig, tiny_args(tiny_data, "x"), ""), 257)
    four, eight = (processes.memory_plan(mc, m, 1, "ddp", False, torch.float32, "cpu")["total"] for m in (4, 8))
    budget = ["--memory_gb", f"{(four + eight) / 2 / 1e9:.6f}"]
    out = str(tmp_path / "run")
    with pytest.raises(train.TrainError, match="the memory plan needs .* GB per process but --memory_gb gives .* GB: "
                                               "--grad_accum 2 or --act_ckpt"):
        train.main(tiny_args(tiny_data, out, "--grad_accum", "1", *budget))
    assert "memory plan per process" in capsys.readouterr().out and not os.path.exists(out)
    train.main(tiny_args(tiny_data, out, "--grad_accum", "2", "--max_tokens", "512", "--ckpt_tokens", "", *budget))
    assert read_log(out)[-1]["step"] == 2
