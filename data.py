"""Data: token files, the domain mixture that is the heart of SPT, and how a dataset is prepared.

Specialized pretraining (SPT) mixes a small domain corpus into pretraining as a constant fraction
delta (`domain_frac`) of the tokens, repeating it as often as needed. This file holds what training
needs from data, in the order a reader needs it:

1. Token files: documents become tokens (GPT-2 BPE, or bytes for CPU experiments), an end-of-text
   token before each; a file is a 64-byte header (magic, version, token count, bytes per token,
   vocabulary size), then the tokens as uint16 (when the vocabulary fits) or uint32. A dataset is a
   folder: meta.json and the splits (general_train, general_val, domain_train, domain_test), each as
   shards of up to SHARD_TOKENS tokens, read back as one memory-mapped array.
2. The Mixture: batches in which delta of the sequences come from domain_train, each a pure function
   of (seed, delta, batch geometry, step): a run resumes exactly, splits across torchrun ranks without
   overlap, and counts its domain repeats E = T * delta / |D_dom| exactly.
3. prepare: named sources of documents (corpora.py) -> a dataset, split per document by a hash of its
   text: worker processes tokenize independent units in parallel, on one machine or many, and a
   killed preparation keeps what it finished. One process at a time finishes a dataset folder (a
   second one is refused); the parts of many machines share it.
4. The command line (its parser, the one atomic writer and the token-count parser are settings.py's):
       python data.py                     # the default dataset: general English mix + ABC music, gpt2
       python data.py --list              # the named sources
       python data.py --general english --domain smiles --tokenizer byte --name chem-byte
       python data.py --general fineweb --general_tokens 200B --part 3/64 --out /shared/web   # machine 3 of 64
"""
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import tiktoken
import tiktoken.load
import torch
from tqdm import tqdm

import corpora
import settings
from corpora import DataError, resolve_source  # data.DataError: every script raises it for bad data

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA_DIR = os.path.join(ROOT, "data", "default")
DEFAULT_PREPARE = dict(general="english", domain="abc", tokenizer="gpt2")
SPLITS = ("general_train", "general_val", "domain_train", "domain_test")
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard: 2,000 files for 200B tokens, one for a small dataset
UNIT_VERSION = 2  # of the files a tokenized unit leaves in .work/: those of another version are made again


# ---------------------------------------------------------------------------------------------
# 1. Token files: two tokenizers (tiktoken Encodings both, so all downstream treats them alike), a
# file of tokens, and a dataset (SplitWriter writes a split's shards, open_split reads them back).

GPT2_RANKS = os.path.join(ROOT, "assets", "gpt2.tiktoken")
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
MAGIC, VERSION, HEADER_BYTES = b"SPTTOKS\0", 1, 64


@functools.cache  # one per process: the worker processes ask for it for every unit
def get_tokenizer(name: str) -> tiktoken.Encoding:
    """`gpt2`: GPT-2 BPE from the ranks file shipped in assets/ (tiktoken's own would download it).
    `byte`: the 256 bytes plus end-of-text, for CPU experiments where 50k logits would dominate.
    End-of-text is the id after the ranks: 50256 or 256."""
    if name == "gpt2":
        with open(GPT2_RANKS, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != GPT2_RANKS_SHA256:
                raise DataError(f"{GPT2_RANKS} is corrupt (sha256 mismatch): restore it with git checkout")
        ranks = tiktoken.load.load_tiktoken_bpe(GPT2_RANKS)
    elif name == "byte":
        ranks = {bytes([i]): i for i in range(256)}
    else:
        raise DataError(f"unknown tokenizer {name!r}: use gpt2 or byte")
    return tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


class TokenWriter:
    """Append token arrays to a token file without holding them all: the header (with the count) goes in
    last, and the file replaces `path` only when complete (after an error in a `with`, `path` stays)."""

    def __init__(self, path: str, vocab_size: int):
        self.path, self.vocab_size = path, vocab_size
        self.dtype = np.uint16 if vocab_size <= 2 ** 16 else np.uint32
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.file = open(self.tmp, "wb")
        self.file.write(bytes(HEADER_BYTES))  # a placeholder until the count is known
        self.count = 0

    def append(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise DataError(f"token id {int(tokens.max())} >= vocab size {self.vocab_size} while writing {self.path}")
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.file.write(tokens)  # the array's own bytes: no copy
        self.count += tokens.size
        return tokens  # as written, in the file's dtype (SplitWriter hashes them)

    def close(self):
        header = np.array([VERSION, self.count, np.dtype(self.dtype).itemsize, self.vocab_size], np.int64)
        self.file.seek(0)
        self.file.write(MAGIC + header.tobytes())  # the rest of the 64 bytes stays zero
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            return self.close()
        self.file.close()
        os.remove(self.tmp)


def read_tokens(path: str, vocab_size: int | None = None) -> np.memmap:
    """Memory-map a token file after checking its header, its size and (optionally) its vocabulary."""
    if not os.path.exists(path):
        raise DataError(f"{path} is missing: the dataset is incomplete; prepare it again with data.py")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise DataError(f"{path} is not an SPT token file (bad magic): prepare it again with data.py")
    version, count, itemsize, file_vocab = np.frombuffer(raw[8:40], dtype=np.int64).tolist()
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported version {version} / token size {itemsize}: prepare it again")
    if os.path.getsize(path) != HEADER_BYTES + count * itemsize:
        raise DataError(f"{path} is truncated or corrupt ({os.path.getsize(path)} bytes, header says "
                        f"{HEADER_BYTES + count * itemsize}): prepare the dataset again")
    if vocab_size is not None and file_vocab != vocab_size:
        raise DataError(f"{path} holds tokens of a {file_vocab}-token vocabulary, not {vocab_size}: it was made "
                        f"with another tokenizer; prepare the data with the one the model uses")
    return np.memmap(path, dtype={2: np.uint16, 4: np.uint32}[itemsize], mode="r", offset=HEADER_BYTES, shape=(count,))


class SplitWriter:
    """A split's tokens, appended in order, as shards of shard_tokens tokens (the last one shorter). A
    shard's sha256 is of its tokens' bytes; the split's, of its shards' sha256s (so each can be checked)."""

    def __init__(self, folder: str, split: str, vocab_size: int, shard_tokens: int):
        self.folder, self.split, self.vocab_size, self.shard_tokens = folder, split, vocab_size, shard_tokens
        self.shards, self.writer = [], None

    def append(self, tokens: np.ndarray):
        while len(tokens):
            if self.writer is None:
                path = os.path.join(self.folder, f"{self.split}-{len(self.shards):05d}.bin")
                self.writer, self.sha256 = TokenWriter(path, self.vocab_size), hashlib.sha256()
            room = min(self.shard_tokens - self.writer.count, 1 << 20)  # 1M tokens at a time: memory stays flat
            self.sha256.update(self.writer.append(tokens[:room]))
            tokens = tokens[room:]
            if self.writer.count == self.shard_tokens:
                self.close()

    def close(self) -> dict:
        if self.writer:
            self.writer.close()
            self.shards.append({"tokens": self.writer.count, "sha256": self.sha256.hexdigest()})
            self.writer = None
        return {"tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards,
                "sha256": hashlib.sha256("".join(s["sha256"] for s in self.shards).encode()).hexdigest()}


def load_meta(data_dir: str) -> dict:
    path, again = os.path.join(data_dir, "meta.json"), f"prepare it again with `python data.py --out {data_dir}`"
    if not os.path.exists(path):
        raise DataError(f"{data_dir} has no meta.json: prepare it with `python data.py --out {data_dir}`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON: {again}")
    if not isinstance(meta, dict) or not {"tokenizer", "vocab_size", "splits", "dataset_id", "shard_dir"} <= set(meta):
        raise DataError(f"{path} lacks tokenizer, vocab_size, splits, dataset_id or shard_dir: {again}")
    return meta


class Tokens:
    """A split's shards, memory-mapped, as one array: a length, contiguous slices (which read only the
    shards they touch: a window may straddle two) and np.asarray (which reads them all)."""

    def __init__(self, shards: list[np.memmap]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(shard) for shard in shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(len(self))
        k, pieces = int(np.searchsorted(self.starts, start, side="right")) - 1, []
        while start < stop:
            pieces.append(self.shards[k][start - self.starts[k]:stop - self.starts[k]])
            start, k = start + len(pieces[-1]), k + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces or [self.shards[0][:0]])

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


def open_split(data_dir: str, split: str) -> Tokens:
    """A split of a prepared dataset. A shard that is missing, cut short, of another vocabulary (another
    tokenizer) or of another size than meta.json says (copied from another dataset or split) is refused.
    (Whether a model's vocabulary matches is checked where a checkpoint meets a dataset: run_folder.py.)"""
    meta = load_meta(data_dir)
    info = meta["splits"].get(split)
    if not info or info["tokens"] == 0:
        raise DataError(f"{data_dir} has no {split} split: prepare it with a domain source (data.py --domain)")
    shards = []
    for k, shard in enumerate(info["shards"]):
        path = os.path.join(data_dir, meta["shard_dir"], f"{split}-{k:05d}.bin")
        shards.append(read_tokens(path, meta["vocab_size"]))
        if len(shards[-1]) != shard["tokens"]:
            raise DataError(f"{path} holds {len(shards[-1]):,} tokens but {data_dir}/meta.json says "
                            f"{shard['tokens']:,}: it belongs to another dataset or split; prepare the dataset again")
    return Tokens(shards)


# ---------------------------------------------------------------------------------------------
# 2. The Mixture.

class Mixture:
    """Batches of (inputs, targets) with a `domain_frac` share of sequences from the domain split.

    A split of N tokens is n = (N - 1) // seq_len windows of seq_len + 1 tokens (inputs and targets
    shifted by one), read epoch by epoch through a fresh seeded permutation: general data is never
    repeated until exhausted, and domain repeats are exact. (A step that straddles two epochs may hold
    a window twice: fewer than m^2 / n such pairs per epoch on average, for m windows per step.)

    Step s draws `batch_size` sequences (the global batch, over all ranks and micro-steps), of which
        n_domain(s) = round((s + 1) * B * delta) - round(s * B * delta)
    come from the domain: cumulative rounding keeps the realized fraction within one sequence of
    delta * B * steps at every step, even for delta * B < 1. A seeded shuffle puts them in the slots,
    so that every micro-batch and rank sees the mix. Steps and tokens are the run's own count: a run
    that continues another (--init_from, as SCPT's last 10% does) starts at its parent's first_step and
    first_tokens and reads on from general_start, general text it has not seen, while its domain is
    read from the start and its draws are a new mixture's (s below counts steps from first_step).

    Splits are read through `Tokens`: a sharded split gives the batches one file would. Memory per rank:
    the OS pages shards in as batches touch them, and each split's current epoch permutation takes 8
    bytes per window (200B tokens at seq_len 2048: 0.78 GB; twice that as an epoch turns).
    """

    def __init__(self, data_dir: str, domain_frac: float, batch_size: int, seq_len: int, seed: int = 0,
                 general_start: int = 0, first_step: int = 0, first_tokens: int = 0):
        if not 0 <= domain_frac <= 1:
            raise DataError(f"domain_frac={domain_frac} is outside [0, 1]: it is the share of domain tokens")
        check_seed(seed)
        self.domain_frac, self.batch_size, self.seq_len, self.seed = domain_frac, batch_size, seq_len, seed
        self.general_start, self.first_step, self.first_tokens = general_start, first_step, first_tokens
        self.splits, self.windows = {}, {}
        for kind, share in (("general", 1 - domain_frac), ("domain", domain_frac)):
            if share == 0:
                continue
            tokens = open_split(data_dir, f"{kind}_train")
            n, most_per_step = (len(tokens) - 1) // seq_len, math.ceil(batch_size * share)
            if n < most_per_step:
                raise DataError(f"{data_dir}/{kind}_train holds {len(tokens):,} tokens = {n} windows of {seq_len + 1}, "
                                f"fewer than the {most_per_step} one batch needs: use more data, a shorter "
                                f"seq_len or a smaller batch")
            self.splits[kind], self.windows[kind] = tokens, n
        self.permutations = {}  # kind -> (epoch, that epoch's permutation): reading is sequential, one suffices

    def domain_count(self, s: int) -> int:
        """Domain sequences drawn in the first s steps of this mixture."""
        return int(np.floor(s * self.batch_size * self.domain_frac + 0.5))

    def tokens(self, step: int) -> int:
        """Tokens the run has trained on before `step`."""
        return self.first_tokens + (step - self.first_step) * self.batch_size * self.seq_len

    def position(self, step: int) -> dict:
        """How many windows of each split have been consumed before `step` (including the start)."""
        s = step - self.first_step
        dom = self.domain_count(s)
        return {"general": self.general_start + s * self.batch_size - dom, "domain": dom}

    def domain_epochs(self, step: int) -> float:
        """E = repeats of the domain train split so far; equals T * delta / |D_dom| up to rounding."""
        return self.position(step)["domain"] / self.windows["domain"] if "domain" in self.windows else 0.0

    def window(self, kind: str, k: int) -> int:
        """The k-th window drawn from a split: epoch k // n, through that epoch's own permutation."""
        n = self.windows[kind]
        epoch, i = divmod(k, n)
        if self.permutations.get(kind, (None,))[0] != epoch:
            salt = 1 if kind == "domain" else 0
            self.permutations[kind] = epoch, np.random.default_rng([self.seed, salt, epoch]).permutation(n)
        return int(self.permutations[kind][1][i])

    def batch_windows(self, step: int) -> list[tuple[str, int]]:
        """The global batch of `step` as (split kind, window index) pairs, in slot order."""
        s = step - self.first_step
        pos, n_dom = self.position(step), self.domain_count(s + 1) - self.domain_count(s)
        slots = np.random.default_rng([self.seed, 2, s]).permutation(self.batch_size)
        out = []
        for kind in ("domain" if slot < n_dom else "general" for slot in slots):  # slots [0, n_dom) are domain
            out.append((kind, self.window(kind, pos[kind])))
            pos[kind] += 1
        return out

    def get_batch(self, step: int, part: int = 0, n_parts: int = 1):
        """Part `part` of `n_parts` equal slices of the global batch: part = rank * n_micro + micro, so
        ranks get disjoint slices of the batch and one process with accumulation sees exactly what N
        ranks see (processes.check_geometry has checked that the batch splits evenly)."""
        size = self.batch_size // n_parts
        chosen = self.batch_windows(step)[part * size:(part + 1) * size]
        rows = np.stack([self.splits[kind][w * self.seq_len:(w + 1) * self.seq_len + 1] for kind, w in chosen])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "domain_frac": self.domain_frac, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "general_start": self.general_start}


def check_seed(seed: int):
    if seed < 0:  # numpy's seeded generators take non-negative integers only
        raise DataError(f"seed {seed}: use a non-negative integer")


# ---------------------------------------------------------------------------------------------
# 3. prepare: sources -> units -> tokens -> document-level splits -> shards + meta.json
#
# Tokenize: a source (corpora.py) is a list of units (a package's texts, a 16 MiB range of a local
#   file, a hosted file). Worker processes tokenize each into .work/<group>-<key>/<unit>.bin (its
#   documents' tokens) and <unit>.npz (per document: a 64-bit hash of its text, its tokens and bytes),
#   which marks it done: a killed preparation loses only the units in flight, and N machines sharing
#   the folder each take every N-th unit (--part i/N). The key names source, tokenizer and units.
# Choose, from the .npz files alone (64 bytes of memory per document):
#   - the first copy of each distinct text, in reading order;
#   - a place p, uniform in [0, 2^64), per document from its text's hash, the seed and the group; held
#     out when p < holdout_frac * 2^64 (if none is, the lowest). Copies share p, so they never straddle
#     train and test, and no budget moves the held-out split;
#   - a token budget keeps the training documents of lowest p, up to the one that reaches it: a random
#     sample of the whole source, and budgets nest. Falling short is an error;
#   - an online source is read only as far as its budget needs: the first units whose training
#     documents hold it (any more that were tokenized are left out).
# Assemble: the chosen documents' tokens go, in reading order, into shards in a new folder; meta.json,
#   written last and atomically, switches the dataset over to them.

@dataclass
class Group:
    """The general or the domain half of a dataset: a source, its train and held-out splits, a budget,
    and once planned, the source's units and the folder they are tokenized into."""
    name: str
    source: corpora.Source
    holdout_frac: float
    budget: int | None
    splits: tuple[str, str]
    units: list = None
    work: str = ""

    def path(self, u: int, suffix: str) -> str:
        return os.path.join(self.work, f"{u:06d}{suffix}")


def tokenize_unit(task: tuple) -> int:
    """In a worker process: one unit's documents -> its .bin and .npz files. Returns its token count."""
    path, unit, tokenizer = task
    enc = get_tokenizer(tokenizer)
    eot = np.array([enc.eot_token], dtype=np.uint32)
    hashes, lengths, sizes, pending = bytearray(), [], [], []
    corpora.FETCHED.clear()  # the packages this unit's reader opens, for meta.json
    with TokenWriter(path + ".bin", enc.n_vocab) as writer:
        for doc in corpora.read_unit(unit):
            if not doc or doc.isspace():
                continue
            raw = doc.encode(errors="replace")  # a lone surrogate (half an emoji) becomes "?"
            ids = enc.encode_to_numpy(raw.decode(), disallowed_special=())  # "<|endoftext|>" in a text is text
            hashes += hashlib.blake2b(raw, digest_size=8).digest()
            lengths.append(len(ids) + 1)
            sizes.append(len(raw))
            pending += (eot, ids)
            if len(pending) >= 512:  # a few MB at a time: memory does not grow with the unit
                writer.append(np.concatenate(pending, dtype=writer.dtype))
                pending = []
        writer.append(np.concatenate(pending or [eot[:0]], dtype=writer.dtype))
    index = {"hashes": np.frombuffer(hashes, np.uint64), "tokens": np.array(lengths, np.uint32),
             "bytes": np.array(sizes, np.uint32), "packages": np.array(json.dumps(list(corpora.FETCHED.values())))}
    settings.atomic_write(path + ".npz", lambda f: np.savez(f, **index))  # last: it marks the unit done
    return sum(lengths)


def tokenize(tasks: list[tuple], workers: int):
    """tokenize_unit over the tasks, in a pool of worker processes (in this one, for one worker)."""
    pool = ProcessPoolExecutor(min(workers, len(tasks))) if workers > 1 and len(tasks) > 1 else None
    bar, total = tqdm(total=len(tasks), desc=f"tokenize ({workers} workers)", unit="unit", leave=False), 0
    try:
        for n in pool.map(tokenize_unit, tasks) if pool else map(tokenize_unit, tasks):
            total += n
            bar.update()
            bar.set_postfix(tokens=f"{total:,}", refresh=False)
    except BrokenProcessPool:
        raise DataError("a worker process died (out of memory?): run the same command again with fewer "
                        "--workers; finished units are kept")
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)  # after a failure, only the units already running finish


def units_needed(g: Group, seed: int, first_round: int) -> int:
    """How many units, from the first, to tokenize: all of an offline source; of an online one, those
    the budget uses once finished units hold it, else as many more as their tokens per unit say (after
    a first round of one unit per machine, to see it)."""
    if not g.source.online:
        return len(g.units)
    done = next((u for u in range(len(g.units)) if not os.path.exists(g.path(u, ".npz"))), len(g.units))
    if not done:
        return min(first_round, len(g.units))
    have = choose(g, done, seed)
    if have["train_tokens"] >= g.budget:
        return have["used"]
    missing = (g.budget - have["train_tokens"]) / max(1, have["train_tokens"] / done)
    return min(len(g.units), done + math.ceil(missing * 1.02))


def doc_places(hashes: np.ndarray, seed: int, group: str) -> np.ndarray:
    """Each document's place in [0, 2^64): the finalizer of splitmix64 (a bijection that spreads every
    input bit over all output bits) applied to its text's hash XOR a salt made from seed and group."""
    salt = np.uint64(int.from_bytes(hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest(), "little"))
    x = hashes ^ salt
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def choose(g: Group, n: int, seed: int) -> dict:
    """Which documents of units [0, n) go to which split, by the rules above."""
    index = [np.load(g.path(u, ".npz")) for u in range(n)]
    hashes, tokens, sizes = (np.concatenate([i[key] for i in index]) for key in ("hashes", "tokens", "bytes"))
    unit_of = np.repeat(np.arange(n), [len(i["hashes"]) for i in index])
    first = np.zeros(len(hashes), dtype=bool)
    first[np.unique(hashes, return_index=True)[1]] = True
    places = doc_places(hashes, seed, g.name)
    low = places < np.uint64(int(g.holdout_frac * 2.0 ** 64))
    used = n
    if g.source.online:  # the first units whose training documents hold the budget
        holding = np.cumsum(np.bincount(unit_of, weights=tokens * (first & ~low), minlength=n))
        used = min(int(np.searchsorted(holding, g.budget)) + 1, n)
        first &= unit_of < used
    held = first & low
    if not held.any() and first.any():
        held[np.flatnonzero(first)[np.argmin(places[first])]] = True
    train = first & ~held
    if g.budget is not None:
        order = np.flatnonzero(train)
        order = order[np.argsort(places[order])]
        reached = int(np.searchsorted(np.cumsum(tokens[order], dtype=np.int64), g.budget))
        train = np.zeros_like(train)
        train[order[:reached + 1]] = True
    return {"masks": dict(zip(g.splits, (train, held))), "tokens": tokens, "bytes": sizes, "unit_of": unit_of,
            "used": used, "distinct": int(first.sum()), "train_tokens": int(tokens[train].sum()),
            "packages": [p for i in index[:used] for p in json.loads(str(i["packages"]))]}


def assemble(out_dir: str, groups: list[Group], choices: list[dict], meta: dict, shard_tokens: int) -> dict:
    """Assemble, as described above (the shards go into a staging folder renamed when complete)."""
    staging = os.path.join(out_dir, f".assemble{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        for g, choice in zip(groups, choices):
            writers = {split: SplitWriter(staging, split, meta["vocab_size"], shard_tokens) for split in g.splits}
            first_doc = np.searchsorted(choice["unit_of"], np.arange(choice["used"] + 1))
            for u in tqdm(range(choice["used"]), desc=f"assemble {g.name}", unit="unit", leave=False):
                lo, hi = first_doc[u], first_doc[u + 1]
                starts = np.concatenate([[0], np.cumsum(choice["tokens"][lo:hi], dtype=np.int64)])
                tokens = read_tokens(g.path(u, ".bin"))
                if len(tokens) != starts[-1]:
                    raise DataError(f"{g.path(u, '.bin')} does not match its .npz: delete both and run again")
                for split, writer in writers.items():
                    kept = choice["masks"][split][lo:hi].view(np.int8)
                    runs = np.flatnonzero(np.diff(np.concatenate([[0], kept, [0]])))  # where kept runs start, end
                    for a, b in runs.reshape(-1, 2):
                        writer.append(tokens[starts[a]:starts[b]])
            for split, writer in writers.items():
                mask = choice["masks"][split]
                meta["splits"][split] = {**writer.close(), "documents": int(mask.sum()),
                                         "bytes": int(choice["bytes"][mask].sum())}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta["dataset_id"] = hashlib.sha256(json.dumps(
        [meta["tokenizer"]] + [meta["splits"][s]["sha256"] for s in sorted(meta["splits"])]).encode()).hexdigest()[:16]
    meta["shard_dir"] = f"shards-{meta['dataset_id']}"
    if not os.path.isdir(os.path.join(out_dir, meta["shard_dir"])):  # else this very dataset was assembled before
        os.replace(staging, os.path.join(out_dir, meta["shard_dir"]))
    settings.atomic_write(os.path.join(out_dir, "meta.json"), lambda f: json.dump(meta, f, indent=1), mode="w")
    for name in os.listdir(out_dir):  # what this and earlier preparations left: shards, work, temporaries
        path = os.path.join(out_dir, name)
        if name.startswith(("shards-", ".assemble", ".work")) and name != meta["shard_dir"]:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        elif ".tmp" in name:
            os.remove(path)
    return meta


def prepare(out_dir: str, general: str, domain: str | None, tokenizer: str = "gpt2",
            val_frac: float = 0.01, test_frac: float = 0.05, domain_tokens: int | None = None,
            general_tokens: int | None = None, seed: int = 0, *, allow_short: bool = False,
            workers: int | None = None, part: str | None = None, shard_tokens: int = SHARD_TOKENS) -> dict | None:
    """Prepare the dataset folder `out_dir` and return its meta.json. With `part` ("i/N"), tokenize only
    that share of the units and return None: the same call without `part` then finishes the dataset."""
    t0 = time.time()
    for flag, frac in (("--val_frac", val_frac), ("--test_frac", test_frac)):
        if not 0 < frac < 1:
            raise DataError(f"{flag} {frac} is outside (0, 1): it is the share of documents held out for evaluation")
    for flag, budget in (("--general_tokens", general_tokens), ("--domain_tokens", domain_tokens)):
        if budget is not None and budget <= 0:
            raise DataError(f"{flag} {budget}: a token budget must be positive (leave it out for no limit)")
    check_seed(seed)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    if workers < 1:
        raise DataError(f"--workers {workers}: use at least 1")
    mine, n_parts = (int(x) if x.isdigit() else -1 for x in (part or "0/1").partition("/")[::2])
    if not 0 <= mine < n_parts:
        raise DataError(f"--part {part}: write it as i/N with 0 <= i < N (parts count from 0, as SLURM's do)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"--out {out_dir} is a file, not a folder: choose another path")
    enc = get_tokenizer(tokenizer)
    groups = [Group("general", resolve_source(general), val_frac, general_tokens, ("general_train", "general_val"))]
    if domain:  # (a mistyped source name fails here, before any work)
        groups.append(Group("domain", resolve_source(domain), test_frac, domain_tokens,
                            ("domain_train", "domain_test")))
    try:
        for g in groups:  # an online source plans for its budget plus the held-out share
            g.units = g.source.plan(g.budget and math.ceil(g.budget / (1 - g.holdout_frac)))
            key = hashlib.sha256(json.dumps([UNIT_VERSION, g.source.name, tokenizer, g.units]).encode()).hexdigest()[:16]
            g.work = os.path.join(out_dir, ".work", f"{g.name}-{key}")
        # One writer: the final step holds the folder alone, the parts share it (any number at once, on
        # any machine, but not while a final step runs: it removes their .work at its end)
        settings.lock_folder(out_dir, shared=part is not None)
        for g in groups:
            os.makedirs(g.work, exist_ok=True)
        while True:  # (the units finished refine how many an online source needs)
            wanted = {g.name: units_needed(g, seed, n_parts) for g in groups}
            tasks = [(g.path(u, ""), g.units[u], tokenizer) for g in groups
                     for u in range(mine, wanted[g.name], n_parts) if not os.path.exists(g.path(u, ".npz"))]
            if not tasks:
                break
            tokenize(tasks, workers)
        if part is not None:
            print(f"part {part} is done; when all parts are, run the same command without --part to finish")
            return None
        choices = [choose(g, wanted[g.name], seed) for g in groups]
        # parts of a mix that this machine's apt does not offer (corpora.mix): the mix goes on without them
        missing = {g.name: {unit[1]: unit[2] for unit in g.units if unit[0] == "missing"} for g in groups}
        for g, c in zip(groups, choices):
            if not c["distinct"]:
                raise DataError(f"{g.name} source {g.source.name!r} yielded no documents: "
                                + ("; ".join(f"no {part}: {why}" for part, why in missing[g.name].items())
                                   or "check its name or path"))
            if not c["train_tokens"]:
                raise DataError(f"{g.name} source {g.source.name!r} has {c['distinct']} distinct documents: too few "
                                f"to hold out {g.holdout_frac:.0%} of them; use more data")
            if g.budget and c["train_tokens"] < g.budget and not allow_short:
                raise DataError(f"{g.splits[0]}: {g.source.name!r} holds {c['train_tokens']:,} training tokens "
                                f"({c['distinct']:,} distinct documents, {c['masks'][g.splits[1]].sum():,} held out), "
                                f"short of the {g.budget:,} asked for: lower --{g.name}_tokens, add data, or pass "
                                f"--allow_short")
        t1 = time.time()
        meta = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "seed": seed,
                "val_frac": val_frac, "test_frac": test_frac, "domain_token_budget": domain_tokens,
                "general_token_budget": general_tokens, "sources": {"general": general, "domain": domain},
                "packages": sorted({json.dumps(p, sort_keys=True): p for c in choices for p in c["packages"]}.values(),
                                   key=lambda p: (p["registry"], p["package"])),
                "missing": {name: parts for name, parts in missing.items() if parts}, "splits": {}}
        meta = assemble(out_dir, groups, choices, meta, shard_tokens)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"the disk holding {out_dir} is full: free some space and run the same command again "
                            f"(the finished units in {out_dir}/.work are kept)") from None
        raise
    summary = ", ".join(f"{k} {v['tokens']:,}" for k, v in meta["splits"].items())
    print(f"prepared {out_dir} in {time.time() - t0:.0f}s (tokenize {t1 - t0:.1f}s, assemble {time.time() - t1:.1f}s): "
          f"{summary} tokens")
    for g in groups:
        for part, why in meta["missing"].get(g.name, {}).items():
            print(f"warning: {g.source.name} is without {part} ({why}): {g.splits[0]} holds "
                  f"{meta['splits'][g.splits[0]]['tokens']:,} tokens without it", file=sys.stderr)
    return meta


# ---------------------------------------------------------------------------------------------
# 4. The command line

def main(argv=None):
    p = settings.ArgumentParser(description=__doc__)
    p.add_argument("--list", action="store_true", help="list the named sources and exit")
    p.add_argument("--general", default=DEFAULT_PREPARE["general"],
                   help="general source: a name from --list, local:PATH, or several joined by commas")
    p.add_argument("--domain", default=DEFAULT_PREPARE["domain"], help="domain source, the same way ('': none)")
    p.add_argument("--tokenizer", default=DEFAULT_PREPARE["tokenizer"], choices=["gpt2", "byte"],
                   help="gpt2 (BPE, 50,257 tokens) or byte (256 bytes + end-of-text)")
    p.add_argument("--name", help="dataset name: data/<name> (default: data/default)")
    p.add_argument("--out", help="output folder (instead of --name)")
    p.add_argument("--val_frac", type=float, default=0.01, help="share of general documents held out")
    p.add_argument("--test_frac", type=float, default=0.05, help="share of domain documents held out")
    p.add_argument("--domain_tokens", type=settings.token_count,
                   help="keep a random sample of N domain training tokens: 3e6, 3M (default: all)")
    p.add_argument("--general_tokens", type=settings.token_count,
                   help="keep a random sample of N general training tokens: 2e9, 200B (default: all)")
    p.add_argument("--allow_short", action="store_true", help="a train split may end below its budget (all there is)")
    p.add_argument("--seed", type=int, default=0, help="which documents are held out and which a budget keeps")
    p.add_argument("--workers", type=int, help="tokenizing processes (default: one per CPU core)")
    p.add_argument("--part", help="i/N: tokenize only the i-th of N shares (machines); 0 <= i < N")
    args = p.parse_args(argv)
    if args.list:
        return print(corpora.describe())
    out = args.out or (os.path.join(ROOT, "data", args.name) if args.name else DEFAULT_DATA_DIR)
    prepare(out, args.general, args.domain, args.tokenizer, args.val_frac, args.test_frac, args.domain_tokens,
            args.general_tokens, args.seed, allow_short=args.allow_short, workers=args.workers, part=args.part)


if __name__ == "__main__":
    try:
        main()
    except (DataError, settings.TrainError) as e:  # TrainError: the folder is being written by another process
        sys.exit(f"data.py: {e}")
