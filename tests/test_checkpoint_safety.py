"""A checkpoint is data, never code. A crafted checkpoint whose pickle runs a command (a .pt file, a folder
of shards whose info.pt is that pickle, one whose DCP index is) is refused by every script that reads
checkpoints, in one line, and the command never runs; so is a value DCP reads as pickled bytes. Contents
that are not what this code writes (a missing key, a model_config without a model's fields, a value of
another type, tensors of another shape) are one-line errors too. That the project's own checkpoints still
load and resume exactly is what test_train.py, test_finetune.py, test_reliability.py and test_parallel.py
check, unchanged, through the same loader."""
import dataclasses
import io
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

import evaluate
import finetune
import run_folder
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import export_hf  # noqa: E402


class RunsCommand:
    """What a crafted pickle holds: loading it with pickle's full unpickler runs `touch SENTINEL`."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def tiny_args(data_dir, out_dir, *extra):
    """16 steps of 8 x 32 tokens, an eval (and ckpt_latest.pt) every 8, a milestone at step 8."""
    return ["--data_dir", data_dir, "--out_dir", out_dir, "--model=cpu-tiny", "--seq_len", "32", "--batch_size", "8",
            "--max_tokens", "4096", "--eval_interval", "8", "--eval_windows", "8", "--warmup_steps", "4",
            "--lr", "3e-3", "--domain_frac", "0.25", "--ckpt_tokens", "2048", *extra]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """A run that writes single-file checkpoints and one that writes folders of shards (FSDP, one process)."""
    root = tmp_path_factory.mktemp("runs")
    single, sharded = str(root / "single"), str(root / "sharded")
    train.main(tiny_args(tiny_data, single))
    train.main(tiny_args(tiny_data, sharded, "--parallel", "fsdp"))
    return single, sharded


def crafted(runs, folder, sentinel) -> dict:
    """The three forms of a checkpoint that runs `touch sentinel` as it loads, each made from a real one:
    a .pt file, a folder whose info.pt is the crafted pickle, a folder whose DCP index (.metadata) is."""
    single, sharded = runs
    milestone, shards = os.path.join(single, "ckpt_2048.pt"), os.path.join(sharded, "ckpt_2048.pt")
    forms = {name: os.path.join(folder, name, "ckpt_2048.pt") for name in ("file", "info", "index")}
    os.makedirs(os.path.dirname(forms["file"]))
    torch.save({**torch.load(milestone, weights_only=True), "notes": RunsCommand(sentinel)}, forms["file"])
    shutil.copytree(shards, forms["info"])
    info = torch.load(os.path.join(shards, "info.pt"), weights_only=True)
    torch.save({**info, "notes": RunsCommand(sentinel)}, os.path.join(forms["info"], "info.pt"))
    shutil.copytree(shards, forms["index"])
    index = run_folder.CheckpointReader(shards).read_metadata()
    index.planner_data = RunsCommand(sentinel)
    with open(os.path.join(forms["index"], ".metadata"), "wb") as f:
        pickle.dump(index, f)
    return forms


def test_the_crafted_checkpoints_would_run_their_command(runs, tmp_path):
    """The forms are live: read the way the code read them before (torch.load with weights_only=False,
    DCP's pickle.load of the index), each runs the command."""
    sentinel = tmp_path / "ran"
    forms = crafted(runs, str(tmp_path / "crafted"), sentinel)
    for path in (forms["file"], os.path.join(forms["info"], "info.pt"), os.path.join(forms["index"], ".metadata")):
        with open(path, "rb") as f:
            torch.load(f, weights_only=False) if path.endswith(".pt") else pickle.load(f)
        assert sentinel.exists(), path
        sentinel.unlink()


@pytest.mark.parametrize("script", ["evaluate.py", "finetune.py", "train.py", "export_hf.py"])
def test_every_script_refuses_a_crafted_checkpoint_in_one_line_before_it_runs(runs, tiny_data, tmp_path, script):
    sentinel = tmp_path / "ran"
    forms = crafted(runs, str(tmp_path / "crafted"), sentinel)
    for form, checkpoint in forms.items():
        out = str(tmp_path / f"out_{form}")
        argv = {"evaluate.py": [os.path.join(ROOT, "evaluate.py"), checkpoint],
                "finetune.py": [os.path.join(ROOT, "finetune.py"), "--init", checkpoint, "--out_dir", out],
                "train.py": [os.path.join(ROOT, "train.py"), *tiny_args(tiny_data, out, "--init_from", checkpoint)],
                "export_hf.py": [os.path.join(ROOT, "scripts", "export_hf.py"), checkpoint, out, "--no_tokenizer"]}
        done = subprocess.run([sys.executable, *argv[script]], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert (done.returncode, done.stderr.count("\n")) == (1, 1), (form, done.stderr)
        assert done.stderr.startswith(f"{script}: checkpoint {checkpoint} is refused: loading it would call "
                                      f"posix.system, which is code, not data"), (form, done.stderr)
        assert not sentinel.exists(), form


def test_a_crafted_value_in_the_shards_is_refused_before_it_runs(tiny_data, tmp_path, monkeypatch):
    """DCP reads what is not a tensor (the optimizer's settings) as pickled bytes, with its own full
    unpickler: a sharded ckpt_latest.pt whose learning rate is the crafted pickle is refused as --resume
    reads it, and the command never runs (loaded fully, the same bytes run it)."""
    sentinel, out = tmp_path / "ran", str(tmp_path / "run")
    get_batch = train.data.Mixture.get_batch

    def interrupted_at_step_12(mixture, step, *args):
        if step == 12:
            raise KeyboardInterrupt
        return get_batch(mixture, step, *args)
    monkeypatch.setattr(train.data.Mixture, "get_batch", interrupted_at_step_12)
    try:
        with pytest.raises(KeyboardInterrupt):  # ckpt_latest.pt is the step-8 one
            train.main(tiny_args(tiny_data, out, "--parallel", "fsdp"))
    finally:
        dist.destroy_process_group()  # left by the interrupted run (a real one exits)
    monkeypatch.undo()
    latest = os.path.join(out, "ckpt_latest.pt")
    index = run_folder.CheckpointReader(latest).read_metadata()
    name = next(n for n, entry in index.state_dict_metadata.items()
                if isinstance(entry, BytesStorageMetadata) and n.startswith("optimizer.param_groups") and n.endswith(".lr"))
    key = next(k for k in index.storage_data if k.fqn == name)
    payload = io.BytesIO()
    torch.save(RunsCommand(sentinel), payload)
    shard = os.path.join(latest, index.storage_data[key].relative_path)
    index.storage_data[key] = dataclasses.replace(index.storage_data[key], offset=os.path.getsize(shard),
                                                  length=len(payload.getvalue()))
    with open(shard, "ab") as f:
        f.write(payload.getvalue())
    with open(os.path.join(latest, ".metadata"), "wb") as f:
        pickle.dump(index, f)
    try:
        with pytest.raises(train.TrainError, match="is refused: loading it would call posix.system") as refusal:
            train.main(tiny_args(tiny_data, out, "--parallel", "fsdp", "--resume"))
    finally:
        dist.destroy_process_group()
    assert "\n" not in str(refusal.value) and not sentinel.exists()
    torch.load(io.BytesIO(payload.getvalue()), weights_only=False)
    assert sentinel.exists()


def damaged(checkpoint: dict, path: str, **changes) -> str:
    """A copy of a checkpoint with some keys changed (None: removed), saved at path."""
    copy = {k: v for k, v in {**checkpoint, **changes}.items() if v is not None}
    torch.save(copy, path)
    return path


def test_contents_that_this_code_does_not_write_are_one_line_errors(runs, tiny_data, tmp_path):
    """Each given to the script that reads that part: a model_config without a model's fields (the
    empty one ended in KeyError: 'vocab_size' under train.py --init_from), values of another type, a
    shape no model has, tensors of another shape, a run config without its settings."""
    milestone = torch.load(os.path.join(runs[0], "ckpt_2048.pt"), weights_only=True)
    model_config, weights = milestone["model_config"], milestone["model"]
    cases = [
        (dict(model_config={}), "model_config lacks d_ff, d_model, n_head, n_layer, norm, rope_theta, "
                                "seq_len, tie_embeddings, vocab_size"),
        (dict(model_config={**model_config, "n_layer": "2"}), "model_config has n_layer of type str, not int"),
        (dict(model_config={**model_config, "depth": 2}), "model_config has unknown keys depth"),
        (dict(model_config={**model_config, "d_model": 0}), "model_config has d_model=0, not a size > 0"),
        (dict(model_config=[1, 2]), "holds model_config of type list, not dict"),
        (dict(step="8"), "holds step of type str, not int"),
        (dict(model={**weights, "wte.weight": weights["wte.weight"].t()}),
         r"holds wte.weight of shape \[64, 320\], not the \[320, 64\] of its model_config"),
        (dict(model={k: v for k, v in weights.items() if k != "norm_f.weight" and "mlp.proj" not in k}),
         "lacks the tensor blocks.0.mlp.proj.weight"),
        (dict(model={**weights, "extra.weight": torch.zeros(2)}), "holds extra.weight, which a model of its"),
        (dict(model={**weights, "wte.weight": [0.0]}), "lacks the tensor wte.weight"),
    ]
    for n, (changes, message) in enumerate(cases):
        path = damaged(milestone, str(tmp_path / f"case{n}.pt"), **changes)
        for main, argv in ((train.main, tiny_args(tiny_data, str(tmp_path / f"run{n}"), "--init_from", path)),
                           (evaluate.main, [path]), (finetune.main, ["--init", path, "--out_dir", str(tmp_path / "ft")]),
                           (export_hf.main, [path, str(tmp_path / "hf"), "--no_tokenizer"])):
            with pytest.raises(train.TrainError, match=message) as error:
                main(argv)
            assert "\n" not in str(error.value)
    with pytest.raises(train.TrainError, match="model_config: d_model 64 must split into 3 heads"):
        evaluate.main([damaged(milestone, str(tmp_path / "heads.pt"), model_config={**model_config, "n_head": 3})])
    config = {k: v for k, v in milestone["config"].items() if k != "lr"}
    path = damaged(milestone, str(tmp_path / "config.pt"), config=config)
    for main, argv in ((evaluate.main, [path]), (finetune.main, ["--init", path, "--out_dir", str(tmp_path / "ft")])):
        with pytest.raises(train.TrainError, match="config.pt's config lacks lr: it was not written by this code"):
            main(argv)
    latest = torch.load(os.path.join(runs[0], "ckpt_latest.pt"), weights_only=True)
    out = shutil.copytree(runs[0], str(tmp_path / "resume"))
    for changes, message in ((dict(rng=None), "holds a data position but lacks rng, which --resume needs"),
                             (dict(config=config), "ckpt_latest.pt's config lacks lr"),
                             (dict(optimizer={"state": {}, "param_groups": []}, step=8),  # (a run to go on with)
                              "holds an optimizer state, weight average or random state that does not fit this run")):
        damaged(latest, os.path.join(out, "ckpt_latest.pt"), **changes)
        with pytest.raises(train.TrainError, match=message) as error:
            train.main(tiny_args(tiny_data, out, "--resume"))
        assert "\n" not in str(error.value)


def test_a_folder_whose_index_holds_other_shapes_is_one_line(runs, tmp_path):
    folder = shutil.copytree(os.path.join(runs[1], "ckpt_2048.pt"), str(tmp_path / "ckpt_2048.pt"))
    index = run_folder.CheckpointReader(folder).read_metadata()
    entry = index.state_dict_metadata["model.wte.weight"]
    entry.size = torch.Size([64, 320])
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(index, f)
    with pytest.raises(train.TrainError, match=r"holds wte.weight of shape \[64, 320\], not the \[320, 64\]"):
        run_folder.load_model(folder)
    index.state_dict_metadata["model.wte.weight"] = BytesStorageMetadata()  # a tensor DCP would read as a pickle
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(index, f)
    with pytest.raises(train.TrainError, match="lacks the tensor wte.weight"):
        run_folder.load_model(folder)
