"""Corpora: the named sources of documents that data.py prepares, and the readers behind them.

`python data.py --list` prints the sources. Three kinds:
- registry sources (offline): real text that machines without internet can still fetch, because it
  ships inside packages of PyPI or Debian's archive (Wikipedia articles in gensim's test data, Jane
  Austen in an R package, the King James Bible, ABC folk tunes in music21, molecules in molsets...).
  Each needs a small reader for the format its package keeps it in: an R serialisation reader, a Unix
  `compress` (LZW) decoder, a Bible-format parser, a MediaWiki markup stripper.
- local files: `local:PATH`, a folder or glob of .txt (a document per file), .jsonl (a `text` field
  per line) or .parquet (a `text` column).
- hosted datasets (online): the paper's corpora, one hosted file at a time, read with `datasets`.

A source is cut into *units*: independent pieces of work, in reading order (a package's texts, a
group of files or a 16 MiB byte range of one, a hosted file). data.py tokenizes units in parallel
worker processes, each unit into its own file, so a unit is also what a killed preparation redoes.
A unit is a tuple of plain values, (reader, arguments...): it travels to a worker process as it is,
and names its work on disk.

None of this is the lesson of data.py (token files and the Mixture are); it lives here so that data.py
reads top to bottom. Nothing here imports the rest of the project.
"""
import bz2
import csv
import functools
import glob
import gzip
import hashlib
import html
import io
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from tqdm import tqdm

CACHE_DIR = os.environ.get("SPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "spt"))
UNIT_BYTES = 16 << 20  # local text per unit: small enough to share out evenly, large enough to amortize a task


class DataError(Exception):
    """Bad input: the message is one line that says what to do. (data.py raises it too, as data.DataError.)"""


class NotOffered(DataError):
    """apt on this machine offers no package of the name a registry source reads (a mix goes on without it)."""


# ---------------------------------------------------------------------------------------------
# Sources and units. Registry sources download their package from PyPI or Debian's archive into
# CACHE_DIR the first time and read it from there after.
#
# What counts as one document matters: documents are the unit of the train/test split, so a held-out
# document should not have a near-copy in training. The sources below cut their corpus into natural
# units (a tune, a chapter, a source file, a section) and say so in their docstrings.

@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # what it is usually used as: "general" or "domain" (informational, for --list)
    description: str
    units: Callable[..., list[tuple]]  # online sources take a keyword argument budget_tokens
    online: bool = False

    def plan(self, budget_tokens: int | None = None) -> list[tuple]:
        """The units, in reading order. Offline sources are read whole (prepare applies budgets after
        the split). Online sources list their hosted files, of which prepare reads only as many as the
        budget needs, and refuse to start without one: "all of the web" is not a plan."""
        if not self.online:
            return self.units()
        if budget_tokens is None:
            raise DataError(f"online source {self.name!r} is read only as far as a token budget needs: give it "
                            f"one (--general_tokens / --domain_tokens)")
        return self.units(budget_tokens=budget_tokens)

    def documents(self, budget_tokens: int | None = None) -> Iterator[str]:
        """Every document, unit after unit, in this process."""
        for unit in self.plan(budget_tokens):
            yield from read_unit(unit)


def read_unit(unit: tuple) -> Iterator[str]:
    """The documents of one unit (what a worker process of data.py calls)."""
    reader, *args = unit
    return READERS[reader](*args)


def local_units(pattern: str) -> list[tuple]:
    """A folder or glob of .txt, .jsonl and .parquet files, as units: runs of .txt files and byte
    ranges of .jsonl files of about UNIT_BYTES, a .parquet file each. Each unit carries the size and
    modification time of its files, so that an edited file is tokenized again, not taken from an
    earlier, interrupted preparation."""
    paths = sorted(glob.glob(os.path.join(pattern, "**", "*"), recursive=True)) if os.path.isdir(pattern) \
        else sorted(glob.glob(pattern, recursive=True))
    paths = [p for p in paths if p.endswith((".txt", ".jsonl", ".parquet")) and os.path.isfile(p)]
    if not paths:
        raise DataError(f"local source {pattern!r} matches no .txt, .jsonl or .parquet file")
    units, texts, text_bytes = [], [], 0
    for path in paths:
        size, stamp = os.path.getsize(path), f"{os.path.getsize(path)}:{os.stat(path).st_mtime_ns}"
        if path.endswith(".txt"):
            texts.append((path, stamp))
            text_bytes += size
        if texts and (text_bytes >= UNIT_BYTES or not path.endswith(".txt")):
            units.append(("txt", tuple(texts)))
            texts, text_bytes = [], 0
        if path.endswith(".jsonl"):
            units += [("jsonl", path, start, min(start + UNIT_BYTES, size), stamp)
                      for start in range(0, max(size, 1), UNIT_BYTES)]
        elif path.endswith(".parquet"):
            units.append(("parquet", path, stamp))
    return units + ([("txt", tuple(texts))] if texts else [])


NOT_TEXT = re.compile("[\udc80-\udcff\x00]")  # bytes that are not UTF-8 (as surrogate escapes), and NUL


def decode_local(raw: bytes, tally: list[int]) -> str:
    """UTF-8 text of a local file. Bytes that are not UTF-8 become U+FFFD (scraped text is messy); the
    count of those (and of NUL bytes, which text does not hold) is added to tally = [bad, total]."""
    tally[1] += len(raw)
    return decode_checked(raw, tally)


def decode_checked(raw: bytes, tally: list[int]) -> str:
    try:
        text = raw.decode("utf-8")
        if "\x00" not in text:
            return text
    except UnicodeDecodeError:
        pass
    tally[0] += len(NOT_TEXT.findall(raw.decode("utf-8", errors="surrogateescape")))
    return raw.decode("utf-8", errors="replace")


def check_text(where: str, tally: list[int]):
    """Say how much of a unit was not text; refuse it when a quarter or more was (random bytes are half
    invalid UTF-8; UTF-16 text is half NUL bytes)."""
    bad, total = tally
    if bad * 4 >= total > 0:
        raise DataError(f"{where}: {bad:,} of its {total:,} bytes are not UTF-8 text: convert it to UTF-8 "
                        f"(e.g. with iconv) or leave it out")
    if bad:
        tqdm.write(f"warning: {where}: {bad:,} bytes ({bad / total:.2%}) are not UTF-8 text and became U+FFFD",
                   file=sys.stderr)


def txt_documents(files: tuple) -> Iterator[str]:
    for path, _stamp in files:
        tally = [0, 0]
        with open(path, "rb") as f:
            yield decode_local(f.read(), tally)
        check_text(path, tally)


def jsonl_documents(path: str, start: int, end: int, _stamp: str) -> Iterator[str]:
    """The documents of the lines that start in bytes [start, end) of a JSON-lines file."""
    tally = [0, 0]
    with open(path, "rb") as f:
        f.seek(max(start - 1, 0))
        if start:
            f.readline()  # the line holding byte start - 1 belongs to the unit before
        position = f.tell()
        while position < end and (line := f.readline()):
            position += len(line)
            if not line.strip():
                continue
            tally[1] += len(line)
            try:
                try:
                    text = json.loads(line)["text"]  # bytes: json decodes them, at no extra pass when all is UTF-8
                except UnicodeDecodeError:
                    text = json.loads(decode_checked(line, tally))["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{line_number(path, position - len(line))}: expected a JSON object "
                                f"with a 'text' field")
            yield text_field(text, lambda: f"{path}:{line_number(path, position - len(line))}")
    check_text(f"{path} (bytes {start:,}-{end:,})" if start or end < os.path.getsize(path) else path, tally)


def line_number(path: str, offset: int) -> int:
    """The line at byte `offset` (counted only for an error message)."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def parquet_documents(path: str, _stamp: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # optional dependency, only for parquet input
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow")
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
        yield from (text_field(text, lambda: f"{path} (column 'text')") for text in batch.column(0).to_pylist())


def text_field(value, where: Callable[[], str]) -> str:
    """A document's text; a missing one (null) is an empty document, which prepare skips. `where` says
    where it came from, for the error (a function: finding a line number takes a while)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where()}: 'text' is a {type(value).__name__}, not a string")
    return value


# --- Fetching from the registries. Nothing is installed: a wheel is a zip file and a .deb unpacks
# with dpkg-deb, so we read the data files straight out of the packages.

def run_command(cmd: list[str], what: str, cwd: str | None = None) -> str:
    """Run `cmd` with its output captured (noise when all goes well). A failure becomes one DataError
    line saying what we were doing, the command, and the last line the command printed."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"{what}: `{cmd[0]}` is not installed (registry sources need pip, and Debian's apt-get, "
                        f"apt-cache and dpkg-deb): bring your own text with local:PATH, or read FineWeb online "
                        f"with fineweb (README, Set-up)")
    if done.returncode:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise DataError(f"{what} failed: `{' '.join(cmd)}`: {said}")
    return done.stdout


# What a dataset was made of: every package a reader opens is recorded here (registry, name, exact
# version, sha256 of the file), and data.py keeps the records of each unit's reading in meta.json.
FETCHED: dict[str, dict] = {}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pypi_wheel(spec: str, *pip_args: str) -> zipfile.ZipFile:
    """The wheel of `NAME==VERSION`, fetched once into CACHE_DIR/pypi with `pip download --no-deps`.
    `pip_args` can pin which build of a compiled package to fetch (--platform ...), so that every
    machine reads the same file whatever its own Python."""
    name, version = spec.split("==")
    folder = os.path.join(CACHE_DIR, "pypi")
    pattern = os.path.join(folder, f"{name.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        tqdm.write(f"downloading {spec} from PyPI into {folder} (once)")  # above any progress bar
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     "--disable-pip-version-check", "-d", folder, spec, *pip_args], f"downloading {spec} from PyPI")
    found = glob.glob(pattern)
    if not found:
        raise DataError(f"pip download {spec} left no {os.path.basename(pattern)} in {folder}")
    FETCHED[f"pypi:{name}"] = {"registry": "pypi", "package": name, "version": version,
                               "file": os.path.basename(found[0]), "sha256": file_sha256(found[0])}
    return zipfile.ZipFile(found[0])


@functools.cache
def apt_get_update() -> str | None:
    """Once per process: a fresh machine often has no package lists, and apt then offers nothing.
    Returns None if it worked, else why not (one line)."""
    tqdm.write("fetching Debian's package lists with `apt-get update` (once)")
    try:
        run_command(["apt-get", "update"], "apt-get update (it needs root: run `sudo apt-get update` once)")
    except DataError as e:
        return str(e)


def apt_search(pattern: str) -> list[str]:
    """The names of the packages apt offers here whose whole name matches `pattern`, a regular
    expression that apt (POSIX: [0-9], not \\d) and Python read alike."""
    listed = run_command(["apt-cache", "search", "--names-only", f"^({pattern})$"], f"apt-cache search {pattern}")
    return [name for name, _, _ in (line.partition(" - ") for line in listed.splitlines()) if re.fullmatch(pattern, name)]


def apt_depends(name: str) -> list[str]:
    """The packages that package `name` depends on, as apt-cache lists them."""
    listed = run_command(["apt-cache", "depends", name], f"apt-cache depends {name}")
    return re.findall(r"^\s*\|?Depends: <?([^\s>]+)", listed, flags=re.M)


@functools.cache
def offered_package(name: str, versioned: str | None = None) -> str:
    """The Debian package a source reads, if apt offers it on this machine: `name` itself or, given a
    pattern `versioned`, the package of that pattern which the metapackage `name` depends on. python3-doc
    and linux-doc stand for the release's own Python and kernel: on Debian 12 they depend on
    python3.11-doc and linux-doc-6.1, on Debian 13 on python3.13-doc and linux-doc-6.12. (Debian 12's
    security archive also offers linux-doc-6.12, a newer kernel's, which would change the default
    dataset within the release; the release's own keeps it stable.) Ubuntu's linux-doc depends on no
    linux-doc-X.Y: NotOffered, and the English mix goes on without kernel docs."""
    found = apt_search(name)
    if not found and apt_get_update() is None:  # (a machine without package lists offers nothing)
        found = apt_search(name)
    if not found:
        raise NotOffered(f"apt offers no package {name} on this machine")
    if versioned is None:
        return name
    depends = [package for package in apt_depends(name) if re.fullmatch(versioned, package)]
    if not depends:
        raise NotOffered(f"{name} depends on no package named like {versioned} on this machine")
    return depends[0]


def debian_package(name: str) -> str:
    """The files of Debian package `name`, unpacked once into CACHE_DIR/debian/<name>/ by
    `apt-get download` and `dpkg-deb -x`, with <name>.json beside it saying which version that was.
    The version is not pinned: Debian replaces a package with each security update and removes the
    old file, and the texts we read do not change in substance; meta.json records what was read."""
    folder = os.path.join(CACHE_DIR, "debian")
    target, record = os.path.join(folder, name), os.path.join(folder, f"{name}.json")
    if not (os.path.isdir(target) and os.path.isfile(record)):  # (a folder without its record: fetched again)
        fetch_debian(name, folder)
    with open(record) as f:
        FETCHED[f"debian:{name}"] = json.load(f)
    return target


def fetch_debian(name: str, folder: str):
    """Download a package, unpack it aside and rename it into place, then write its record: a kill, a
    failed download or a .deb cut short leave no half package (and no .deb) behind."""
    os.makedirs(folder, exist_ok=True)
    tqdm.write(f"downloading Debian package {name} into {folder} (once)")
    download = ["apt-get", "download", name]
    try:
        run_command(download, f"apt-get download {name}", cwd=folder)
    except DataError:
        if failure := apt_get_update():
            raise DataError(failure) from None
        run_command(download, f"apt-get download {name}", cwd=folder)
    deb = max(glob.glob(os.path.join(folder, f"{name}_*.deb")), key=os.path.getmtime)
    target, tmp = os.path.join(folder, name), os.path.join(folder, f"{name}.tmp{os.getpid()}")
    try:
        version = run_command(["dpkg-deb", "--field", deb, "Version"], f"reading {deb}").strip()
        run_command(["dpkg-deb", "-x", deb, tmp], f"unpacking {deb} (cut short? it is removed: run again)")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        record = {"registry": "debian", "package": name, "version": version, "sha256": file_sha256(deb)}
        with open(os.path.join(folder, f"{name}.json.tmp"), "w") as f:
            json.dump(record, f)
        os.replace(os.path.join(folder, f"{name}.json.tmp"), os.path.join(folder, f"{name}.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.remove(deb)


def decode(data: bytes) -> str:
    """UTF-8, or Latin-1 for the older files in these packages (Latin-1 decodes any byte string)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def package_files(package: str, pattern: str, skip: str | None = None) -> list[str]:
    """Paths in Debian `package` matching the glob `pattern`, sorted, minus those matching regex `skip`."""
    root = debian_package(package)
    paths = [p for p in sorted(glob.glob(os.path.join(root, pattern), recursive=True))
             if not (skip and re.search(skip, p)) and os.path.isfile(p)]
    if not paths:
        raise DataError(f"Debian package {package} has no file matching {pattern} in {root}: its layout changed")
    return paths


def file_documents(package: str, pattern: str, skip: str | None = None) -> Iterator[str]:
    """One document per file: the natural unit for documentation pages and proof-assistant sources."""
    for path in package_files(package, pattern, skip):
        with open(path, "rb") as f:
            yield decode(f.read())


# --- Wikipedia: 106 articles that gensim ships for its tests, as a MediaWiki XML export.

GENSIM = "gensim==4.4.0"
# gensim is compiled: pin one build so every machine reads the same wheel (the data file is in all).
GENSIM_BUILD = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")
WIKI_FILE = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wiki_documents() -> Iterator[str]:
    """English Wikipedia articles from the gensim wheel, one document per article, markup stripped."""
    yield from mediawiki_articles(bz2.decompress(pypi_wheel(GENSIM, *GENSIM_BUILD).read(WIKI_FILE)))


def mediawiki_articles(xml: bytes) -> Iterator[str]:
    """Title and plain text of each article (namespace 0, not a redirect) in a MediaWiki XML export.
    iterparse + clear() keeps memory flat however large the export."""
    for _, page in ET.iterparse(io.BytesIO(xml)):
        if not page.tag.endswith("}page"):
            continue
        if page.findtext("{*}ns") == "0" and page.find("{*}redirect") is None:
            yield f"{page.findtext('{*}title')}\n\n{wikitext_to_text(page.findtext('{*}revision/{*}text') or '')}"
        page.clear()


def remove_nested(text: str, innermost: str) -> str:
    """Delete spans matched by regex `innermost` until none are left. Templates {{...}} and tables
    {|...|} nest, which no single regular expression can match; peeling the innermost layer
    repeatedly removes them all."""
    count = 1
    while count:
        text, count = re.subn(innermost, "", text)
    return text


def wikitext_to_text(text: str) -> str:
    """Approximate plain text from MediaWiki markup: drop comments, references, templates (infoboxes,
    citations), tables and file/category links; keep link labels, headings and paragraphs."""
    text = re.sub(r"<!--.*?-->|<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = remove_nested(text, r"\{\{[^{}]*\}\}")
    text = remove_nested(text, r"\{\|(?:(?!\{\|)[\s\S])*?\|\}")
    media = r"(?:File|Image|Category):"  # pictures and category tags: no text worth keeping
    text = re.sub(rf"\[\[(?!{media})(?:[^|\[\]]*\|)?([^|\[\]]*)\]\]", r"\1", text)  # [[target|label]] -> label
    text = remove_nested(text, rf"\[\[{media}[^\[\]]*\]\]")
    text = re.sub(r"\[https?://[^\s\]]+ ?([^\]]*)\]", r"\1", text)  # [url label] -> label
    text = re.sub(r"'{2,}", "", text)  # ''italic'', '''bold'''
    text = re.sub(r"^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", r"\2", text, flags=re.M)  # == Heading == -> Heading
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- Jane Austen: the R package janeaustenr keeps each novel as a character vector (one element per
# line of the Project Gutenberg text) in an R lazy-load database. A small reader of R's serialization
# format gets them out without R.

AUSTEN_DB = "usr/lib/R/site-library/janeaustenr/data/Rdata"


def austen_documents(package: str) -> Iterator[str]:
    """Jane Austen's six novels (Debian r-cran-janeaustenr), one document per chapter."""
    for lines in r_lazyload(os.path.join(debian_package(package), AUSTEN_DB)).values():
        yield from novel_chapters(lines)


def novel_chapters(lines: list[str | None]) -> Iterator[str]:
    """Cut a novel's lines at its "CHAPTER ..." / "Chapter ..." headings, and unwrap each paragraph
    onto one line (the Gutenberg text is hard-wrapped at ~70 columns; web text is not). The title
    page stays with the first chapter."""
    lines = [line or "" for line in lines]  # an NA line (None) is a blank line
    starts = [i for i, line in enumerate(lines) if re.match(r"(CHAPTER|Chapter) ", line)][1:]
    for start, end in zip([0] + starts, starts + [len(lines)]):
        paragraphs = "\n".join(lines[start:end]).split("\n\n")
        yield "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def r_lazyload(prefix: str) -> dict:
    """Every object of an R lazy-load database, the files prefix.rdx and prefix.rdb in which R
    packages keep their data. The .rdx is one gzip'd serialized R list: $variables maps each object's
    name to its (offset, length) in the .rdb, $compressed says how records are compressed. An .rdb
    record is a 4-byte big-endian length and then zlib data (compressed = TRUE; R's bzip2/xz variants
    are not needed here) holding one serialized object."""
    with gzip.open(prefix + ".rdx") as f:
        index = r_unserialize(f.read())
    if index["compressed"] != [1]:
        raise DataError(f"{prefix}.rdb: records compressed with method {index['compressed']}, only zlib is supported")
    with open(prefix + ".rdb", "rb") as f:
        rdb = f.read()
    return {name: r_unserialize(zlib.decompress(rdb[offset + 4:offset + length]))
            for name, (offset, length) in index["variables"].items()}


# R's serialization (XDR = big-endian): a header, then each object as a 4-byte flags word whose low
# byte is the type (R's SEXPTYPE) and bits 9 and 10 say an attribute list and a tag follow, then its
# contents. These are the types a package's data vectors need:
R_SYMBOL, R_PAIRLIST, R_CHAR, R_LOGICAL, R_INTEGER, R_REAL, R_STRING, R_LIST = 1, 2, 9, 10, 13, 14, 16, 19
R_REF, R_NULL = 255, 254  # a back-reference to an earlier symbol; NULL
R_HAS_ATTR, R_HAS_TAG, R_LATIN1 = 1 << 9, 1 << 10, 4 << 12  # R_LATIN1: a CHARSXP's encoding bit


def r_unserialize(data: bytes):
    """Decode one R object serialized in XDR format (what saveRDS and lazy-load databases write).
    Vectors become lists, vectors with a names attribute become dicts, pairlists become dicts keyed by
    their tags, strings become str (NA becomes None)."""
    if data[:2] != b"X\n":
        raise DataError(f"not an R object in XDR format (starts with {data[:2]!r})")
    pos, symbols = 2, []

    def numbers(n, kind="i"):  # n big-endian int32 ("i") or float64 ("d")
        nonlocal pos
        values = struct.unpack_from(f">{n}{kind}", data, pos)
        pos += n * struct.calcsize(kind)
        return list(values)

    def item():
        nonlocal pos
        flags = numbers(1)[0]
        kind = flags & 0xFF
        if kind == R_NULL:
            return None
        if kind == R_REF:  # the reference number sits in the upper bits, or in the next word if too big
            return symbols[(flags >> 8 or numbers(1)[0]) - 1]
        if kind == R_SYMBOL:
            symbols.append(item())
            return symbols[-1]
        if kind == R_CHAR:
            n = numbers(1)[0]
            if n == -1:
                return None
            pos += n
            return data[pos - n:pos].decode("latin-1" if flags & R_LATIN1 else "utf-8")
        if kind == R_PAIRLIST:
            if flags & R_HAS_ATTR:
                item()
            tag = item() if flags & R_HAS_TAG else None
            value = item()
            return {tag: value, **(item() or {})}
        if kind in (R_LOGICAL, R_INTEGER, R_REAL):
            value = numbers(numbers(1)[0], "d" if kind == R_REAL else "i")
        elif kind in (R_STRING, R_LIST):
            value = [item() for _ in range(numbers(1)[0])]
        else:
            raise DataError(f"R object type {kind} is not supported by this small reader")
        if flags & R_HAS_ATTR:
            names = item().get("names")
            if names is not None:
                value = dict(zip(names, value))
        return value

    version = numbers(3)[0]  # format version, writer's R version, oldest R that can read it
    if version == 3:
        length = numbers(1)[0]  # then the writer's native encoding, e.g. "UTF-8", which we skip
        pos += length
    return item()


# --- The King James Bible, as Chip Chapin's Bible Retrieval System stores it (Debian bible-kjv-text):
# the text compressed in 64 KiB windows by Unix `compress` (LZW), restarted at each window so any verse
# can be found without decompressing what precedes it. The package's `bible` program reads it; a
# pure-Python LZW decoder does too, in under a second, on any machine.

BIBLE_BOOKS = [book.replace("_", " ") for book in (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1_Samuel 2_Samuel 1_Kings 2_Kings "
    "1_Chronicles 2_Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes Song_of_Solomon Isaiah "
    "Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai "
    "Zechariah Malachi Matthew Mark Luke John Acts Romans 1_Corinthians 2_Corinthians Galatians Ephesians "
    "Philippians Colossians 1_Thessalonians 2_Thessalonians 1_Timothy 2_Timothy Titus Philemon Hebrews James "
    "1_Peter 2_Peter 1_John 2_John 3_John Jude Revelation").split()]


def bible_documents(package: str) -> Iterator[str]:
    """The King James Bible, one document per chapter: a "Genesis 1" heading, then one verse per line
    with its number. The data file abbreviates books ("Ge1:1 In the beginning..."); they come in canonical
    order, so the n-th abbreviation met is the n-th book."""
    with open(os.path.join(debian_package(package), "usr/lib/bible.data"), "rb") as f:
        lines = brs_text(f.read()).decode("latin-1").splitlines()
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        verse = re.match(r"(\w+?)(\d+):(\d+) (.*)", line)
        if verse:  # the first line is the file's title, not a verse
            book, chapter, number, text = verse.groups()
            chapters.setdefault((book, chapter), []).append(f"{number} {text}")
    names = dict(zip(dict.fromkeys(book for book, _ in chapters), BIBLE_BOOKS))
    if len(names) != len(BIBLE_BOOKS):
        raise DataError(f"bible.data holds {len(names)} books, expected {len(BIBLE_BOOKS)}: its format changed")
    for (book, chapter), verses in chapters.items():
        yield f"{names[book]} {chapter}\n\n" + "\n".join(verses)


def brs_text(data: bytes) -> bytes:
    """The text of a Bible Retrieval System data file: the magic "EC02" and a description, then from
    byte 84 big-endian uint32s: the window size, the window count n, and n + 1 offsets. Window i is
    the LZW code stream data[offset[i]:offset[i+1]]; the one `compress` header (3 bytes) that all
    windows share sits just before the first."""
    if data[:4] != b"EC02":
        raise DataError("bible.data is not a Bible Retrieval System file (magic EC02)")
    count = struct.unpack_from(">I", data, 88)[0]
    offsets = struct.unpack_from(f">{count + 1}I", data, 92)
    if offsets[-1] != len(data):
        raise DataError("bible.data: the window table does not end at the end of the file")
    header = data[offsets[0] - 3:offsets[0]]
    return b"".join(unlzw(header + data[start:end]) for start, end in zip(offsets, offsets[1:]))


def unlzw(data: bytes) -> bytes:
    """Decompress Unix `compress` (.Z) data: LZW with codes of 9 bits growing to maxbits (at most 16),
    packed little-endian. One quirk of the original program matters: it reads codes in groups of
    eight (n_bits bytes), and when the code width grows, or the table is cleared (code 256 in block
    mode), it skips the rest of the current group."""
    if data[:2] != b"\x1f\x9d":
        raise DataError("not compress (.Z) data")
    maxbits, block_mode = data[2] & 0x1F, data[2] & 0x80
    first_free = 257 if block_mode else 256
    table = [bytes([i]) for i in range(256)] + [b""] * (first_free - 256)
    n_bits, pos, group_start, end = 9, 24, 24, len(data) * 8
    out, previous = [], b""
    while pos + n_bits <= end:
        if len(table) >= 1 << n_bits and n_bits < maxbits:  # the next code no longer fits: widen
            pos = group_start = pos + (group_start - pos) % (n_bits * 8)
            n_bits += 1
            continue
        byte = pos >> 3
        code = (int.from_bytes(data[byte:byte + 3], "little") >> (pos & 7)) & ((1 << n_bits) - 1)
        pos += n_bits
        if block_mode and code == 256:  # CLEAR: start a fresh table with 9-bit codes
            pos = group_start = pos + (group_start - pos) % (n_bits * 8)
            del table[first_free:]
            n_bits, previous = 9, b""
            continue
        if code < len(table):
            entry = table[code]
        elif code == len(table) and previous:  # the code being defined right now: previous + its 1st byte
            entry = previous + previous[:1]
        else:
            raise DataError(f"corrupt compress data: code {code} with a table of {len(table)}")
        if previous and len(table) < 1 << maxbits:
            table.append(previous + entry[:1])
        out.append(entry)
        previous = entry
    return b"".join(out)


# --- Small text collections.

def fortune_documents(package: str) -> Iterator[str]:
    """Debian's fortune cookies (not the offensive set), one document per fortune: the files separate
    them with lines holding only "%". The .dat files are indexes and the .u8 files links to the same
    texts. Some fortunes use teletype overstriking ("_\\bx" for underlined x), which is removed."""
    for path in package_files(package, "usr/share/games/fortunes/*", skip=r"\.(dat|u8)$"):
        with open(path, "rb") as f:
            text = re.sub(r".\x08", "", decode(f.read()))
        yield from (fortune.strip() for fortune in re.split(r"\n%\n", "\n" + text) if fortune.strip())


# --- Music in ABC notation and in Humdrum **kern, from the music21 wheel's corpus.

MUSIC21 = "music21==10.5.1"


def wheel_files(spec: str, suffix: str) -> Iterator[tuple[str, str]]:
    """(path, text) of each file in a wheel whose name ends with `suffix`, in sorted order."""
    wheel = pypi_wheel(spec)
    for name in sorted(n for n in wheel.namelist() if n.endswith(suffix)):
        yield name, decode(wheel.read(name))


def abc_documents() -> Iterator[str]:
    """12,978 folk tunes in ABC notation (Essen, O'Neill's, Aird's, Ryan's Mammoth collections), one
    tune per document, like the IrishMAN part of MusicPile."""
    for _, text in wheel_files(MUSIC21, ".abc"):
        yield from abc_tunes(text)


def abc_tunes(text: str) -> Iterator[str]:
    """Split an ABC file into tunes. A tune starts at a line beginning with "X:" (its reference
    number) and runs to the next one, so its header lines (T: title, M: metre, L: unit note length,
    K: key...) stay with it and every document is a complete, playable tune. The text before the
    first X: (in music21's corpus, only % comments about the collection) is dropped."""
    starts = [m.start() for m in re.finditer(r"^X:", text, flags=re.M)]
    for start, end in zip(starts, starts[1:] + [len(text)]):
        yield text[start:end].strip()


def kern_documents() -> Iterator[str]:
    """1,327 scores in Humdrum **kern (mostly Palestrina masses, some Bach and Beethoven), one score
    per document: a tab-separated grid of spines, one per voice."""
    for _, text in wheel_files(MUSIC21, ".krn"):
        yield text


# --- Chemistry: SMILES strings of drug-like molecules (ZINC, as curated by the MOSES benchmark).

MOLSETS = "molsets==0.3.1"  # we never install it (its dependencies do not build on recent Pythons)
MOSES_FILES = ("train", "test", "test_scaffolds")
MOLECULES_PER_DOCUMENT = 32


def smiles_documents() -> Iterator[str]:
    """1.9M molecules from molsets' MOSES splits, 32 per document, one SMILES per line. One molecule
    (~30 GPT-2 tokens) per document would spend a good share of the tokens on end-of-text markers;
    32 make documents of ~1000 tokens while leaving ~60,000 documents for a fine-grained split. MOSES's
    own train/test split is ignored: prepare() makes ours."""
    wheel = pypi_wheel(MOLSETS)
    for name in MOSES_FILES:
        yield from group_lines(csv_smiles(wheel.read(f"moses/dataset/data/{name}.csv.gz")), MOLECULES_PER_DOCUMENT)


def csv_smiles(csv_gz: bytes) -> Iterator[str]:
    """The SMILES column of a gzip'd CSV whose header names it."""
    rows = csv.reader(io.StringIO(gzip.decompress(csv_gz).decode("utf-8")))
    column = next(rows).index("SMILES")
    return (row[column] for row in rows)


def group_lines(lines: Iterator[str], size: int) -> Iterator[str]:
    """Documents of `size` lines each (the last one may be shorter)."""
    lines = iter(lines)
    while group := list(itertools.islice(lines, size)):
        yield "\n".join(group)


# --- Formal mathematics: Metamath's set.mm, HOL Light, the Coq standard library.

METAMATH_COMPRESSED_PROOF = re.compile(r"\$=\s+\(.*?\$\.", re.S)
# A section header is a comment opening with a rule line: #### (part), #*#* (chapter), =-=- (section), -.-. (subsection)
METAMATH_SECTION = re.compile(r"^(?=\$\(\n[ \t]*(?:#{5,}|(?:#\*){5,}|(?:=-){5,}|(?:-\.){5,}))", re.M)


def metamath_documents(package: str) -> Iterator[str]:
    """set.mm, the Metamath database of ZFC set theory (Debian metamath-databases), cut into sections."""
    with open(os.path.join(debian_package(package), "usr/share/metamath/databases/set.mm"), "rb") as f:
        yield from metamath_sections(decode(f.read()))


def metamath_sections(text: str) -> Iterator[str]:
    """One document per section of a Metamath database (~1,500 in set.mm), each starting with its
    header comment. Compressed proofs ("$= ( labels ) ABCXYZ... $.") are base-26 blobs that only a
    proof checker can read, and more than half of set.mm's bytes; each becomes "$= ? $.", Metamath's
    own notation for a proof still to be written. Statements, comments (the prose explaining each
    theorem) and the rare uncompressed proofs are kept."""
    text = METAMATH_COMPRESSED_PROOF.sub("$= ? $.", text)
    yield from (section for section in METAMATH_SECTION.split(text) if section.strip())


def metamath_statements(package: str) -> Iterator[str]:
    """set.mm cut finer: one axiom, definition or theorem per document, with its comment and hypotheses
    (~45,000 of a few hundred bytes each, like the folk tunes): a small domain set of this source is
    then many independent samples of formal mathematics, not a handful of whole sections."""
    for section in metamath_documents(package):
        yield from statements_of(section)


def statements_of(section: str) -> Iterator[str]:
    """set.mm separates its statements by blank lines; blocks without an $a or $p statement (section
    headers, prose) are left out."""
    for block in re.split(r"\n[ \t]*\n", section):
        if re.search(r"\$[ap]\s", block):
            yield block.strip("\n")


# --- Online: the paper's own corpora, from the Hugging Face hub. A hosted dataset is a set of files
# (parquet or JSON lines); each is a unit, read by a worker with `datasets`' streaming reader, so the
# files download in parallel, and a network failure costs one file, not the run.

# ChemPile-Education is split into configs (e.g. LibreText_Chemistry-default: textbooks) with a `text`
# column (if one lacks it, the reader names the fields it has); rather than pin a list that may grow,
# we ask the hub for the configs and interleave their files.
ALL_CONFIGS = "*"
# Proof-Pile's loading script does not run on datasets >= 4: read its JSON-lines shards directly.
PROOF_PILE_FILES = "hf://datasets/hoskinson-center/proof-pile/train/proofpile_train_*.jsonl.gz"
# FineWeb's random samples, and the whole crawl, with their sizes in GPT-2 tokens.
FINEWEB_CONFIGS = (("sample-10BT", 10e9), ("sample-100BT", 100e9), ("sample-350BT", 350e9), ("default", 15e12))
FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text", ".csv": "csv"}


def import_datasets(what: str):
    try:
        import datasets  # optional: only online sources need it
    except ImportError:
        raise DataError(f"{what} needs the `datasets` package: pip install datasets")
    return datasets


def hf_units(path: str, config: str | None = None, *, budget_tokens: int, field: str = "text",
             data_files: str | None = None, split: str = "train") -> list[tuple]:
    """The files of a hosted dataset's split, one unit each. `config=ALL_CONFIGS` takes every config of
    a dataset made of several. The files are interleaved across configs and folders (FineWeb keeps one
    crawl per folder), so that the first n units, which is what prepare reads for a budget, sample all
    of them. `path` can also be a builder such as "json" with `data_files` (local files, or hub files
    as hf://datasets/OWNER/NAME/GLOB when a dataset's loading script no longer runs)."""
    datasets = import_datasets(f"online source {path}")
    try:
        configs = datasets.get_dataset_config_names(path) if config == ALL_CONFIGS else [config]
        folders: dict[str, list[str]] = {}
        for c in configs:
            files = datasets.load_dataset_builder(path, c, data_files=data_files).config.data_files.get(split, [])
            for file in files:
                folders.setdefault(f"{c}/{os.path.dirname(file)}", []).append(str(file))
    except Exception as e:  # network, authentication, unknown dataset or config: one line that says so
        raise DataError(f"listing the files of {path} ({config or 'default config'}) failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}")
    if not folders:
        raise DataError(f"{path} ({config or 'default config'}) has no files for split {split!r}")
    return [("hosted", file, field) for file in round_robin([iter(files) for files in folders.values()])]


def hosted_documents(url: str, field: str) -> Iterator[str]:
    """The `field` of every row of one hosted (or local) parquet, JSON-lines, text or CSV file."""
    datasets = import_datasets(f"reading {url}")
    name = re.sub(r"\.(gz|bz2|xz|zst)$", "", url)
    builder = FORMATS.get(os.path.splitext(name)[1])
    if builder is None:
        raise DataError(f"{url}: not a file type a hosted dataset is read from ({', '.join(FORMATS)})")
    try:
        for row in datasets.load_dataset(builder, data_files=[url], split="train", streaming=True):
            if field not in row:
                raise DataError(f"{url}: rows have no {field!r} field, only {sorted(row)}")
            yield text_field(row[field], lambda: url)
    except DataError:
        raise
    except Exception as e:  # a network failure: this file is redone on the next run, the finished ones kept
        raise DataError(f"reading {url} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}: "
                        f"run the same command again to continue")


def fineweb_units(budget_tokens: int) -> list[tuple]:
    """FineWeb's smallest configuration that holds the budget with a 10% margin (for duplicates and the
    held-out share), so that the files read are a random sample of the crawl, not its first months."""
    for config, size in FINEWEB_CONFIGS:
        if budget_tokens * 1.1 <= size:
            return hf_units("HuggingFaceFW/fineweb", config, budget_tokens=budget_tokens)
    raise DataError(f"FineWeb holds about 15T tokens, less than the {budget_tokens:,.0f} asked for: lower the budget")


def round_robin(iterators: list[Iterator]) -> Iterator:
    """One item from each iterator in turn, dropping those that run out."""
    while iterators:
        for it in list(iterators):
            try:
                yield next(it)
            except StopIteration:
                iterators.remove(it)


# --- The registry.

GENERATORS: dict[str, Callable[..., Iterator[str]]] = {}  # registry name -> its documents


def registry(name: str, kind: str, description: str, documents: Callable[..., Iterator[str]],
             debian: str | None = None, versioned: str | None = None) -> Source:
    """A registry source is one unit: its package is small and its reader runs in one process. A source
    in Debian's archive names its package, or the metapackage that picks it on each release (python3-doc
    for python3.N-doc): its unit carries the package that apt offers on this machine (offered_package),
    which the reader is given."""
    GENERATORS[name] = documents
    if debian is None:
        return Source(name, kind, description, lambda: [("registry", name)])
    return Source(name, kind, description, lambda: [("registry", name, offered_package(debian, versioned))])


def mix(name: str, kind: str, description: str, parts: tuple[str, ...]) -> Source:
    """Several registry sources, a unit each. A part whose package this machine's apt does not offer
    (no kernel docs on Ubuntu) becomes a unit that reads nothing and says why: prepare warns, with the
    tokens the mix holds without it, and meta.json lists it as missing."""
    def units() -> list[tuple]:
        planned = []
        for part in parts:
            try:
                planned += SOURCES[part].plan()
            except NotOffered as e:
                planned.append(("missing", part, str(e)))
        return planned
    return Source(name, kind, f"{description}: {'+'.join(parts)}", units)


def hosted(name: str, kind: str, description: str, units: Callable[..., list[tuple]]) -> Source:
    return Source(name, kind, f"{description} (hub, needs datasets)", units, online=True)


ENGLISH = ("wiki", "austen", "bible", "fortunes", "pydocs", "perldocs", "kerneldocs")
PROSE = ("wiki", "austen", "bible", "fortunes")

SOURCES: dict[str, Source] = {s.name: s for s in [
    mix("english", "general", "general English mix (~17M gpt2 tokens)", ENGLISH),
    mix("prose", "general", "prose only (~3.3M tokens)", PROSE),
    registry("wiki", "general", "106 Wikipedia articles, markup stripped (PyPI gensim)", wiki_documents),
    registry("austen", "general", "Jane Austen's 6 novels, a chapter per doc (Debian r-cran-janeaustenr)",
             austen_documents, debian="r-cran-janeaustenr"),
    registry("bible", "general", "King James Bible, a chapter per doc (Debian bible-kjv-text)", bible_documents,
             debian="bible-kjv-text"),
    registry("fortunes", "general", "fortune cookies, one per doc (Debian fortunes)", fortune_documents,
             debian="fortunes"),
    # [0-9]: the package's usr/share/doc/python3.X-doc/html is a link to the same files
    registry("pydocs", "general", "Python 3 docs, reST sources (Debian python3.N-doc, the release's: python3-doc's)",
             functools.partial(file_documents, pattern="usr/share/doc/python3.*[0-9]/html/_sources/**/*.rst.txt"),
             debian="python3-doc", versioned=r"python3\.[0-9]+-doc"),
    registry("perldocs", "general", "Perl docs, POD (Debian perl-doc)",
             functools.partial(file_documents, pattern="usr/share/perl/*/pod/*.pod"), debian="perl-doc"),
    registry("kerneldocs", "general", "Linux kernel docs, reST, no translations (Debian linux-doc-X.Y, the release's: "
             "linux-doc's)", functools.partial(file_documents, pattern="usr/share/doc/linux-doc-*/html/_sources/**/*.txt",
                                               skip="/translations/"), debian="linux-doc", versioned=r"linux-doc-[0-9]+\.[0-9]+"),
    registry("abc", "domain", "12,978 folk tunes in ABC notation, one per doc (PyPI music21)", abc_documents),
    registry("kern", "domain", "1,327 scores in Humdrum **kern (PyPI music21)", kern_documents),
    registry("smiles", "domain", "1.9M ZINC molecules as SMILES, 32 per doc (PyPI molsets)", smiles_documents),
    registry("rdkit", "domain", "RDKit book and guides, reST (Debian rdkit-doc)",
             functools.partial(file_documents, pattern="usr/share/doc/rdkit/html/_sources/*.txt"), debian="rdkit-doc"),
    registry("metamath", "domain", "Metamath set.mm, proofs elided, a section per doc (Debian metamath-databases)",
             metamath_documents, debian="metamath-databases"),
    registry("metamath-thm", "domain", "Metamath set.mm, proofs elided, a theorem or definition with its comment "
             "per doc (Debian metamath-databases)", metamath_statements, debian="metamath-databases"),
    registry("hol", "domain", "HOL Light sources, a file per doc (Debian hol-light)",
             functools.partial(file_documents, pattern="usr/share/hol-light/**/*.[mh]l",
                               skip=r"database[^/]*\.ml$"), debian="hol-light"),  # generated theorem lists, makers
    registry("coq", "domain", "Coq standard library, a .v file per doc (Debian libcoq-stdlib)",
             functools.partial(file_documents, pattern="usr/lib/ocaml/coq/**/*.v"), debian="libcoq-stdlib"),
    hosted("fineweb", "general", "FineWeb web text: sample-10BT, -100BT, -350BT or all, the smallest that holds "
           "the budget", fineweb_units),
    hosted("musicpile", "domain", "MusicPile, the paper's music corpus", functools.partial(hf_units, "m-a-p/MusicPile")),
    hosted("chempile", "domain", "ChemPile-Education, all configs interleaved",
           functools.partial(hf_units, "jablonkagroup/chempile-education", ALL_CONFIGS)),
    hosted("proofpile", "domain", "Proof-Pile, the paper's math corpus",
           functools.partial(hf_units, "json", data_files=PROOF_PILE_FILES)),
]}

READERS: dict[str, Callable[..., Iterator[str]]] = {
    "registry": lambda name, *package: GENERATORS[name](*package), "missing": lambda part, why: iter(()),
    "txt": txt_documents, "jsonl": jsonl_documents, "parquet": parquet_documents, "hosted": hosted_documents}


def resolve_source(spec: str) -> Source:
    """A registry name, `local:PATH_OR_GLOB`, `hf:DATASET[:CONFIG]`, or a comma-separated list."""
    if "," in spec:
        parts = [resolve_source(s) for s in spec.split(",")]
        return Source(spec, parts[0].kind, " + ".join(p.name for p in parts),
                      lambda budget_tokens=None: [unit for p in parts for unit in p.plan(budget_tokens)],
                      any(p.online for p in parts))
    if spec.startswith("local:"):
        return Source(spec, "any", f"local files {spec[6:]}", lambda: local_units(spec[6:]))
    if spec.startswith("hf:"):
        dataset, _, config = spec[3:].partition(":")
        return Source(spec, "any", f"hosted dataset {dataset}", functools.partial(hf_units, dataset, config or None),
                      online=True)
    if spec not in SOURCES:
        raise DataError(f"unknown source {spec!r}: see `python data.py --list`, or use local:PATH or hf:DATASET")
    return SOURCES[spec]


def describe() -> str:
    """The sources, one a line, for `python data.py --list`."""
    lines = [f"{s.name:14s} {s.kind:8s} {'online ' if s.online else ''}{s.description}" for s in SOURCES.values()]
    return "\n".join(lines + [f"{'local:PATH':14s} {'any':8s} a folder or glob of .txt / .jsonl (text field) / .parquet",
                              f"{'hf:ID[:CONFIG]':14s} {'any':8s} online a hosted dataset's text field, a file per unit "
                              f"(needs datasets)"])
