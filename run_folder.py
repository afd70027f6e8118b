"""Run folders: what a run leaves on disk, how every script reads it back, and what a rerun does with it.

A run folder (train.py's --out_dir) holds config.json (the settings and the model, written at the
start), log.jsonl (one line per eval, appended whole), the checkpoints, and with --tensorboard its
event files; finetune.py's folder holds finetune.json, log.jsonl and ckpt_best.pt. This file is the
one place that writes and reads them, in three parts:

1. Checkpoints: one file or a folder of shards, and the one loader every script uses (load_model).
   A checkpoint is ckpt_<name>.pt either way. With --parallel ddp it is one torch.save file written
   by rank 0. With --parallel fsdp it is a folder: every rank writes its shards of the weights (and
   optimizer state) through torch.distributed.checkpoint (DCP), which reads them back on any number
   of processes, and rank 0 adds info.pt with the rest. ckpt_latest.pt holds everything --resume
   needs; a milestone ckpt_<tokens>.pt holds the weights and what the run was (CHECKPOINT_KEYS),
   which is all that finetuning, evaluation and export read. Both kinds are written under a temporary
   name and renamed once complete, so a kill or a full disk never leaves half a checkpoint under the
   real name; a folder cannot be renamed over another one, so the old folder steps aside first
   (NAME.old<step>) and is put back by the next start if a kill came between the two renames.
   FORMAT is the version of the checkpoints and finetune.json that this code writes: it reads no
   other, and says so in one line rather than guessing at what an older file meant.
   A checkpoint is data, never code. Checkpoints travel (a colleague's run folder, a study copied
   from another cluster), and a pickle can call any function as it loads. So every .pt file is read
   by torch.load's weights_only reader (tensors and plain values), a folder's index (DCP's .metadata,
   a plain pickle) by IndexUnpickler, which builds only what the index is made of, and the values DCP
   reads as pickled bytes (an optimizer's settings) by torch.load's reader again (CheckpointPlanner).
   A file that asks for anything else is refused in one line, before it runs; so is one whose
   contents are not what this code writes (a missing key, a value of another type, a model_config
   without a model's fields, tensors of another shape).
2. The log, and what a kill or a full disk leaves: a cut-off last line, temporary files, a folder set
   aside. A rerun repairs what is safe to repair and refuses the rest in one line that says what to do.
   One process writes a run folder at a time (settings.lock_folder): a second one is refused before it
   reads or repairs anything there.
3. Metrics beside log.jsonl, where people look (TensorBoard, Weights & Biases): optional packages,
   imported only when asked for.
"""
import contextlib
import dataclasses
import errno
import glob
import json
import os
import pickle
import re
import shutil
import sys
import zipfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import data
import settings
from model import GPT, GPTConfig
from processes import Runtime
from settings import TrainError

FORMAT = 1  # of checkpoints and finetune.json: raise it when their contents change meaning
# What a checkpoint holds, by name and type. Every checkpoint holds CHECKPOINT_KEYS (a milestone: the
# weights and what the run was); ckpt_latest.pt also what --resume needs (RESUME_KEYS, the optimizer
# state and, with --ema, the weight average), finetune.py's ckpt_best.pt where it came from ("finetune").
# In a folder the tensors ("model", "optimizer", "ema") are in the shards and the rest is in info.pt.
KEY_TYPES = {"format": int, "model": dict, "model_config": dict, "config": dict, "step": int, "tokens": int,
             "general_position": int, "dataset_id": str, "mixture_step0": int, "tokens_offset": int,
             "mixture": dict, "rng": torch.Tensor, "optimizer": dict, "ema": dict, "ema_steps": int,
             "finetune": dict}
CHECKPOINT_KEYS = {"model", "model_config", "config", "step", "tokens", "general_position", "dataset_id"}
RESUME_KEYS = {"mixture", "mixture_step0", "tokens_offset", "rng"}
# What DCP's index (.metadata) is made of, as pickle names it: its dataclasses, the path it was saved
# to, and torch's shapes, layouts and memory formats (dtypes are allowed by value: IndexUnpickler).
INDEX_CLASSES = {("torch.distributed.checkpoint.metadata", name) for name in (
    "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
    "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}


# ---------------------------------------------------------------------------------------------
# 1. Checkpoints

def save_checkpoint(path: str, state: dict):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    def write(f):
        try:
            torch.save({**state, "format": FORMAT}, f)
        except RuntimeError as e:  # torch.save reports a failed write (a full disk) as "unexpected pos"...
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None  # ... with the OSError that says what happened behind it
            raise
    settings.atomic_write(path, write)


def save_sharded(path: str, tensors: dict, info: dict, rt: Runtime):
    """Every rank writes its shards of `tensors` ({"model": ..., "optimizer": ...} state dicts) through
    DCP; rank 0 writes `info` (the rest of the checkpoint) and renames the folder into place."""
    tmp, old = f"{path}.tmp{info['step']}", f"{path}.old{info['step']}"
    try:
        dcp.save(tensors, checkpoint_id=tmp)
        if rt.master:
            save_checkpoint(os.path.join(tmp, "info.pt"), info)
    except BaseException as e:
        if rt.master:
            shutil.rmtree(tmp, ignore_errors=True)
        # DCP gathers every rank's failure into one exception: raise the disk's own error (writes_in)
        errors = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
        raise next((error for error in errors if isinstance(error, OSError)), e) from None
    if rt.master:
        set_aside = os.path.exists(path)
        if set_aside:
            os.rename(path, old)
        os.rename(tmp, path)
        if set_aside:
            shutil.rmtree(old)
    dist.barrier()  # no rank goes on (and might read it) before the folder is in place


def optimizer_state(model, optimizer, sharded: bool) -> dict:
    """What a resumable checkpoint keeps of the optimizer: its state dict, or of a sharded model the
    shards DCP writes; none before the first step (an AdamW state of zeros would count a step that never
    happened), so that load_training_state finds none."""
    if not sharded:
        return {"optimizer": optimizer.state_dict()}
    return {"optimizer": get_optimizer_state_dict(model, optimizer)} if optimizer.state else {}


# Reading checkpoints as data (see the docstring): a .pt file through torch.load's weights_only reader,
# a folder's index through IndexUnpickler, its shards through DCP with CheckpointReader and CheckpointPlanner.

def refused(path: str, name: str) -> TrainError:
    """The one line for a checkpoint whose pickle asks for `name` (a function it would call as it loads)."""
    return TrainError(f"checkpoint {path} is refused: loading it would call {name}, which is code, not data (a "
                      f"checkpoint holds tensors and plain values only); use one written by this code, and share "
                      f"models as Hugging Face exports (scripts/export_hf.py)")


def load_as_data(f, path: str):
    """torch.load's weights_only reader, which builds tensors and plain values (numbers, strings, lists,
    dicts) and nothing else, of a checkpoint's file or of bytes DCP read from one (`path` names it)."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        name = re.search(r"GLOBAL (\S+)", str(e))  # what the pickle asked for, as torch's refusal names it
        if name:
            raise refused(path, name[1]) from None
        raise TrainError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is corrupt or not a "
                         f"checkpoint") from None


class IndexUnpickler(pickle.Unpickler):
    """Reads a checkpoint folder's index (DCP's .metadata, a plain pickle) as data: it makes the classes
    of INDEX_CLASSES and torch's dtypes, and refuses any other name before importing it."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in INDEX_CLASSES or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        raise refused(self.path, f"{module}.{name}")


class CheckpointReader(dcp.FileSystemReader):
    """DCP's reader of a checkpoint folder, but for its index: DCP's own reads it with pickle.load."""

    def read_metadata(self, *args, **kwargs):
        with open(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            index = IndexUnpickler(f, str(self.path)).load()
        index.storage_meta = index.storage_meta or StorageMeta()  # as DCP's own read_metadata leaves it
        index.storage_meta.load_id = self.load_id
        return index


class CheckpointPlanner(DefaultLoadPlanner):
    """DCP's load planner, but what it reads as pickled bytes (an optimizer's settings: numbers and
    tuples) goes through torch.load's weights_only reader first: DCP's own loads it with the full one."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def load_bytes(self, read_item, value):
        load_as_data(value, self.path)  # refuses code before DCP's own load sees the bytes
        value.seek(0)
        super().load_bytes(read_item, value)


def read_shards(state: dict, path: str):
    """Read a checkpoint folder's tensors into `state`'s ({"model": model.state_dict(), ...}), in place;
    collectively if this is one of several processes, which DCP reshards to."""
    try:
        dcp.load(state, storage_reader=CheckpointReader(path), planner=CheckpointPlanner(path),
                 no_dist=not dist.is_initialized())
    except (Exception, dcp.CheckpointException) as e:  # every rank's failure in one: a refusal goes on as it is
        errors = [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()] or [e]
        raise next((error for error in errors if isinstance(error, TrainError)), None) or TrainError(
            f"checkpoint {path} cannot be read into this model ({type(errors[0]).__name__}): it is damaged; use "
            f"another checkpoint") from None


def shard_contents(path: str) -> dict[str, tuple | None]:
    """The shape of every tensor a checkpoint folder holds ({"model.wte.weight": (320, 64), ...}; None for
    what DCP pickled, an optimizer's settings), once every file its index names is there in full: a shard
    that is missing or cut short fails here, in one line, not inside DCP."""
    try:
        index = CheckpointReader(path).read_metadata()
        shards = [(os.path.join(path, where.relative_path), where.offset + where.length)
                  for where in index.storage_data.values()]
        shapes = {name: tuple(entry.size) if isinstance(entry, TensorStorageMetadata) else None
                  for name, entry in index.state_dict_metadata.items()}
    except TrainError:  # IndexUnpickler's refusal
        raise
    except Exception:
        raise TrainError(f"{path} is not a complete checkpoint folder (its .metadata is missing or damaged): "
                         f"copy the whole folder again, or use another checkpoint")
    for shard, end in shards:
        if not os.path.isfile(shard) or os.path.getsize(shard) < end:
            raise TrainError(f"{shard} is missing or cut short: checkpoint {path} is damaged; copy the whole "
                             f"folder again (every rank's shard), or use another checkpoint")
    return shapes


def load_checkpoint(path: str) -> dict:
    """A checkpoint's dict, read as data and checked against what this code writes (KEY_TYPES and a
    model_config a GPT can be made of). Of a folder: what info.pt holds, the tensors staying on disk
    until load_weights or load_training_state reads them into a model (any number of processes)."""
    if not os.path.exists(path):
        raise TrainError(f"checkpoint {path} does not exist")
    sharded = os.path.isdir(path)
    file = os.path.join(path, "info.pt") if sharded else path
    if sharded and not os.path.exists(file):
        raise TrainError(f"{path} is a folder but not a checkpoint (it has no info.pt): give a ckpt_<tokens>.pt")
    if not zipfile.is_zipfile(file):  # torch.save's format; an older one or a bare pickle is not read at all
        raise TrainError(f"checkpoint {path} cannot be read (not a file torch.save writes): it is corrupt or not "
                         f"a checkpoint")
    ckpt = load_as_data(file, path)
    keys = set(ckpt) if isinstance(ckpt, dict) else set()
    if sharded and any(k.startswith("model.") for k in shard_contents(path)):
        keys.add("model")
    missing = CHECKPOINT_KEYS - keys
    if missing:
        raise TrainError(f"{path} is not a checkpoint of train.py or finetune.py (it lacks {', '.join(sorted(missing))})")
    if ckpt.get("format") != FORMAT:
        raise TrainError(f"{path} is a checkpoint of format {ckpt.get('format', 'none')}, and this code reads format "
                         f"{FORMAT}: use the version of the code that wrote it, or train it again")
    damaged = ": it is damaged or not a checkpoint of this code"
    for key, value in ckpt.items():
        if key in KEY_TYPES and (isinstance(value, bool) or not isinstance(value, KEY_TYPES[key])):
            raise TrainError(f"{path} holds {key} of type {type(value).__name__}, not {KEY_TYPES[key].__name__}{damaged}")
    if "mixture" in ckpt:  # ckpt_latest.pt: what --resume reads besides the tensors
        lacks = sorted(RESUME_KEYS - keys) + ([] if isinstance(ckpt["mixture"].get("general_start"), int)
                                              else ["mixture.general_start"])
        if lacks:
            raise TrainError(f"{path} holds a data position but lacks {', '.join(lacks)}, which --resume needs{damaged}")
    model_config = settings.config_from_dict(GPTConfig, ckpt["model_config"], f"{path}'s model_config")
    for name, value in dataclasses.asdict(model_config).items():
        if type(value) in (int, float) and not value > 0:
            raise TrainError(f"{path}'s model_config has {name}={value}, not a size > 0{damaged}")
    return ckpt


def check_vocabulary(ckpt: dict, meta: dict, ckpt_path: str, data_dir: str):
    """Where a checkpoint meets a dataset (--resume, --init_from, finetune.py, evaluate.py): the same
    token ids mean different things under another tokenizer, so refuse, in one line."""
    vocab = ckpt["model_config"]["vocab_size"]
    if vocab != meta["vocab_size"]:
        raise data.DataError(f"{ckpt_path} has a {vocab}-token vocabulary but {data_dir} holds {meta['tokenizer']} "
                             f"tokens ({meta['vocab_size']}): use the dataset the model was trained on")


def check_shape(model, ckpt: dict, path: str):
    """A one-line error if the checkpoint holds another shape than `model`; unties `model` if it is untied."""
    expected, found = model.config_dict(), ckpt["model_config"]
    diff = {k: (found.get(k), v) for k, v in expected.items() if k != "tie_embeddings" and found.get(k) != v}
    if diff:  # (a vocabulary of another tokenizer is refused before: check_vocabulary)
        raise TrainError(f"{path} holds a model with " + ", ".join(f"{k}={a} (not {b})" for k, (a, b) in diff.items())
                         + ": use the same --model/overrides as the run that wrote it")
    if not found["tie_embeddings"]:
        model.untie()


def check_tensors(model, found: dict, path: str):
    """The checkpoint's weights (name -> shape; None: not a tensor) against `model`'s, in one line that
    names the first that differs rather than PyTorch's list of every mismatch."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    name = next((n for n in sorted(expected.keys() | found.keys(), key=str) if expected.get(n) != found.get(n)), None)
    if name is None:
        return
    if name not in expected:
        problem = f"holds {name}, which a model of its model_config does not have"
    elif found.get(name) is None:
        problem = f"lacks the tensor {name}"
    else:
        problem = f"holds {name} of shape {list(found[name])}, not the {list(expected[name])} of its model_config"
    raise TrainError(f"{path} {problem}: it is damaged or not a checkpoint of this code")


def load_weights(model, ckpt: dict, path: str):
    """Load a checkpoint's weights into `model` (a GPT, not yet sharded), after check_shape and check_tensors."""
    check_shape(model, ckpt, path)
    if os.path.isdir(path):
        check_tensors(model, {name[len("model."):]: shape for name, shape in shard_contents(path).items()
                              if name.startswith("model.")}, path)
        read_shards({"model": model.state_dict()}, path)
    else:
        check_tensors(model, {name: tuple(t.shape) if isinstance(t, torch.Tensor) else None
                              for name, t in ckpt["model"].items()}, path)
        model.load_state_dict(ckpt["model"])


def load_model(path: str, device="cpu") -> tuple[GPT, dict]:
    """The project's one checkpoint loader: the model of any checkpoint (a file or a folder of shards,
    of train.py or finetune.py, untied if it was), in fp32 on `device`, and the checkpoint's dict."""
    ckpt = load_checkpoint(path)
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
    except ValueError as e:  # a shape no GPT has (model.py says why)
        raise TrainError(f"{path}'s model_config: {e}: it is damaged or not a checkpoint of this code")
    load_weights(model, ckpt, path)
    return model.to(device), ckpt


def load_training_state(model, optimizer, ckpt: dict, path: str, average=None):
    """What --resume reads besides the weights: the optimizer state, the weight average (train.py's
    WeightAverage, with --ema) and the random state. A folder's tensors are resharded by DCP to this
    run's processes. What does not fit this run is refused in one line."""
    try:
        if os.path.isdir(path):
            state = {"model": model.state_dict(), **({"ema": average.weights} if average else {})}
            if any(k.startswith("optimizer.") for k in shard_contents(path)):
                state["optimizer"] = get_optimizer_state_dict(model, optimizer)
            read_shards(state, path)  # into the tensors in place
            if "optimizer" in state:
                set_optimizer_state_dict(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
            if average:
                for name, weights in average.weights.items():
                    weights.copy_(ckpt["ema"][name])
        if average:
            average.steps = ckpt["ema_steps"]
        torch.set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # (TrainError, from read_shards, goes on as it is)
        raise TrainError(f"{path} holds an optimizer state, weight average or random state that does not fit this "
                         f"run ({type(e).__name__}): it is damaged; move the folder away to start over") from None


# ---------------------------------------------------------------------------------------------
# 2. The log, what a kill or a full disk leaves, and what a rerun does with it

def append_jsonl(path: str, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_log(path: str) -> list[dict]:
    """The records of a log.jsonl (none if there is no file). A last line cut off by a kill or a full
    disk is dropped with a warning: it is an eval after the last checkpoint, which a rerun makes again."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "step" in record:
            records.append(record)
        elif any(rest.strip() for rest in lines[number:]):
            raise TrainError(f"{path} line {number} is not a log record: the log is damaged; delete that line "
                             f"(its eval is lost) or move the folder away to start over")
        else:
            print(f"warning: {path}: dropping its cut-off last line {number} (that eval is made again)",
                  file=sys.stderr)
    return records


def filter_log(path: str, keep):
    """Rewrite a log.jsonl atomically with only the records for which keep(record) is true: what a
    resumed run (or a rerun finetuning configuration) does with lines its earlier attempt wrote."""
    if os.path.exists(path):
        kept = [record for record in read_log(path) if keep(record)]
        settings.atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept), mode="w")


def remove_temporary_files(out_dir: str):
    """What killed atomic writes left (NAME.tmp<pid>, a checkpoint folder's NAME.tmp<step>): a kill -9
    gives them no chance to clean up."""
    for stale in glob.glob(os.path.join(out_dir, "*.tmp[0-9]*")):
        shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)


def restore_set_aside(out_dir: str):
    """A kill between save_sharded's two renames leaves the previous checkpoint folder set aside as
    NAME.old<step> and no NAME: put it back (it is intact) before anything looks for NAME. One left
    beside NAME (a kill after the second rename) is removed."""
    for old in glob.glob(os.path.join(out_dir, "*.old[0-9]*")):
        name = old[:old.rindex(".old")]
        if os.path.exists(name):
            shutil.rmtree(old)
        else:
            os.rename(old, name)


@contextlib.contextmanager
def writes_in(out_dir: str, recovery):
    """Turn a failed write (a full disk, a lost mount) into a one-line error that says what is intact
    and the command that goes on: recovery() -> (intact, command). The atomic writes leave the files
    they were replacing as they were."""
    try:
        yield
    except OSError as e:
        full = e.errno == errno.ENOSPC
        intact, command = recovery()
        raise TrainError(f"cannot write in {out_dir}: {e.strerror}{' (the disk is full)' if full else ''}; "
                         f"{intact}: {'free space' if full else 'fix that'}, then {command}") from e


def resume_advice(latest: str) -> tuple[str, str]:
    """A pretraining run's recovery() for writes_in: what a failed write leaves intact, and the command."""
    if os.path.exists(latest):
        return f"{latest} is intact", "rerun the same command with --resume"
    return "no checkpoint was written yet", "rerun the same command"


def will_resume(out_dir: str, resume: bool, sharded: bool, rt: Runtime) -> bool:
    """Whether a pretraining run goes on from out_dir's ckpt_latest.pt (only with --resume, so that a
    mistyped --out_dir never continues another run) or starts anew, decided by every rank before
    anything is written. A run killed before its first checkpoint leaves config.json and at most one log
    line (the eval whose checkpoint was being written): nothing worth keeping, so the same command, with
    or without --resume, starts it again. Any other folder is refused with what to do. Before it looks,
    rank 0 locks the folder for the rest of the run (settings.lock_folder, which makes it): a second
    process on the same folder is refused before it reads or repairs anything there."""
    latest, log_path = os.path.join(out_dir, "ckpt_latest.pt"), os.path.join(out_dir, "log.jsonl")
    no_run = f"--resume: {out_dir} holds no run to continue; start it without --resume"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TrainError(f"--out_dir {out_dir} is a file: give a folder")
    if resume and not os.path.exists(out_dir):
        raise TrainError(no_run)  # (a mistyped --out_dir: refused before the lock makes the folder)
    if rt.master:
        settings.lock_folder(out_dir)
        restore_set_aside(out_dir)
    if rt.world_size > 1:
        dist.barrier()
    if os.path.exists(latest):
        if not resume:
            raise TrainError(f"{out_dir} already holds a run: add --resume to continue it or pick another --out_dir")
        if os.path.isdir(latest) != sharded:
            raise TrainError(f"the run in {out_dir} wrote {'sharded' if os.path.isdir(latest) else 'single-file'} "
                             f"checkpoints: resume it with --parallel {'fsdp' if os.path.isdir(latest) else 'ddp'}"
                             f"{' (on any number of processes)' if os.path.isdir(latest) else ''}")
        return True
    if glob.glob(os.path.join(out_dir, "ckpt_*.pt")):
        raise TrainError(f"{out_dir} has milestone checkpoints but no ckpt_latest.pt, and milestones hold weights only: "
                         f"go on from the newest with --init_from and another --out_dir, or move the folder away "
                         f"to start over")
    evals = 0
    if os.path.exists(log_path):
        with open(log_path, "rb") as f:
            evals = sum(1 for line in f if line.strip())
    if evals > 1:
        raise TrainError(f"{log_path} holds {evals} evals but there is no checkpoint to continue them from: "
                         f"move the folder away to start over, or pick another --out_dir")
    if evals or os.path.exists(os.path.join(out_dir, "config.json")):
        if rt.master:
            print(f"note: {out_dir} holds a run killed before its first checkpoint: starting it again", file=sys.stderr)
        return False
    if resume:
        raise TrainError(no_run)
    return False


def begin(out_dir: str, step: int, run_info: dict):
    """Rank 0, once every input is checked: the folder as the checkpoint of `step` left it, and its
    config.json. Log lines after the checkpoint go (all of them for a run from step 0, which evaluates
    step 0 again), first, as a damaged log is refused before anything else is written; then what killed
    writes left."""
    os.makedirs(out_dir, exist_ok=True)
    filter_log(os.path.join(out_dir, "log.jsonl"), lambda r: step > 0 and r["step"] <= step)
    remove_temporary_files(out_dir)
    settings.atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(run_info, f, indent=1), mode="w")


# ---------------------------------------------------------------------------------------------
# 3. Metrics beside log.jsonl, where people look: optional, imported only when asked for

def import_metrics(tensorboard: bool, wandb_project: str) -> dict:
    """The packages --tensorboard and --wandb need (neither is a requirement of this project), imported
    before anything is written, so that a missing one is a one-line error that leaves the folder as it was."""
    modules = {}
    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard, or drop the flag")
        modules["tensorboard"] = SummaryWriter
    if wandb_project:
        try:
            import wandb
        except ImportError:
            raise TrainError("--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline runs without "
                             "an account), or drop the flag")
        modules["wandb"] = wandb
    return modules


def open_metrics(modules: dict, wandb_project: str, out_dir: str, run_info: dict):
    """A function that sends a log record's numbers to TensorBoard (out_dir/tensorboard) and W&B, or
    None. A resumed run sends the evals after its checkpoint again: TensorBoard shows a step's last
    value, and W&B counts each start of the run as a run of its own."""
    sinks = []
    if "tensorboard" in modules:
        writer = modules["tensorboard"](os.path.join(out_dir, "tensorboard"))

        def to_tensorboard(step, numbers):
            for name, value in numbers.items():
                writer.add_scalar(name, value, step)
            writer.flush()
        sinks.append(to_tensorboard)
    if "wandb" in modules:
        wandb_run = modules["wandb"].init(project=wandb_project, name=os.path.basename(os.path.abspath(out_dir)),
                                          dir=out_dir, config=run_info)
        sinks.append(lambda step, numbers: wandb_run.log(numbers, step=step))
    if not sinks:
        return None

    def log(record):
        numbers = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in sinks:
            sink(record["step"], numbers)
    return log
