"""Data: sources -> documents -> tokens -> token files, and the domain mixture that is the heart of SPT.

Specialized pretraining (SPT) mixes a small domain corpus D_dom into pretraining as a constant
fraction delta (`domain_frac`) of the tokens, repeating it as often as needed. This file has two jobs:

1. prepare: turn named sources of documents into a dataset folder
       data/<name>/{general_train,general_val,domain_train,domain_test}.bin + meta.json
   Splits are made per *document* (a held-out tune or molecule never leaks into training), with a
   fixed seed. The domain test split is drawn before the domain train split is subsampled to a token
   budget, so runs with 3M, 30M or 300M domain tokens are all measured on the same test documents.
   Documents stream through a scratch file on disk, so a corpus may be far larger than memory.

       python data.py                     # default: general English mix + ABC music, gpt2 tokens
       python data.py --list              # the named sources
       python data.py --general english --domain smiles --tokenizer byte --name chem-byte

2. mixture: `Mixture` yields training batches where delta of the sequences come from the domain
   train split. Every batch is a pure function of (seed, delta, batch geometry, step), so a run can
   be resumed exactly, split across torchrun ranks without overlap, and audited (the number of domain
   repeats E = T * delta / |D_dom| is exact, not an estimate).

Token file format: a 64-byte header (magic, version, token count, bytes per token, vocab size)
followed by the tokens as uint16 (when the vocabulary fits) or uint32, an end-of-text token before
every document. Files are memory-mapped, never read whole.
"""
import argparse
import array
import glob
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiktoken
import tiktoken.load
import torch
from tqdm import tqdm

from corpora import SOURCES, DataError, resolve_source  # noqa: F401 (data.SOURCES, data.DataError: the interface)

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA_DIR = os.path.join(ROOT, "data", "default")
SPLITS = ("general_train", "general_val", "domain_train", "domain_test")


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


# ---------------------------------------------------------------------------------------------
# Tokenizers. Both are tiktoken Encodings, so everything downstream treats them alike.

GPT2_RANKS = os.path.join(ROOT, "assets", "gpt2.tiktoken")
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def get_tokenizer(name: str) -> tiktoken.Encoding:
    """`gpt2`: GPT-2 BPE from the ranks file shipped in assets/ (tiktoken's own would download it).
    `byte`: the 256 bytes plus end-of-text, for CPU experiments where 50k logits would dominate."""
    if name == "gpt2":
        with open(GPT2_RANKS, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != GPT2_RANKS_SHA256:
                raise DataError(f"{GPT2_RANKS} is corrupt (sha256 mismatch): restore it with git checkout")
        ranks = tiktoken.load.load_tiktoken_bpe(GPT2_RANKS)
        return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: 50256})
    if name == "byte":
        ranks = {bytes([i]): i for i in range(256)}
        return tiktoken.Encoding("byte", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: 256})
    raise DataError(f"unknown tokenizer {name!r}: use gpt2 or byte")


# ---------------------------------------------------------------------------------------------
# Token files.

MAGIC = b"SPTTOKS\0"
VERSION = 1
HEADER_BYTES = 64


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


class TokenWriter:
    """Append token arrays to a token file without holding them all: the header (with the count)
    is written last, into a temporary file that replaces `path` only when complete."""

    def __init__(self, path: str, vocab_size: int):
        self.path, self.vocab_size, self.dtype = path, vocab_size, token_dtype(vocab_size)
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.file = open(self.tmp, "wb")
        self.file.write(bytes(HEADER_BYTES))  # a placeholder until the count is known
        self.count, self.sha256 = 0, hashlib.sha256()

    def append(self, tokens: np.ndarray):
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise DataError(f"token id {int(tokens.max())} >= vocab size {self.vocab_size} while writing {self.path}")
        raw = tokens.astype(self.dtype, copy=False).tobytes()
        self.file.write(raw)
        self.sha256.update(raw)  # of the token bytes only, as meta.json records it
        self.count += tokens.size

    def close(self):
        header = np.zeros(HEADER_BYTES // 8, dtype=np.int64)
        header[1:5] = (VERSION, self.count, np.dtype(self.dtype).itemsize, self.vocab_size)
        header_bytes = bytearray(header.tobytes())
        header_bytes[:8] = MAGIC
        self.file.seek(0)
        self.file.write(bytes(header_bytes))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:  # leave whatever was at `path` untouched
            self.file.close()
            os.remove(self.tmp)


def write_tokens(path: str, tokens: np.ndarray, vocab_size: int):
    with TokenWriter(path, vocab_size) as writer:
        writer.append(tokens)


def read_tokens(path: str, vocab_size: int | None = None) -> np.memmap:
    """Memory-map a token file after checking its header, its size and (optionally) its vocabulary."""
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist: run `python data.py` (see --help) to prepare the data")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise DataError(f"{path} is not an SPT token file (bad magic): prepare it again with data.py")
    _, version, count, itemsize, file_vocab = np.frombuffer(raw[:40], dtype=np.int64).tolist()
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported version {version} / token size {itemsize}: prepare it again")
    expected = HEADER_BYTES + count * itemsize
    if os.path.getsize(path) != expected:
        raise DataError(f"{path} is truncated or corrupt ({os.path.getsize(path)} bytes, header says "
                        f"{expected}): prepare the dataset again")
    if vocab_size is not None and file_vocab != vocab_size:
        raise DataError(f"{path} holds tokens of a {file_vocab}-token vocabulary but the model expects "
                        f"{vocab_size}: prepare the data with the model's tokenizer")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def load_meta(data_dir: str) -> dict:
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise DataError(f"{data_dir} has no meta.json: prepare it with `python data.py --out {data_dir}`")
    with open(path) as f:
        return json.load(f)


def open_split(data_dir: str, split: str) -> np.memmap:
    meta = load_meta(data_dir)
    if split not in meta["splits"] or meta["splits"][split]["tokens"] == 0:
        raise DataError(f"{data_dir} has no {split} split: prepare it with a domain source (data.py --domain)")
    return read_tokens(os.path.join(data_dir, f"{split}.bin"), meta["vocab_size"])


# ---------------------------------------------------------------------------------------------
# prepare: documents -> document-level splits -> tokens -> token files + meta.json
#
# Built for corpora larger than memory. The documents stream once into a scratch file next to the
# output, each with an 8-byte hash; deduplication and the seeded split then work on the hashes alone
# (16 bytes of memory per document, about 40 while splitting), and each split is tokenized in its
# shuffled order straight from the scratch file into its token file, stopping at the token budget.

class DocumentSpool:
    """Documents written once to a scratch file, then read back by index."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "wb")
        self.offsets, self.hashes = array.array("q", [0]), array.array("Q")

    def add(self, doc: str):
        raw = doc.encode("utf-8", errors="replace")  # a lone surrogate (half an emoji) becomes "?"
        self.file.write(raw)
        self.offsets.append(self.offsets[-1] + len(raw))
        self.hashes.append(int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little"))

    def finish(self):
        self.file.close()
        self.file = open(self.path, "rb")

    def nbytes(self, i: int) -> int:
        return self.offsets[i + 1] - self.offsets[i]

    def __getitem__(self, i: int) -> str:
        return os.pread(self.file.fileno(), self.nbytes(i), self.offsets[i]).decode("utf-8")

    def unique(self) -> np.ndarray:
        """Indices of the first copy of every distinct document, in reading order. (Two different
        documents share a 64-bit hash with odds of about n^2 / 2^65: for a billion, 3%; one is lost.)"""
        _, first = np.unique(np.frombuffer(self.hashes, dtype=np.uint64), return_index=True)
        return np.sort(first)


def split_documents(unique: np.ndarray, holdout_frac: float, seed: int, salt: str):
    """A seeded document-level split of the distinct documents: (rest, held out), both shuffled."""
    rng = np.random.default_rng([seed, int.from_bytes(salt.encode()[:8], "little")])
    order = unique[rng.permutation(len(unique))]
    n_holdout = max(1, round(holdout_frac * len(unique))) if holdout_frac > 0 else 0
    return order[n_holdout:], order[:n_holdout]


def write_split(path: str, spool: DocumentSpool, indices: np.ndarray, enc: tiktoken.Encoding,
                budget: int | None, desc: str, batch_docs: int = 2048) -> dict:
    """Tokenize documents in the given order into a token file, each starting with the end-of-text
    token so documents stay separable in the flat stream; stop after the document that reaches the
    token budget. Each thread encodes a slice of the batch (tiktoken's Rust core releases the GIL;
    its own encode_ordinary_batch hands out one document at a time, which costs more than encoding
    short ones)."""
    documents = nbytes = 0
    n_threads = os.cpu_count() or 1
    encode_slice = lambda texts: [enc.encode_ordinary(t) for t in texts]  # noqa: E731
    with TokenWriter(path, enc.n_vocab) as writer, ThreadPoolExecutor(n_threads) as pool, \
            tqdm(total=len(indices), desc=f"tokenize {desc}", unit="doc", leave=False) as bar:
        for start in range(0, len(indices), batch_docs):
            batch = indices[start:start + batch_docs]
            texts = [spool[i] for i in batch]
            step = -(-len(texts) // n_threads)
            ids = [x for part in pool.map(encode_slice, [texts[i:i + step] for i in range(0, len(texts), step)])
                   for x in part]
            lengths = np.array([len(x) + 1 for x in ids])
            if budget is not None and writer.count + lengths.sum() >= budget:  # keep the document that reaches it
                keep = int(np.searchsorted(np.cumsum(lengths), budget - writer.count)) + 1
                batch, ids, lengths = batch[:keep], ids[:keep], lengths[:keep]
            flat = []
            for x in ids:
                flat.append(enc.eot_token)
                flat.extend(x)
            writer.append(np.array(flat, dtype=writer.dtype))
            documents += len(batch)
            nbytes += sum(spool.nbytes(i) for i in batch)
            bar.update(len(batch))
            if budget is not None and writer.count >= budget:
                break
    return {"tokens": writer.count, "documents": documents, "bytes": nbytes, "sha256": writer.sha256.hexdigest()}


def check_seed(seed: int):
    if seed < 0:  # numpy's seeded generators take non-negative integers only
        raise DataError(f"seed {seed}: use a non-negative integer")


def prepare(out_dir: str, general: str, domain: str | None, tokenizer: str = "gpt2",
            val_frac: float = 0.01, test_frac: float = 0.05, domain_tokens: int | None = None,
            general_tokens: int | None = None, seed: int = 0) -> dict:
    t0 = time.time()
    for flag, frac in (("--val_frac", val_frac), ("--test_frac", test_frac)):
        if not 0 < frac < 1:
            raise DataError(f"{flag} {frac} is outside (0, 1): it is the share of documents held out for evaluation")
    for flag, budget in (("--general_tokens", general_tokens), ("--domain_tokens", domain_tokens)):
        if budget is not None and budget <= 0:
            raise DataError(f"{flag} {budget}: a token budget must be positive (leave it out for no limit)")
    check_seed(seed)
    enc = get_tokenizer(tokenizer)
    groups = [("general", general, val_frac, general_tokens, "general_val")]
    if domain:
        groups.append(("domain", domain, test_frac, domain_tokens, "domain_test"))
    sources = [resolve_source(spec) for _, spec, *_ in groups]  # a mistyped name fails before any work
    os.makedirs(out_dir, exist_ok=True)
    # What a prepare killed before its cleanup left behind (one prepare per folder at a time).
    for stale in glob.glob(os.path.join(out_dir, ".*-documents.tmp*")) + glob.glob(os.path.join(out_dir, "*.tmp[0-9]*")) \
            + glob.glob(os.path.join(out_dir, "*.bin.partial")):
        os.remove(stale)
    meta = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "seed": seed,
            "val_frac": val_frac, "test_frac": test_frac, "domain_token_budget": domain_tokens,
            "general_token_budget": general_tokens, "sources": {"general": general, "domain": domain},
            "splits": {}}
    try:
        for (group, spec, holdout_frac, budget, holdout_name), source in zip(groups, sources):
            # An online source streams about enough for the budget plus the held-out share; others ignore it.
            stream_budget = budget and math.ceil(budget / (1 - holdout_frac))
            spool = DocumentSpool(os.path.join(out_dir, f".{group}-documents.tmp{os.getpid()}"))
            try:
                for doc in tqdm(source.read(stream_budget), desc=f"read {group} ({spec})", unit="doc", leave=False):
                    if doc.strip():
                        spool.add(doc)
                spool.finish()
                train, held = split_documents(spool.unique(), holdout_frac, seed, group)
                if not len(train) or not len(held):
                    raise DataError(f"{group} source {spec!r} has {len(train) + len(held)} distinct documents: "
                                    f"too few to split off a held-out set of {holdout_frac:.0%}; use more data")
                for name, indices, split_budget in ((f"{group}_train", train, budget), (holdout_name, held, None)):
                    path = os.path.join(out_dir, f"{name}.bin.partial")
                    meta["splits"][name] = write_split(path, spool, indices, enc, split_budget, name)
            finally:
                spool.file.close()
                os.remove(spool.path)
    except BaseException:  # the splits already written go too: a failed prepare leaves the folder as it was
        for name in meta["splits"]:
            os.remove(os.path.join(out_dir, f"{name}.bin.partial"))
        raise
    # Swap the new splits in only now that all are complete. Without meta.json the folder reads as
    # "not prepared", so a crash during the swap cannot leave old metadata describing new files.
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)
    for name in meta["splits"]:
        os.replace(os.path.join(out_dir, f"{name}.bin.partial"), os.path.join(out_dir, f"{name}.bin"))
    meta["dataset_id"] = hashlib.sha256(json.dumps(
        [meta["tokenizer"]] + [meta["splits"][s]["sha256"] for s in sorted(meta["splits"])]).encode()).hexdigest()[:16]
    atomic_write(meta_path, lambda f: json.dump(meta, f, indent=1), mode="w")
    summary = ", ".join(f"{k} {v['tokens']:,}" for k, v in meta["splits"].items())
    print(f"prepared {out_dir} in {time.time() - t0:.0f}s: {summary} tokens")
    return meta


def ensure_default_dataset(data_dir: str = DEFAULT_DATA_DIR) -> str:
    """train.py calls this so that `python train.py` works on a fresh machine."""
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        if os.path.abspath(data_dir) != os.path.abspath(DEFAULT_DATA_DIR):
            raise DataError(f"{data_dir} has no meta.json: prepare it with `python data.py --out {data_dir}`")
        print(f"no dataset at {data_dir}: preparing the default one first (python data.py), once")
        prepare(data_dir, **DEFAULT_PREPARE)
    return data_dir


DEFAULT_PREPARE = dict(general="english", domain="abc", tokenizer="gpt2")


# ---------------------------------------------------------------------------------------------
# The mixture.

class Mixture:
    """Batches of (inputs, targets) with a `domain_frac` share of sequences from the domain split.

    A split of N tokens is cut into n = (N - 1) // seq_len windows of seq_len + 1 tokens (inputs and
    targets shifted by one). Each split is read epoch by epoch through a fresh seeded permutation of
    its windows, so general data is never repeated until exhausted and domain repeats are exact. Within
    an epoch no window comes twice; a step that straddles two epochs may hold a window from the end of
    one and the same window from the start of the next (fewer than m^2 / n such pairs per epoch on
    average, for m windows of that split per step): the price of epochs that are each an exact pass.

    Step s draws `batch_size` sequences (the global batch, over all ranks and micro-steps), of which
        n_domain(s) = round((s + 1) * B * delta) - round(s * B * delta)
    come from the domain: cumulative rounding keeps the realized fraction within one sequence of
    delta * B * steps at every step, even for delta * B < 1. Which slots of the batch hold domain
    sequences is itself a seeded shuffle, so micro-batches and ranks all see the mix. Everything is a
    pure function of the step; the only state is where this mixture started reading each split
    (non-zero when a run continues from another, as in SCPT), which `state_dict` returns.
    """

    def __init__(self, data_dir: str, domain_frac: float, batch_size: int, seq_len: int, seed: int = 0,
                 general_split: str = "general_train", domain_split: str = "domain_train",
                 general_start: int = 0, domain_start: int = 0, vocab_size: int | None = None):
        if not 0 <= domain_frac <= 1:
            raise DataError(f"domain_frac={domain_frac} is outside [0, 1]: it is the share of domain tokens")
        check_seed(seed)
        self.domain_frac, self.batch_size, self.seq_len, self.seed = domain_frac, batch_size, seq_len, seed
        self.general_start, self.domain_start = general_start, domain_start
        meta = load_meta(data_dir)
        if vocab_size is not None and meta["vocab_size"] != vocab_size:
            raise DataError(f"{data_dir} was tokenized with {meta['tokenizer']} ({meta['vocab_size']} tokens) "
                            f"but the model has vocab_size {vocab_size}: use a matching dataset or model")
        self.splits, self.windows = {}, {}
        for kind, split, needed in (("general", general_split, domain_frac < 1), ("domain", domain_split, domain_frac > 0)):
            if not needed:
                continue
            tokens = open_split(data_dir, split)
            n = (len(tokens) - 1) // seq_len
            most_per_step = math.ceil(batch_size * (domain_frac if kind == "domain" else 1 - domain_frac))
            if n < most_per_step:
                raise DataError(f"{data_dir}/{split} holds {len(tokens):,} tokens = {n} windows of {seq_len + 1}, "
                                f"fewer than the {most_per_step} one batch needs: use more data, a shorter "
                                f"seq_len or a smaller batch")
            self.splits[kind], self.windows[kind] = tokens, n
        self.domain_tokens = self.windows.get("domain", 0) * seq_len
        self._perms = {}  # kind -> (epoch, that epoch's permutation): reading is sequential, one suffices

    def domain_count(self, step: int) -> int:
        """Domain sequences drawn in steps [0, step) of this mixture."""
        return int(np.floor(step * self.batch_size * self.domain_frac + 0.5))

    def position(self, step: int) -> dict:
        """How many windows of each split have been consumed before `step` (including the start)."""
        dom = self.domain_count(step)
        return {"general": self.general_start + step * self.batch_size - dom, "domain": self.domain_start + dom}

    def domain_epochs(self, step: int) -> float:
        """E = repeats of the domain train split so far; equals T * delta / |D_dom| up to rounding."""
        return self.position(step)["domain"] / self.windows["domain"] if "domain" in self.windows else 0.0

    def _window(self, kind: str, k: int) -> int:
        """The k-th window drawn from a split: epoch k // n, through that epoch's own permutation."""
        n = self.windows[kind]
        epoch, i = divmod(k, n)
        if self._perms.get(kind, (None,))[0] != epoch:
            salt = 1 if kind == "domain" else 0
            self._perms[kind] = epoch, np.random.default_rng([self.seed, salt, epoch]).permutation(n)
        return int(self._perms[kind][1][i])

    def batch_windows(self, step: int) -> list[tuple[str, int]]:
        """The global batch of `step` as (split kind, window index) pairs, in slot order."""
        pos, n_dom = self.position(step), self.domain_count(step + 1) - self.domain_count(step)
        kinds = ["domain"] * n_dom + ["general"] * (self.batch_size - n_dom)
        slots = np.random.default_rng([self.seed, 2, step]).permutation(self.batch_size)
        kinds = [kinds[i] for i in slots]
        counters, out = dict(pos), []
        for kind in kinds:
            out.append((kind, self._window(kind, counters[kind])))
            counters[kind] += 1
        return out

    def get_batch(self, step: int, part: int = 0, n_parts: int = 1):
        """Part `part` of `n_parts` equal slices of the global batch: part = rank * n_micro + micro, so
        ranks get disjoint slices of the batch and one process with accumulation sees exactly what N
        ranks see."""
        if self.batch_size % n_parts:
            raise DataError(f"batch_size {self.batch_size} is not divisible into {n_parts} micro-batches x ranks")
        size = self.batch_size // n_parts
        chosen = self.batch_windows(step)[part * size:(part + 1) * size]
        rows = np.stack([self.splits[kind][w * self.seq_len:(w + 1) * self.seq_len + 1] for kind, w in chosen])
        rows = torch.from_numpy(rows.astype(np.int64))
        is_domain = torch.tensor([kind == "domain" for kind, _ in chosen])
        return rows[:, :-1], rows[:, 1:], is_domain

    def state_dict(self) -> dict:
        return {"seed": self.seed, "domain_frac": self.domain_frac, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "general_start": self.general_start, "domain_start": self.domain_start}


# ---------------------------------------------------------------------------------------------

def token_count(text: str) -> int:
    """A token count as people write it: 3000000, 3e6, 3M, 250K, 1.5B or 2T."""
    text = str(text).strip()
    scale = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}.get(text[-1:].upper(), 1)
    value = float(text[:-1] if scale > 1 else text) * scale
    if not 0 <= value < float("inf"):
        raise ValueError(f"not a token count: {text!r}")
    return round(value)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the named sources and exit")
    p.add_argument("--general", default=DEFAULT_PREPARE["general"], help="general source (name, local:PATH, a,b)")
    p.add_argument("--domain", default=DEFAULT_PREPARE["domain"], help="domain source (name, local:PATH, a,b)")
    p.add_argument("--tokenizer", default=DEFAULT_PREPARE["tokenizer"], choices=["gpt2", "byte"])
    p.add_argument("--name", default=None, help="dataset name: data/<name> (default: default)")
    p.add_argument("--out", default=None, help="output folder (overrides --name)")
    p.add_argument("--val_frac", type=float, default=0.01, help="share of general documents held out")
    p.add_argument("--test_frac", type=float, default=0.05, help="share of domain documents held out")
    p.add_argument("--domain_tokens", type=token_count, default=None, help="subsample domain train to N tokens (3e6, 3M)")
    p.add_argument("--general_tokens", type=token_count, default=None, help="cap general train at N tokens")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.list:
        for s in SOURCES.values():
            print(f"{s.name:14s} {s.kind:8s} {'online ' if s.online else ''}{s.description}")
        print(f"{'local:PATH':14s} {'any':8s} a folder or glob of .txt / .jsonl (text field) / .parquet")
        print(f"{'hf:ID[:CONFIG]':14s} {'any':8s} online a hosted dataset's text field, streamed (needs datasets)")
        return
    out = args.out or (os.path.join(ROOT, "data", args.name) if args.name else DEFAULT_DATA_DIR)
    prepare(out, args.general, args.domain, args.tokenizer, args.val_frac, args.test_frac,
            args.domain_tokens, args.general_tokens, args.seed)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"data.py: {e}")
