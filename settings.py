"""Settings and their command line, and the few helpers that every script shares.

    python train.py --lr 1e-3 --max_tokens=2M              # --k v and --k=v; token counts as 2e6 or 2M
    python train.py --config configs/gpu-124m.json --lr 1e-3   # defaults < a --config file < flags
    python finetune.py --help                              # a line per flag: its meaning and default

Every flag of train.py and finetune.py is a field of its config dataclass (train.TrainConfig,
finetune.FinetuneConfig), written `setting(default, "one-line meaning", choices=...)`: build_parser
makes each field a flag with that help line, default and choices, and parse_config reads the flags
over the --config file over the defaults. What a number must be (a learning rate > 0, a fraction in
[0, 1)) sits beside each config as its script's RANGES, which check_ranges applies before anything is
written: a bad value fails at once in one line that names the flag, not after warmup, and nonsense (a
negative min_lr trains by gradient ascent) never runs. TrainError is that line for settings,
checkpoints and runs (data.DataError the one for data); each script's __main__ prints it as
`script.py: message` and exits with status 1.

The rest is done one way here, for every script: atomic_write (a file through a temporary file and a
rename, so that a kill never leaves half of one), lock_folder (one process writes a folder at a time:
a second one is refused, never interleaved), token_count and format_tokens (token counts read as
3e6, 3M or 1.5B, and written back exactly and short: 3M, 250K, 2048), integer (1e3 is an integer, 2.5
is not), config_from_dict (a config that a file holds, checked field by field) and ArgumentParser (a
meaning and a default on every --help line, errors in one line). Nothing here imports the rest of
the project.
"""
import argparse
import dataclasses
import fcntl
import json
import os
import socket
import sys
import time
import types
from dataclasses import field


class TrainError(Exception):
    """Bad input or a failed run: the message is one line that says what to do."""


# ---------------------------------------------------------------------------------------------
# Writing files (atomically, one process per folder) and counting tokens

def atomic_write(path, write_fn, mode="wb"):
    """Write through a temporary file and rename, so a crash never leaves half a file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# One writer per folder: a run folder (train.py, finetune.py), a dataset folder (data.py) and a study's
# out_dir (scripts/study.py) are written by one process at a time. Without that, a job that a scheduler
# requeues while its first copy still runs, or a command started twice, interleaves two runs in one log
# and keeps whichever checkpoint was written last. The lock is the kernel's (a POSIX record lock,
# fcntl.lockf, on the folder's .lock file), so it ends with its process however that ends (kill -9
# too): nothing stale is ever left to remove by hand. It is the process's own, not shared with the
# children it forks (data.py's workers, which a kill -9 can leave behind), and it lasts while the file
# stays open: closing any descriptor of the file drops it, so the holder opens it once (LOCKS). What it
# guarantees on a shared filesystem: README, "What happens when things go wrong".

LOCK_NAME = ".lock"  # in the folder it guards; it holds who has the lock, for the refusal to name
LOCKS = {}  # lock file -> the open file: a folder this process has locked stays locked until it ends


def lock_folder(folder: str, shared: bool = False):
    """Make `folder` (created if need be) this process's to write until the process ends, or refuse in
    one line that names the process holding it and says what to do. `shared`: any number of holders
    at once, but none while an exclusive one holds it (data.py's --part processes, beside its final step).
    Taking a lock this process holds again changes only its kind."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.realpath(os.path.join(folder, LOCK_NAME))
    lock_file = LOCKS.get(path) or open(path, "a+")  # a+: created if missing, never emptied by opening
    try:
        fcntl.lockf(lock_file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # another process holds it
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        if path not in LOCKS:
            lock_file.close()
        raise TrainError(f"{folder} is being written by {holder}: one process writes a folder at a time; wait "
                         f"for that one to end (or stop it) and run this again, or use another folder")
    except OSError as e:  # a filesystem without locks (NFS without its lock service, Lustre mounted noflock)
        print(f"warning: cannot lock {folder} ({e.strerror}): nothing stops a second process from writing it "
              f"at the same time (README: shared filesystems)", file=sys.stderr)
    if path not in LOCKS:
        LOCKS[path] = lock_file
        lock_file.truncate(0)  # who holds it: the refusals name the process
        lock_file.write(f"{os.path.basename(sys.argv[0]) or 'python'} (pid {os.getpid()} on {socket.gethostname()} "
                        f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        lock_file.flush()


def token_count(text: str) -> int:
    """A token count as people write it: 3000000, 3e6, 3M, 250K, 1.5B or 2T (format_tokens writes one)."""
    text = str(text).strip()
    scale = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}.get(text[-1:].upper(), 1)
    value = float(text[:-1] if scale > 1 else text) * scale
    if not 0 <= value < float("inf"):
        raise ValueError(f"not a token count: {text!r}")
    return round(value)


def format_tokens(n: float) -> str:
    """A token count, exact and short, for file names and messages: 250000 -> 250K, 2e9 -> 2B, 2048 -> 2048."""
    n = int(n)
    for unit, scale in (("B", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def integer(text: str) -> int:
    """An integer as people write it, 1000 or 1e3 (2.5 is refused, not cut to 2)."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


# ---------------------------------------------------------------------------------------------
# Settings: a config field per flag, checked before anything is written

def setting(default, help: str, choices=None):
    """A config field: its default, its one-line meaning for --help and, for an enumeration, the values
    it takes, in one place (build_parser turns each field into a flag)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def field_type(field):
    """The type behind a dataclass field's annotation, e.g. int for `int | None`."""
    if isinstance(field.type, types.UnionType):
        return next(t for t in field.type.__args__ if t is not type(None))
    return field.type


def check_ranges(cfg, ranges: dict):
    """Every numeric setting of `cfg` that `ranges` names (name -> (test, what the value must be)). The
    flags' parser has checked types and choices; None means "not given": a default applies."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ranges and value is not None:
            ok, what = ranges[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise TrainError(f"--{f.name} {value}: must be {what}")


def has_field_type(value, f) -> bool:
    """Whether `value` is of a dataclass field's type: None where the annotation allows it (int | None),
    an int where a float is expected, never a bool for a number."""
    if value is None:
        return isinstance(f.type, types.UnionType) and type(None) in f.type.__args__
    kind = field_type(f)
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def config_from_dict(config_cls, values, where: str):
    """A config that a file holds (a checkpoint's model_config or the settings of the run that wrote
    it), with every field of config_cls and no other, each of its field's type; else a one-line error."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if not isinstance(values, dict):
        problem = f"is of type {type(values).__name__}, not dict"
    elif fields.keys() - values.keys():
        problem = f"lacks {', '.join(sorted(fields.keys() - values.keys()))}"
    elif values.keys() - fields.keys():
        problem = f"has unknown keys {', '.join(sorted(map(str, values.keys() - fields.keys())))}"
    else:
        wrong = [name for name, f in fields.items() if not has_field_type(values[name], f)]
        if not wrong:
            return config_cls(**values)
        name = wrong[0]
        problem = f"has {name} of type {type(values[name]).__name__}, not {field_type(fields[name]).__name__}"
    raise TrainError(f"{where} {problem}: it was not written by this code (or is damaged); use a file this code wrote")


# ---------------------------------------------------------------------------------------------
# The command line: defaults < --config file < flags

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as written here: the script's docstring as it is, then a line per flag, its meaning and
    its default (unless there is none, or the meaning says what it is)."""

    def _get_help_string(self, action):  # argparse's own hook for this (ArgumentDefaultsHelpFormatter's)
        text = action.help or ""
        if not action.option_strings or action.default is None or action.default is False \
                or action.default in ("", argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """--help through HelpFormatter, and an error in one line (not buried under argparse's usage block)."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def build_parser(config_cls, description: str) -> argparse.ArgumentParser:
    """One flag per config field, with the field's help and choices (see `setting`); `--k v` and `--k=v`
    both work; ints accept 1e6, token counts 1M; bools accept `--flag`, `--flag true` or `--flag=false`."""
    p = ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="a JSON file of settings, under the flags (configs/ has presets)")
    for f in dataclasses.fields(config_cls):
        kind, meaning = field_type(f), dict(default=f.default, help=f.metadata["help"], choices=f.metadata["choices"])
        if kind is bool:
            p.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, metavar="true|false", **meaning)
        elif f.name.endswith("_tokens") and kind is not str:  # --max_tokens 2e6 or 2M
            meaning["help"] += f" (default: {format_tokens(f.default)})"
            p.add_argument(f"--{f.name}", type=token_count, **meaning)
        else:
            p.add_argument(f"--{f.name}", type=integer if kind is int else kind, **meaning)
    return p


def parse_config(config_cls, argv, description: str):
    parser = build_parser(config_cls, description)
    args = parser.parse_args(argv)
    if args.config:
        if not os.path.isfile(args.config):
            raise TrainError(f"--config {args.config} does not exist (presets live in configs/)")
        try:
            with open(args.config) as f:
                file_values = json.load(f)
        except ValueError as e:
            raise TrainError(f"--config {args.config} is not valid JSON ({e}): fix it (configs/ has examples)")
        if not isinstance(file_values, dict):
            raise TrainError(f"--config {args.config}: expected a JSON object of settings, like configs/gpu-124m.json")
        unknown = set(file_values) - {f.name for f in dataclasses.fields(config_cls)}
        if unknown:
            raise TrainError(f"{args.config}: unknown keys {sorted(unknown)}")
        # each value goes through its flag's type, as if typed, in a parser whose errors name the file
        file_parser = build_parser(config_cls, description)
        file_parser.prog = f"{parser.prog} --config {args.config}"
        typed = vars(file_parser.parse_args([f"--{k}={v}" for k, v in file_values.items() if v is not None]))
        parser.set_defaults(**{k: typed[k] for k in file_values})  # null: the default
        args = parser.parse_args(argv)
    return config_cls(**{k: v for k, v in vars(args).items() if k != "config"})
