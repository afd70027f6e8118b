"""Data: sources -> documents -> tokens -> token files, and the domain mixture that is the heart of SPT.

Specialized pretraining (SPT) mixes a small domain corpus D_dom into pretraining as a constant
fraction delta (`domain_frac`) of the tokens, repeating it as often as needed. This file has two jobs:

1. prepare: turn named sources of documents into a dataset folder
       data/<name>/{general_train,general_val,domain_train,domain_test}.bin + meta.json
   Splits are made per *document* (a held-out tune or molecule never leaks into training), with a
   fixed seed. The domain test split is drawn before the domain train split is subsampled to a token
   budget, so runs with 3M, 30M or 300M domain tokens are all measured on the same test documents.

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
import glob
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import tiktoken
import tiktoken.load
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA_DIR = os.path.join(ROOT, "data", "default")
CACHE_DIR = os.environ.get("SPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "spt"))
SPLITS = ("general_train", "general_val", "domain_train", "domain_test")


class DataError(Exception):
    """Bad input: the message is one line that says what to do."""


def atomic_write(path, write_fn, mode="wb"):
    """Write through a temporary file and rename, so a crash never leaves half a file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, mode) as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def write_tokens(path: str, tokens: np.ndarray, vocab_size: int):
    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"token id {int(tokens.max())} >= vocab size {vocab_size} while writing {path}")
    header = np.zeros(HEADER_BYTES // 8, dtype=np.int64)
    header[1:5] = (VERSION, tokens.size, np.dtype(dtype).itemsize, vocab_size)
    header_bytes = bytearray(header.tobytes())
    header_bytes[:8] = MAGIC

    def write(f):
        f.write(bytes(header_bytes))
        f.write(tokens.astype(dtype, copy=False).tobytes())
    atomic_write(path, write)


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
# Sources. A source is a named generator of documents (strings). Registry sources download their
# package from PyPI or Debian's archive into CACHE_DIR the first time and read it from there after.

@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # what it is usually used as: "general" or "domain" (informational, for --list)
    description: str
    documents: Callable[[], Iterator[str]]
    online: bool = False


def local_documents(pattern: str) -> Iterator[str]:
    """A folder or glob of .txt (one document per file), .jsonl (a `text` field per line) or .parquet."""
    paths = sorted(glob.glob(os.path.join(pattern, "**", "*"), recursive=True)) if os.path.isdir(pattern) \
        else sorted(glob.glob(pattern, recursive=True))
    paths = [p for p in paths if p.endswith((".txt", ".jsonl", ".parquet"))]
    if not paths:
        raise DataError(f"local source {pattern!r} matches no .txt, .jsonl or .parquet file")
    for path in paths:
        if path.endswith(".txt"):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()
        elif path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise DataError(f"{path}:{lineno}: expected a JSON object with a 'text' field")
        else:
            import pyarrow.parquet as pq  # optional dependency, only for parquet input
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                yield from batch.column(0).to_pylist()


SOURCES: dict[str, Source] = {}


def resolve_source(spec: str) -> Source:
    """A registry name, `local:PATH_OR_GLOB`, or a comma-separated list of either."""
    if "," in spec:
        parts = [resolve_source(s) for s in spec.split(",")]
        return Source(spec, parts[0].kind, " + ".join(p.name for p in parts),
                      lambda: (d for p in parts for d in p.documents()), any(p.online for p in parts))
    if spec.startswith("local:"):
        return Source(spec, "any", f"local files {spec[6:]}", lambda: local_documents(spec[6:]))
    if spec not in SOURCES:
        raise DataError(f"unknown source {spec!r}: see `python data.py --list`, or use local:PATH")
    return SOURCES[spec]


# ---------------------------------------------------------------------------------------------
# prepare: documents -> tokens -> document-level splits -> token files + meta.json

def tokenize(docs: list[str], enc: tiktoken.Encoding, desc: str, batch_docs: int = 512) -> list[np.ndarray]:
    """Batched, multi-threaded tiktoken (its Rust core releases the GIL); one array per document,
    each starting with the end-of-text token so documents stay separable in the flat stream."""
    eot, out = enc.eot_token, []
    dtype = token_dtype(enc.n_vocab)
    for start in tqdm(range(0, len(docs), batch_docs), desc=f"tokenize {desc}", unit="batch", leave=False):
        for ids in enc.encode_ordinary_batch(docs[start:start + batch_docs], num_threads=os.cpu_count() or 1):
            out.append(np.array([eot] + ids, dtype=dtype))
    return out


def split_documents(docs: list[str], holdout_frac: float, seed: int, salt: str):
    """Deduplicate exact copies (they would straddle splits), then a seeded document-level split."""
    unique = list(dict.fromkeys(d for d in docs if d.strip()))
    rng = np.random.default_rng([seed, int.from_bytes(salt.encode()[:8], "little")])
    order = rng.permutation(len(unique))
    n_holdout = max(1, round(holdout_frac * len(unique))) if holdout_frac > 0 else 0
    held = [unique[i] for i in order[:n_holdout]]
    rest = [unique[i] for i in order[n_holdout:]]
    return rest, held


def take_budget(token_docs: list[np.ndarray], budget: int | None) -> list[np.ndarray]:
    """Keep documents (in their already shuffled order) until the token budget is reached."""
    if budget is None:
        return token_docs
    total = 0
    for i, doc in enumerate(token_docs):
        total += len(doc)
        if total >= budget:
            return token_docs[:i + 1]
    return token_docs


def prepare(out_dir: str, general: str, domain: str | None, tokenizer: str = "gpt2",
            val_frac: float = 0.01, test_frac: float = 0.05, domain_tokens: int | None = None,
            general_tokens: int | None = None, seed: int = 0) -> dict:
    t0 = time.time()
    enc = get_tokenizer(tokenizer)
    os.makedirs(out_dir, exist_ok=True)
    meta = {"tokenizer": tokenizer, "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "seed": seed,
            "val_frac": val_frac, "test_frac": test_frac, "domain_token_budget": domain_tokens,
            "general_token_budget": general_tokens, "sources": {"general": general, "domain": domain},
            "splits": {}}
    groups = [("general", general, val_frac, general_tokens, "general_val")]
    if domain:
        groups.append(("domain", domain, test_frac, domain_tokens, "domain_test"))
    for group, spec, holdout_frac, budget, holdout_name in groups:
        source = resolve_source(spec)
        docs = list(tqdm(source.documents(), desc=f"read {group} ({spec})", unit="doc", leave=False))
        train_docs, held_docs = split_documents(docs, holdout_frac, seed, group)
        if not train_docs or not held_docs:
            raise DataError(f"{group} source {spec!r} has {len(set(docs))} distinct documents: too few to "
                            f"split off a held-out set of {holdout_frac:.0%}; use more data or --test_frac")
        for name, split_docs, split_budget in ((f"{group}_train", train_docs, budget), (holdout_name, held_docs, None)):
            token_docs = take_budget(tokenize(split_docs, enc, name), split_budget)
            kept = split_docs[:len(token_docs)]
            tokens = np.concatenate(token_docs)
            path = os.path.join(out_dir, f"{name}.bin")
            write_tokens(path, tokens, enc.n_vocab)
            meta["splits"][name] = {
                "tokens": int(tokens.size), "documents": len(token_docs),
                "bytes": sum(len(d.encode("utf-8")) for d in kept),
                "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}
    meta["dataset_id"] = hashlib.sha256(json.dumps(
        [meta["tokenizer"]] + [meta["splits"][s]["sha256"] for s in sorted(meta["splits"])]).encode()).hexdigest()[:16]
    atomic_write(os.path.join(out_dir, "meta.json"), lambda f: json.dump(meta, f, indent=1), mode="w")
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
    its windows, so general data is never repeated until exhausted and domain repeats are exact.

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
        self._perm_cache = {}

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
        key = (kind, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            salt = 1 if kind == "domain" else 0
            self._perm_cache[key] = np.random.default_rng([self.seed, salt, epoch]).permutation(n)
        return int(self._perm_cache[key][i])

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
        ranks get disjoint windows and one process with accumulation sees exactly what N ranks see."""
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
    p.add_argument("--domain_tokens", type=int, default=None, help="subsample domain train to N tokens")
    p.add_argument("--general_tokens", type=int, default=None, help="cap general train at N tokens")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.list:
        for s in SOURCES.values():
            print(f"{s.name:14s} {s.kind:8s} {'online ' if s.online else ''}{s.description}")
        print(f"{'local:PATH':14s} {'any':8s} a folder or glob of .txt / .jsonl (text field) / .parquet")
        return
    out = args.out or (os.path.join(ROOT, "data", args.name) if args.name else DEFAULT_DATA_DIR)
    prepare(out, args.general, args.domain, args.tokenizer, args.val_frac, args.test_frac,
            args.domain_tokens, args.general_tokens, args.seed)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        sys.exit(f"data.py: {e}")
