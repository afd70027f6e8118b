"""Finetuning: untying keeps the function, early stopping finds the minimum, the grid resumes,
replay is realised, and bad input fails in one line without writing anything."""
import copy
import json
import math
import os

import pytest
import torch

import data
import finetune
import run_folder
import settings
import train
from conftest import one_process_and_two_ranks


@pytest.fixture(scope="module")
def ckpt(tiny_data, tmp_path_factory):
    """A tiny pretraining checkpoint (delta 0.25, 8192 tokens) on the shared byte-level dataset."""
    out = str(tmp_path_factory.mktemp("pre") / "run")
    train.main(["--data_dir", tiny_data, "--out_dir", out, "--model=cpu-tiny", "--seq_len", "32",
                "--batch_size", "8", "--max_tokens", "8192", "--eval_interval", "16", "--eval_windows", "8",
                "--warmup_steps", "4", "--lr", "3e-3", "--domain_frac", "0.25", "--ckpt_tokens", "8192"])
    return os.path.join(out, "ckpt_8192.pt")


def ft_args(ckpt, out_dir, *extra):
    """0.3 epochs (14 steps of 8 x 32 tokens), an eval every 4 steps."""
    return ["--init", ckpt, "--out_dir", out_dir, "--batch_size", "8", "--lr", "3e-3", "--warmup", "2",
            "--max_epochs", "0.3", "--extend_epochs", "0.3", "--eval_interval", "4", "--patience", "3", *extra]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_untying_keeps_the_function(ckpt, tiny_data):
    tied, _ = run_folder.load_model(ckpt)
    untied = copy.deepcopy(tied).untie()  # what finetune.run_config does first
    assert tied.lm_head is None and untied.lm_head is not None
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()  # two matrices now
    x = torch.randint(0, 257, (2, 32))
    assert torch.equal(tied(x)[0], untied(x)[0])
    # ... and both are trained: the optimizer sees the new output layer
    opt = train.configure_optimizer(untied, 1e-3, (0.9, 0.95), 1e-5, 1e-7)
    assert any(p is untied.lm_head.weight for g in opt.param_groups for p in g["params"])


def test_run_records_the_protocol(ckpt, tiny_data, tmp_path):
    out = str(tmp_path / "ft")
    result = finetune.main(ft_args(ckpt, out, "--lr", "1e-3,3e-3", "--save_best"))
    assert result == read_json(os.path.join(out, "finetune.json"))
    assert result["pretrain_tokens"] == 8192 and result["domain_frac"] == 0.25 and result["replay"] == 0.0
    assert result["dataset_id"] == data.load_meta(tiny_data)["dataset_id"]
    # step 0 is the checkpoint itself, untied: the same losses as the tied model
    tied, _ = run_folder.load_model(ckpt)
    test_loss = train.mean_loss(tied, data.open_split(tiny_data, "domain_test"), 32, 8, 32, "cpu")
    assert result["pretrained"]["domain_test_loss"] == pytest.approx(test_loss, rel=1e-6)
    assert [(c["lr"], c["warmup"]) for c in result["configs"]] == [(3e-3, 2), (1e-3, 2)]
    for c in result["configs"]:
        assert c["finished"] and c["curve"][0]["step"] == 0
        assert c["best"] == min(c["curve"], key=lambda p: p["domain_test_loss"])
        assert c["best"]["domain_test_loss"] < result["pretrained"]["domain_test_loss"]  # it learned
    best = min((c for c in result["configs"]), key=lambda c: c["best"]["domain_test_loss"])
    assert result["best"] == {"lr": best["lr"], "warmup": best["warmup"], **best["best"],
                              "converged": best["stopped"] != "unconverged"}
    log = read_log(out)
    assert {"step", "tokens", "domain_epochs", "train_loss", "domain_test_loss", "ft_lr", "ft_warmup"} <= set(log[-1])
    assert len(log) == sum(len(c["curve"]) for c in result["configs"])
    # the kept checkpoint is the best point over the grid, and evaluates to the same loss
    model, kept = run_folder.load_model(os.path.join(out, "ckpt_best.pt"))
    assert kept["finetune"]["step"] == result["best"]["step"] and kept["finetune"]["lr"] == result["best"]["lr"]
    assert train.mean_loss(model, data.open_split(tiny_data, "domain_test"), 32, 8, 32, "cpu") == pytest.approx(
        result["best"]["domain_test_loss"], rel=1e-5)


def test_grid_values_absolute_relative_and_from_python():
    cfg = finetune.FinetuneConfig(lr="0.1x,0.3x,1x", warmup="10,20,40")  # relative to the pretraining LR
    assert finetune.parse_grid(cfg, 3e-3, 50) == [(lr, w) for lr in (3e-3, 9e-4, 3e-4) for w in (10, 20, 40)]
    cfg = finetune.FinetuneConfig(lr="1e-5, 4e-5,1e-4", warmup="50,100,200")  # the paper's grid, as is
    assert len(finetune.parse_grid(cfg, 4e-4, 300)) == 9 and finetune.parse_grid(cfg, 4e-4, 300)[0] == (1e-4, 50)
    cfg = finetune.FinetuneConfig(lr=[1e-3, "2x"], warmup=5)
    assert finetune.parse_grid(cfg, 1e-3, 50) == [(2e-3, 5), (1e-3, 5)]
    # the paper's warmups as fractions of an epoch: 1/6, 1/3 and 2/3 of 300 steps are its 50, 100, 200
    cfg = finetune.FinetuneConfig(lr="1e-4", warmup="0.1667e,0.3333e,0.6667e")
    assert [w for _, w in finetune.parse_grid(cfg, 4e-4, 300)] == [50, 100, 200]
    with pytest.raises(train.TrainError, match="--warmup"):
        finetune.parse_grid(finetune.FinetuneConfig(warmup="2.5"), 1e-3, 50)  # steps are whole


def test_early_stopping_stops_at_the_true_minimum():
    def stop_index(stopper, curve):
        return next(i for i, v in enumerate(curve) if stopper.update(v))

    stopper = finetune.EarlyStopping(patience=3)
    assert stop_index(stopper, [5.0, 4.0, 3.0, 2.5, 2.7, 2.6, 2.8, 2.9, 3.0, 2.0]) == 6  # 3 evals after ...
    assert stopper.best_index == 3 and stopper.best == 2.5  # ... the minimum, which it reports
    # a dip after a plateau: patience decides whether the lower minimum is found
    curve = [3.0, 2.0, 2.1, 2.2, 1.5, 1.6, 1.7, 1.8]
    short, long = finetune.EarlyStopping(2), finetune.EarlyStopping(3)
    assert stop_index(short, curve) == 3 and short.best == 2.0
    assert stop_index(long, curve) == 7 and long.best == 1.5


def test_run_stops_at_the_minimum_of_a_constructed_curve(ckpt, tmp_path, monkeypatch):
    """The real loop, with an evaluator that replays a known curve: the run must stop `patience`
    evals after its minimum and report that point."""
    losses = iter([3.0, 2.5, 2.2, 2.0, 2.1, 2.05, 2.3, 9.0, 9.0, 9.0])

    def fake_evaluator(*args):
        return lambda: {"general_val_loss": 1.0, "domain_train_loss": 1.0, "domain_test_loss": next(losses)}
    monkeypatch.setattr(train, "make_evaluator", fake_evaluator)
    result = finetune.main(ft_args(ckpt, str(tmp_path / "ft"), "--eval_interval", "2", "--patience", "3"))
    config = result["configs"][0]
    assert [p["step"] for p in config["curve"]] == [0, 2, 4, 6, 8, 10, 12]
    assert config["best"]["step"] == 6 and config["best"]["domain_test_loss"] == 2.0
    assert config["stopped"] == "early" and result["best"]["step"] == 6


def test_the_best_configuration_goes_on_past_the_cap_until_it_stops_improving(ckpt, tmp_path, monkeypatch):
    """Curves replayed per configuration (an eval every 2 steps, --extend_epochs twice the cap): the first
    still improves at the cap, goes on and stops 3 evals after its minimum; the second is worse at its cap,
    so it ends there; the third beats the first and still improves where the extension ends: its point is
    reported unconverged."""
    curves = iter([[3.0 - 0.1 * i for i in range(11)] + [2.1, 2.2, 2.3], [4.0 - 0.05 * i for i in range(20)], [2.5 - 0.07 * i for i in range(30)]])

    def fake_evaluator(*args):
        losses = iter(next(curves))
        return lambda: {"general_val_loss": 1.0, "domain_train_loss": 1.0, "domain_test_loss": next(losses)}
    monkeypatch.setattr(train, "make_evaluator", fake_evaluator)
    result = finetune.main(ft_args(ckpt, str(tmp_path / "ft"), "--lr", "3e-3,2e-3,1e-3", "--eval_interval", "2",
                                   "--extend_epochs", "0.6"))
    cap = result["settings"]["total_steps"]
    first, second, third = result["configs"]
    assert first["stopped"] == "early" and first["best"] == first["curve"][10] and len(first["curve"]) == 14
    assert first["best"]["step"] > cap
    assert second["stopped"] == "epoch_cap" and second["curve"][-1]["step"] == cap
    assert third["stopped"] == "unconverged" and third["curve"][-1] == third["best"]
    assert third["best"]["step"] == 2 * cap
    assert result["best"]["lr"] == 1e-3 and result["best"]["converged"] is False


def test_grid_resumes_and_skips_finished_configs(ckpt, tmp_path, monkeypatch):
    out = str(tmp_path / "ft")
    args = ft_args(ckpt, out, "--lr", "1e-3,3e-3")
    first = finetune.main(args)
    # an interruption during the second configuration: finished=False, and its log lines stay behind
    path = os.path.join(out, "finetune.json")
    state = read_json(path)
    state["configs"][1]["finished"] = False
    settings.atomic_write(path, lambda f: json.dump({k: v for k, v in state.items() if k != "format"}, f), mode="w")
    with pytest.raises(train.TrainError, match="finetune.json is of format none, and this code writes format 1: "
                                               "move it away") as info:  # a file of no known format is not guessed at
        finetune.main(args)
    assert "\n" not in str(info.value)
    settings.atomic_write(path, lambda f: json.dump(state, f), mode="w")
    runs = []
    real = finetune.run_config
    monkeypatch.setattr(finetune, "run_config", lambda **kw: runs.append((kw["lr"], kw["warmup"])) or real(**kw))
    second = finetune.main(args)
    assert runs == [(1e-3, 2)]
    assert second["configs"] == first["configs"] and second["best"] == first["best"]  # deterministic on CPU
    assert len(read_log(out)) == sum(len(c["curve"]) for c in first["configs"])  # no duplicated lines
    finetune.main(args)
    assert runs == [(1e-3, 2)]  # all finished: nothing runs
    finetune.main(ft_args(ckpt, out, "--lr", "1e-3,3e-3,1e-2"))  # a wider grid runs only the new value
    assert runs == [(1e-3, 2), (1e-2, 2)]
    with pytest.raises(train.TrainError, match="other settings.*patience"):
        finetune.main(args + ["--patience", "5"])
    with pytest.raises(train.TrainError, match=r"other settings \(save_best\)"):  # no best checkpoint was kept
        finetune.main(args + ["--save_best"])


def test_results_of_another_checkpoint_are_never_reused(ckpt, tmp_path):
    """Same dataset, tokens and step, but another pretraining run: its finetuning is not this one's."""
    other = str(tmp_path / "other")
    pre = run_folder.load_checkpoint(ckpt)["config"]
    train.main(["--data_dir", pre["data_dir"], "--out_dir", other, "--model=cpu-tiny", "--seq_len", "32",
                "--batch_size", "8", "--max_tokens", "8192", "--eval_interval", "16", "--eval_windows", "8",
                "--warmup_steps", "4", "--lr", "3e-3", "--domain_frac", "0", "--ckpt_tokens", "8192"])
    out = str(tmp_path / "ft")
    finetune.main(ft_args(ckpt, out))
    with pytest.raises(train.TrainError, match="other settings.*pretrain_config"):
        finetune.main(ft_args(os.path.join(other, "ckpt_8192.pt"), out))


def test_a_diverging_configuration_is_recorded_and_the_grid_goes_on(ckpt, tmp_path):
    result = finetune.main(ft_args(ckpt, str(tmp_path / "ft"), "--lr", "1e30,3e-3", "--warmup", "0",
                                   "--grad_clip", "0"))
    diverged, fine = result["configs"]
    assert diverged["lr"] == 1e30 and diverged["finished"] and diverged["stopped"] == "diverged"
    assert fine["lr"] == 3e-3 and fine["finished"] and fine["stopped"] in ("early", "unconverged")
    assert result["best"]["lr"] == 3e-3


def test_replay_fraction_is_realised(ckpt, tiny_data, monkeypatch):
    seen = []
    real = data.Mixture.get_batch

    def spy(self, step, part=0, n_parts=1):
        size = self.batch_size // n_parts
        seen.append([kind == "domain" for kind, _ in self.batch_windows(step)[part * size:(part + 1) * size]])
        return real(self, step, part, n_parts)
    monkeypatch.setattr(data.Mixture, "get_batch", spy)
    result = finetune.main(["--init", ckpt, "--replay", "0.25", "--batch_size", "8", "--lr", "3e-3", "--warmup", "2",
                            "--max_epochs", "0.3", "--extend_epochs", "0.3", "--eval_interval", "4",
                            "--patience", "100"])
    out = os.path.join(os.path.dirname(ckpt), "ft_ckpt_8192_replay0.25")  # the default out_dir
    assert read_json(os.path.join(out, "finetune.json")) == result and result["replay"] == 0.25
    log = read_log(out)
    windows = (data.load_meta(tiny_data)["splits"]["domain_train"]["tokens"] - 1) // 32
    assert len(seen) == log[-1]["step"] == math.ceil(0.3 * windows / 6)  # 0.3 epochs at 6 per step
    assert all(sum(batch) == 6 for batch in seen)  # 8 sequences, 2 of them general, at every step
    assert log[-1]["domain_frac"] == 0.75
    assert log[-1]["domain_epochs"] == pytest.approx(6 * log[-1]["step"] / windows)  # epochs count domain only


def test_bad_inputs_fail_in_one_line_and_write_nothing(ckpt, tiny_data, tmp_path):
    corpus = os.path.dirname(tiny_data)
    gpt2 = str(tmp_path / "gpt2")
    data.prepare(gpt2, f"local:{corpus}/general", f"local:{corpus}/domain", tokenizer="gpt2", val_frac=0.1,
                 test_frac=0.1)
    general_only = str(tmp_path / "general_only")
    data.prepare(general_only, f"local:{corpus}/general", None, tokenizer="byte", val_frac=0.1)
    out = str(tmp_path / "ft")
    cases = [(["--data_dir", gpt2], data.DataError, "257-token vocabulary.*gpt2"),
             (["--data_dir", general_only], data.DataError, "no domain_train split"),
             (["--lr", ""], train.TrainError, "grid is empty"),
             (["--warmup", " , "], train.TrainError, "grid is empty"),
             (["--lr", "fast"], train.TrainError, "comma-separated"),
             (["--replay", "1"], train.TrainError, "replay"),
             (["--batch_size", "6", "--grad_accum", "4"], train.TrainError, "batch_size 6")]
    for extra, error, message in cases:
        with pytest.raises(error, match=message) as info:
            finetune.main(ft_args(ckpt, out, *extra))
        assert "\n" not in str(info.value)
        assert not os.path.exists(out)
    with pytest.raises(train.TrainError, match="--init"):
        finetune.main(["--out_dir", out])


def test_torchrun_two_ranks_match_one_process(ckpt, tmp_path):
    """The same global batch: 1 process x 2 micro-steps vs 2 gloo ranks x 1 micro-step."""
    args = ft_args(ckpt, "OUT", "--grad_accum", "2", "--max_epochs", "0.2", "--lr", "1e-3,3e-3")
    one, two = one_process_and_two_ranks(finetune.main, "finetune.py", args, tmp_path, port=29527)
    a, b = read_json(os.path.join(one, "finetune.json")), read_json(os.path.join(two, "finetune.json"))
    assert len(b["configs"]) == 2 and all(c["finished"] for c in b["configs"])
    for ca, cb in zip(a["configs"], b["configs"]):
        assert [p["step"] for p in ca["curve"]] == [p["step"] for p in cb["curve"]]
        for pa, pb in zip(ca["curve"], cb["curve"]):
            for key in finetune.LOSS_KEYS:
                assert pb[key] == pytest.approx(pa[key], rel=1e-4), (ca["lr"], pa["step"], key)
    assert len(read_log(two)) == len(read_log(one))  # rank 0 alone writes
