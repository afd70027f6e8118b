"""The pretraining loop: it learns, logs, resumes exactly, and torchrun matches one process."""
import dataclasses
import json
import os
import shutil
import sys
import types

import pytest
import torch

import run_folder
import settings
import train
from conftest import one_process_and_two_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {"step", "tokens", "domain_frac", "domain_epochs", "lr", "train_loss", "general_val_loss",
          "domain_train_loss", "domain_test_loss", "tokens_per_s", "elapsed_s"}


def tiny_args(data_dir, out_dir, *extra):
    return ["--data_dir", data_dir, "--out_dir", out_dir, "--model=cpu-tiny", "--seq_len", "32",
            "--batch_size", "8", "--max_tokens", "8192", "--eval_interval", "8", "--eval_windows", "8",
            "--warmup_steps", "4", "--lr", "3e-3", "--domain_frac", "0.25", *extra]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_run_learns_logs_and_checkpoints(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train.main(tiny_args(tiny_data, out, "--ckpt_tokens", "2048,4096"))
    log = read_log(out)
    assert all(FIELDS <= set(rec) for rec in log)
    assert [r["step"] for r in log] == [0, 8, 16, 24, 32]
    assert [r["tokens"] for r in log] == [s * 8 * 32 for s in (0, 8, 16, 24, 32)]
    for key in ("general_val_loss", "domain_train_loss", "domain_test_loss"):
        assert log[-1][key] < log[0][key] - 1.0, key
    assert log[-1]["domain_epochs"] == pytest.approx(8192 * 0.25 / json.load(
        open(os.path.join(out, "config.json")))["domain_train_tokens"], rel=0.05)
    assert sorted(f for f in os.listdir(out) if f.endswith(".pt")) == ["ckpt_2048.pt", "ckpt_4096.pt", "ckpt_latest.pt"]
    milestone, latest = (torch.load(os.path.join(out, f), weights_only=True) for f in ("ckpt_4096.pt", "ckpt_latest.pt"))
    assert milestone["step"] == 16 and milestone["tokens"] == 4096 and latest["step"] == 32
    assert not {"optimizer", "mixture", "rng"} & set(milestone)  # a milestone is the weights, for finetuning
    assert {"model", "optimizer", "mixture", "rng"} <= set(latest)


def test_the_default_dataset_is_prepared_on_first_use(tmp_path, monkeypatch):
    """`python train.py` on a fresh machine prepares the default dataset first; any other missing dataset
    is a one-line error, and nothing is prepared for it."""
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    default, other = str(tmp_path / "default"), str(tmp_path / "other")
    monkeypatch.setattr(train.data, "DEFAULT_DATA_DIR", default)
    monkeypatch.setattr(train.data, "DEFAULT_PREPARE", dict(general=f"local:{gen}", domain=f"local:{dom}",
                                                            tokenizer="byte"))
    train.main(tiny_args(default, str(tmp_path / "run")))
    assert train.data.load_meta(default)["sources"] == {"general": f"local:{gen}", "domain": f"local:{dom}"}
    with pytest.raises(train.data.DataError, match="other has no meta.json: prepare it with"):
        train.main(tiny_args(other, str(tmp_path / "run2")))
    assert not os.path.exists(other)


@pytest.mark.parametrize("average", [[], ["--ema", "0.9"]])
def test_resume_reproduces_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch, average):
    """With --ema the log's losses are the weight average's: they resume exactly only if it does."""
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    train.main(tiny_args(tiny_data, full, "--ckpt_tokens", "4096", *average))
    # Interrupt after step 16: what a crash would leave is the step-16 checkpoint as the latest one,
    # plus log lines written after it (which resume must drop).
    save = run_folder.save_checkpoint
    monkeypatch.setattr(run_folder, "save_checkpoint", lambda path, state: state["step"] <= 16 and save(path, state))
    train.main(tiny_args(tiny_data, resumed, "--ckpt_tokens", "4096", *average))
    monkeypatch.undo()
    with open(os.path.join(resumed, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in read_log(full)[:4])  # up to step 24: one line too many
    open(os.path.join(resumed, "ckpt_latest.pt.tmp4242"), "wb").write(b"half a checkpoint")  # cut off by a kill
    train.main(tiny_args(tiny_data, resumed, "--resume", *average))
    assert not os.path.exists(os.path.join(resumed, "ckpt_latest.pt.tmp4242"))
    a, b = read_log(full), read_log(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "general_val_loss", "domain_train_loss", "domain_test_loss", "lr"):
            if ra[key] is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-7), (ra["step"], key)


@pytest.mark.parametrize("where, step", [("batch", 3), ("log", 16)])
def test_a_killed_run_resumes_to_the_uninterrupted_log(tiny_data, tmp_path, monkeypatch, where, step):
    """Killed (KeyboardInterrupt) before its first eval, where only the step-0 checkpoint exists, or
    while writing the step-16 log line, which must then not be missing from the resumed log."""
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    train.main(tiny_args(tiny_data, full))

    def kill_at(real, step_of):
        def wrapper(*args, **kwargs):
            if step_of(*args) == step:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return wrapper
    with monkeypatch.context() as m:
        if where == "batch":
            m.setattr(train.data.Mixture, "get_batch", kill_at(train.data.Mixture.get_batch, lambda mix, s, *a: s))
        else:
            m.setattr(run_folder, "append_jsonl", kill_at(run_folder.append_jsonl, lambda path, record: record["step"]))
        with pytest.raises(KeyboardInterrupt):
            train.main(tiny_args(tiny_data, killed))
    train.main(tiny_args(tiny_data, killed, "--resume"))
    a, b = read_log(full), read_log(killed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 8, 16, 24, 32]
    assert [r["domain_test_loss"] for r in b] == pytest.approx([r["domain_test_loss"] for r in a], rel=1e-6)


def test_the_weight_average_follows_its_rule_and_is_what_evals_and_milestones_hold(tiny_data, tmp_path):
    """WeightAverage by hand on one weight; then a run with --ema: the milestone holds the average (its
    losses are the logged ones at its step), ckpt_latest.pt the weights themselves."""
    layer = torch.nn.Linear(1, 1, bias=False)
    average = train.WeightAverage(layer, decay=0.9)
    expected = layer.weight.item()
    for t, w in enumerate([1.0, 2.0, -3.0, 4.0] * 8, start=1):
        layer.weight.data.fill_(w)
        average.update()
        keep = min(0.9, (1 + t) / (10 + t))  # 0.18, 0.25, ... up to 0.9
        expected = keep * expected + (1 - keep) * w
        assert average.weights["weight"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(KeyError), average.in_model():
        assert layer.weight.item() == pytest.approx(expected, rel=1e-6)
        raise KeyError  # the model gets its own weights back however the block ends
    assert layer.weight.item() == 4.0

    out = str(tmp_path / "ema")
    train.main(tiny_args(tiny_data, out, "--ckpt_tokens", "4096", "--ema", "0.9", "--max_tokens", "4096"))
    milestone, latest = (run_folder.load_model(os.path.join(out, f)) for f in ("ckpt_4096.pt", "ckpt_latest.pt"))
    assert milestone[1]["step"] == latest[1]["step"] == 16 and latest[1]["ema_steps"] == 16
    assert not torch.equal(milestone[0].wte.weight, latest[0].wte.weight)
    assert torch.equal(milestone[0].wte.weight, latest[1]["ema"]["wte.weight"])
    split = train.data.open_split(tiny_data, "domain_test")
    assert train.mean_loss(milestone[0], split, 32, 8, 32, "cpu") == pytest.approx(read_log(out)[-1]["domain_test_loss"],
                                                                                  rel=1e-6)
    assert train.mean_loss(latest[0], split, 32, 8, 32, "cpu") != pytest.approx(read_log(out)[-1]["domain_test_loss"],
                                                                               rel=1e-3)


def test_init_from_continues_tokens_and_general_data(tiny_data, tmp_path):
    npt, scpt = str(tmp_path / "npt"), str(tmp_path / "scpt")
    train.main(tiny_args(tiny_data, npt, "--domain_frac", "0", "--ckpt_tokens", "6144"))
    train.main(tiny_args(tiny_data, scpt, "--init_from", os.path.join(npt, "ckpt_6144.pt"), "--domain_frac", "0.5"))
    log = read_log(scpt)
    assert log[0]["tokens"] > 6144 and log[-1]["tokens"] == 8192 and log[-1]["domain_frac"] == 0.5
    ckpt = torch.load(os.path.join(scpt, "ckpt_latest.pt"), weights_only=True)
    init = torch.load(os.path.join(npt, "ckpt_6144.pt"), weights_only=True)
    assert ckpt["mixture"]["general_start"] == init["general_position"] > 0


def test_bad_inputs_fail_with_one_line(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    train.main(tiny_args(tiny_data, out, "--max_tokens", "1024"))
    with pytest.raises(train.TrainError, match="already holds a run"):
        train.main(tiny_args(tiny_data, out))
    with pytest.raises(train.TrainError, match=r"--domain_frac 1.2: must be in \[0, 1\)"):
        train.main(tiny_args(tiny_data, str(tmp_path / "x"), "--domain_frac", "1.2"))
    with pytest.raises(SystemExit):  # the flag's parser knows the presets
        train.main(tiny_args(tiny_data, str(tmp_path / "y"), "--model", "gpt-7"))
    assert "argument --model: invalid choice: 'gpt-7' (choose from 'cpu-tiny', " in capsys.readouterr().err
    with pytest.raises(train.TrainError, match="d_model=64"):
        train.main(tiny_args(tiny_data, str(tmp_path / "z"), "--d_model", "128",
                             "--init_from", os.path.join(out, "ckpt_latest.pt")))
    with pytest.raises(train.TrainError, match="--resume: .* holds no run to continue"):
        train.main(tiny_args(tiny_data, str(tmp_path / "none"), "--resume"))
    with pytest.raises(train.TrainError, match="other domain_frac"):
        train.main(tiny_args(tiny_data, out, "--max_tokens", "1024", "--resume", "--domain_frac", "0.5"))
    with pytest.raises(train.TrainError, match="other min_lr, horizon_mult, ema"):  # the whole schedule is kept
        train.main(tiny_args(tiny_data, out, "--max_tokens", "1024", "--resume", "--min_lr", "0",
                             "--horizon_mult", "1", "--ema", "0.99"))
    with pytest.raises(train.TrainError, match="is finished.*--init_from"):
        train.main(tiny_args(tiny_data, out, "--max_tokens", "1024", "--resume"))
    other = str(tmp_path / "other")
    shutil.copytree(tiny_data, other)
    with open(os.path.join(other, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(other, "meta.json"), "w") as f:
        json.dump({**meta, "dataset_id": "another"}, f)
    with pytest.raises(train.TrainError, match="--resume on dataset another"):
        train.main(tiny_args(other, out, "--max_tokens", "1024", "--resume"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(train.TrainError, match="corrupt"):
        train.main(tiny_args(tiny_data, str(tmp_path / "w"), "--init_from", str(bad)))
    torch.save({"weights": torch.zeros(2)}, bad)  # a torch file, but not a checkpoint
    with pytest.raises(train.TrainError, match="not a checkpoint of train.py.*model_config"):
        train.main(tiny_args(tiny_data, str(tmp_path / "w"), "--init_from", str(bad)))
    ckpt = torch.load(os.path.join(out, "ckpt_latest.pt"), weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "format"}, bad)  # a checkpoint of no known format
    with pytest.raises(train.TrainError, match="bad.pt is a checkpoint of format none, and this code reads format 1: "
                                               "use the version of the code that wrote it, or train it again"):
        train.main(tiny_args(tiny_data, str(tmp_path / "w"), "--init_from", str(bad)))
    for flags, message in ((["--grad_accum", "3"], "batch_size 8 must split into grad_accum 3"),
                           (["--eval_interval", "0"], "--eval_interval 0: must be a positive integer"),
                           (["--ema", "1"], r"--ema 1.0: must be in \[0, 1\)")):
        with pytest.raises(train.TrainError, match=message):
            train.main(tiny_args(tiny_data, str(tmp_path / "v"), *flags))
        assert not os.path.exists(tmp_path / "v")  # refused before anything is written
    # a checkpoint of the gpt2 vocabulary on a byte-level dataset: refused where the two meet
    with pytest.raises(train.data.DataError, match="50257-token vocabulary but .* holds byte tokens"):
        run_folder.check_vocabulary({"model_config": {"vocab_size": 50257}}, train.data.load_meta(tiny_data), "x.pt",
                               tiny_data)


def test_nan_loss_stops_with_the_step(tiny_data, tmp_path):
    with pytest.raises(train.TrainError, match="at step 8"):
        train.main(tiny_args(tiny_data, str(tmp_path / "nan"), "--lr", "1e30", "--warmup_steps", "0",
                             "--grad_clip", "0"))


def test_schedules():
    schedule = train.Schedule("cosine_truncated", lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert 0.9 < schedule(99) < 1.0  # the paper: a 10x longer cosine, stopped early
    assert schedule(1000) == pytest.approx(0.1)  # where the cosine would end, had the run gone on
    schedule = dataclasses.replace(schedule, kind="constant")
    assert schedule(0) == pytest.approx(0.1) and schedule(99) == 1.0 and schedule(1000) == 1.0


def test_flags_accept_both_spellings_and_config_files(tmp_path):
    cfg = settings.parse_config(train.TrainConfig, ["--lr=0.01", "--batch_size", "64", "--compile",
                                                 "--max_tokens=2e6"], "")
    assert (cfg.lr, cfg.batch_size, cfg.compile, cfg.max_tokens) == (0.01, 64, True, 2e6)
    cfg = settings.parse_config(train.TrainConfig, ["--max_tokens", "1.5M", "--ckpt_tokens=250K,1e6"], "")
    assert cfg.max_tokens == 1_500_000 and train.parse_milestones(cfg.ckpt_tokens) == [250_000, 1_000_000]
    for bad in (["--max_tokens", "lots"], ["--max_tokens=-2M"]):
        with pytest.raises(SystemExit):
            settings.parse_config(train.TrainConfig, bad, "")
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"lr": 0.5, "batch_size": 4}))
    cfg = settings.parse_config(train.TrainConfig, ["--config", str(preset), "--batch_size", "2"], "")
    assert (cfg.lr, cfg.batch_size) == (0.5, 2)
    for name in os.listdir(os.path.join(ROOT, "configs")):
        if name.endswith(".json"):  # every training preset parses
            settings.parse_config(train.TrainConfig, ["--config", os.path.join(ROOT, "configs", name)], "")


def test_activation_checkpointing_changes_nothing_but_memory(tiny_data, tmp_path):
    """Recomputing each block in backward gives the same gradients: the same log, the same weights."""
    plain, ckpt = str(tmp_path / "plain"), str(tmp_path / "ckpt")
    train.main(tiny_args(tiny_data, plain, "--max_tokens", "2048"))
    train.main(tiny_args(tiny_data, ckpt, "--max_tokens", "2048", "--act_ckpt"))
    timing = ("tokens_per_s", "mfu", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(plain)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in read_log(ckpt)]
    a, b = (torch.load(os.path.join(d, "ckpt_latest.pt"), weights_only=True)["model"] for d in (plain, ckpt))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_are_optional_and_get_every_log_line(tiny_data, tmp_path, monkeypatch):
    """--tensorboard or --wandb without its package: one line, nothing written. With one (here a
    stand-in for wandb that records its calls), every log line's numbers arrive at their step."""
    out = str(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for flags, package in ((["--tensorboard"], "tensorboard"), (["--wandb", "spt"], "wandb")):
        with pytest.raises(train.TrainError, match=f"^{flags[0]} needs the {package} package: pip install {package}"):
            train.main(tiny_args(tiny_data, out, *flags))
        assert not os.path.exists(out)
    calls = []
    run = types.SimpleNamespace(log=lambda numbers, step: calls.append((step, numbers)))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw) or run))
    train.main(tiny_args(tiny_data, out, "--wandb", "spt", "--max_tokens", "4096"))
    log = read_log(out)
    assert calls[0]["project"] == "spt" and calls[0]["config"]["max_tokens"] == 4096
    assert [step for step, _ in calls[1:]] == [r["step"] for r in log] == [0, 8, 16]
    assert all(numbers["domain_test_loss"] == r["domain_test_loss"] for (_, numbers), r in zip(calls[1:], log))


def test_torchrun_two_ranks_match_one_process(tiny_data, tmp_path):
    """Same global batch: 1 process x 2 micro-steps vs 2 gloo ranks x 1 micro-step."""
    args = tiny_args(tiny_data, "OUT", "--grad_accum", "2", "--max_tokens", "4096")
    one, two = one_process_and_two_ranks(train.main, "train.py", args, tmp_path, port=29517)
    a, b = read_log(one), read_log(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "general_val_loss", "domain_train_loss", "domain_test_loss"):
            if ra[key] is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4), (ra["step"], key)
    assert json.load(open(os.path.join(two, "config.json")))["world_size"] == 2
