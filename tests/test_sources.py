"""Tests of corpora.py's named sources: parsers on tiny self-made fixtures, the registry fetchers on a
fake cache (nothing is downloaded), local files, and the online path on a local `datasets` dataset.

Binary fixtures in tests/fixtures/ were made with ncompress's `compress` from the text that
`lzw_sample_text()` and `bible_sample_lines()` below generate:
    sample_b10.Z       = compress -c -b 10 < lzw_sample_text()
    bible_sample.data  = the lines, cut into 2048-byte windows, each `compress -c -b 12`'d, behind a
                         Bible Retrieval System header (see corpora.brs_text)
"""
import functools
import glob
import gzip
import itertools
import json
import os
import random
import re
import shutil
import string
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import corpora
import data

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture(name: str, mode: str = "r"):
    with open(os.path.join(FIXTURES, name), mode) as f:
        return f.read()


# What apt offers on three releases, as package -> the packages it depends on (of those the sources
# care about). Debian 12 and 13: as `apt-cache search` and `apt-cache depends` printed them here (13
# through ../shared/tools/apt-suite trixie; Debian 12's security archive offers linux-doc-6.12 too).
# Ubuntu 24.04: from its package index (python3-doc depends on python3.12-doc; its linux-doc on no
# linux-doc-X.Y).
COMMON = {name: [] for name in ("perl-doc", "fortunes", "bible-kjv-text", "r-cran-janeaustenr", "rdkit-doc",
                                "metamath-databases", "hol-light", "libcoq-stdlib")}
OFFERS = {"debian-12": {**COMMON, "python3-doc": ["python3.11-doc"], "python3.11-doc": [],
                        "linux-doc": ["linux-doc-6.1"], "linux-doc-6.1": [], "linux-doc-6.12": []},
          "debian-13": {**COMMON, "python3-doc": ["python3.13-doc"], "python3.13-doc": [],
                        "linux-doc": ["linux-doc-6.12"], "linux-doc-6.12": []},
          "ubuntu-24.04": {**COMMON, "python3-doc": ["python3.12-doc"], "python3.12-doc": [], "linux-doc": []}}
RELEASE_OWN = {"debian-12": ("python3.11-doc", "linux-doc-6.1"), "debian-13": ("python3.13-doc", "linux-doc-6.12"),
               "ubuntu-24.04": ("python3.12-doc", None)}


def answer_apt_from(monkeypatch, release: str):
    """apt-cache's answers (corpora.apt_search, apt_depends) from OFFERS, without running it."""
    offers = OFFERS[release]
    monkeypatch.setattr(corpora, "apt_search", lambda pattern: [n for n in offers if re.fullmatch(pattern, n)])
    monkeypatch.setattr(corpora, "apt_depends", lambda name: offers[name])
    corpora.offered_package.cache_clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty CACHE_DIR and Debian 12's apt; fetching is forbidden, so a test fails if a source
    tries to download."""
    monkeypatch.setattr(corpora, "CACHE_DIR", str(tmp_path / "cache"))

    def no_network(cmd, what, cwd=None):
        raise AssertionError(f"tried to run {cmd} ({what})")
    monkeypatch.setattr(corpora, "run_command", no_network)
    answer_apt_from(monkeypatch, "debian-12")
    yield tmp_path / "cache"
    corpora.offered_package.cache_clear()


def fake_debian(cache, package: str, files: dict[str, str | bytes], version: str = "1.0-1"):
    """Lay out files as if `package` had been downloaded and unpacked into the cache, with its record."""
    (cache / "debian" / package).mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        full = cache / "debian" / package / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(content if isinstance(content, bytes) else content.encode())
    (cache / "debian" / f"{package}.json").write_text(json.dumps(
        {"registry": "debian", "package": package, "version": version, "sha256": "0" * 64}))


def fake_wheel(cache, filename: str, files: dict[str, str | bytes]):
    (cache / "pypi").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / "pypi" / filename, "w") as z:
        for path, content in files.items():
            z.writestr(path, content)


# --- music ------------------------------------------------------------------------------------

def test_abc_file_splits_into_tunes_with_their_headers():
    tunes = list(corpora.abc_tunes(fixture("three_tunes.abc")))
    assert len(tunes) == 3
    assert [t.splitlines()[0] for t in tunes] == ["X:1", "X:2", "X:3"]
    assert all("\nT:" in t and "\nM:" in t and "\nK:" in t for t in tunes)
    assert "T:or, The Alternative Title" in tunes[1]  # a second title stays with its tune
    assert "% a comment inside a tune" in tunes[2]
    assert not any("made-up collection" in t for t in tunes)  # the file preamble is dropped
    assert tunes[2].endswith("e3|]")


def test_abc_and_kern_sources_read_the_music21_wheel(cache):
    fake_wheel(cache, "music21-10.5.1-py3-none-any.whl", {
        "music21/corpus/a/tunes.abc": fixture("three_tunes.abc"),
        "music21/corpus/b/more.abc": "X:9\nT:Alone\nK:C\nCDEF|]\n",
        "music21/corpus/c/score.krn": "**kern\n4c\n*-\n",
        "music21/corpus/c/notes.txt": "not music",
    })
    assert len(list(corpora.SOURCES["abc"].documents())) == 4
    assert list(corpora.SOURCES["kern"].documents()) == ["**kern\n4c\n*-\n"]


# --- formal mathematics -----------------------------------------------------------------------

def test_metamath_compressed_proofs_become_placeholders_and_sections_split():
    sections = list(corpora.metamath_sections(fixture("snippet.mm")))
    assert len(sections) == 4  # file preamble, chapter, section, subsection
    assert sections[1].startswith("$(\n#*#*") and "Chapter one" in sections[1]
    text = "".join(sections)
    assert text.count("$= ? $.") == 2
    assert "ABCDE" not in text and "AABC" not in text  # the compressed proof bodies are gone
    assert "idu $p |- ph $= idu.1 $." in text  # an uncompressed proof is kept
    assert "Inference form of identity" in text  # comments are kept
    assert "wi $a wff ( ph -> ps ) $." in sections[1]


def test_metamath_statements_one_per_document():
    statements = [s for section in corpora.metamath_sections(fixture("snippet.mm"))
                  for s in corpora.statements_of(section)]
    assert len(statements) == 4  # the declarations ending in wi, idi, idu, th2: headers and prose left out
    assert statements[0].endswith("wi $a wff ( ph -> ps ) $.") and "Chapter one" not in statements[0]
    assert statements[1].strip().startswith("${") and "idi $p |- ph $= ? $." in statements[1]
    assert statements[2].strip().startswith("$( The same") and "idu $p |- ph $= idu.1 $." in statements[2]
    assert statements[3].strip() == "th2 $p |- ( ph -> ph ) $= ? $."


def test_proof_assistant_sources_are_one_file_per_document(cache):
    fake_debian(cache, "hol-light", {
        "usr/share/hol-light/lib.ml": "let x = 1;;",
        "usr/share/hol-light/Library/thm.hl": "let y = 2;;",
        "usr/share/hol-light/database.ml": "generated",
        "usr/share/hol-light/Multivariate/multivariate_database.ml": "generated",
        "usr/share/hol-light/README": "not a source file",
    })
    assert sorted(corpora.SOURCES["hol"].documents()) == ["let x = 1;;", "let y = 2;;"]
    fake_debian(cache, "libcoq-stdlib", {"usr/lib/ocaml/coq/theories/Init/Logic.v": "Inductive True : Prop := I."})
    assert list(corpora.SOURCES["coq"].documents()) == ["Inductive True : Prop := I."]


# --- Jane Austen: an R lazy-load database made here, byte by byte ------------------------------

def xdr(*ints: int) -> bytes:
    return struct.pack(f">{len(ints)}i", *ints)


def r_string(s: str | None, latin1: bool = False) -> bytes:
    if s is None:
        return xdr(9, -1)  # NA_character_
    raw = s.encode("latin-1" if latin1 else "utf-8")
    return xdr(9 | (4 if latin1 else 8) << 12, len(raw)) + raw


def r_strings(items) -> bytes:
    return xdr(16, len(items)) + b"".join(r_string(s) for s in items)


def r_named(items: dict, first_symbol: bool) -> bytes:
    """A list with a names attribute. R writes the symbol `names` once and refers back to it after."""
    symbol = xdr(1) + r_string("names") if first_symbol else xdr(1 << 8 | 255)
    attributes = xdr(2 | 1 << 10) + symbol + r_strings(list(items)) + xdr(254)
    return xdr(19 | 1 << 9, len(items)) + b"".join(items.values()) + attributes


def r_serialize(body: bytes) -> bytes:
    return b"X\n" + xdr(3, 0x040201, 0x030500) + xdr(5) + b"UTF-8" + body


def write_r_lazyload(prefix: str, objects: dict[str, bytes]):
    records, index = b"", {}
    for name, body in objects.items():
        raw = r_serialize(body)
        record = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = xdr(13, 2, len(records), len(record))
        records += record
    variables = r_named(index, first_symbol=True)
    rdx = r_named({"variables": variables, "references": r_strings([]), "compressed": xdr(10, 1, 1)},
                  first_symbol=False)
    with open(prefix + ".rdb", "wb") as f:
        f.write(records)
    with gzip.open(prefix + ".rdx", "wb") as f:
        f.write(r_serialize(rdx))


NOVEL = ["A NOVEL", "", "By Somebody", "", "CHAPTER I", "", "It was a dark", "and stormy night.", "",
         "Then it rained.", None, "Chapter 2", "", "The end came", "soon."]


def test_r_lazyload_reads_what_r_writes(tmp_path):
    prefix = str(tmp_path / "Rdata")
    write_r_lazyload(prefix, {
        "novel": r_strings(NOVEL),
        "other": xdr(16, 2) + r_string("caf\xe9", latin1=True) + r_string("\u00e9t\u00e9"),
        "numbers": xdr(14, 2) + struct.pack(">2d", 1.5, -2.0),
    })
    objects = corpora.r_lazyload(prefix)
    assert objects == {"novel": NOVEL, "other": ["caf\xe9", "\u00e9t\u00e9"], "numbers": [1.5, -2.0]}


def test_r_reader_rejects_what_it_does_not_know():
    with pytest.raises(corpora.DataError, match="type 3 is not supported"):
        corpora.r_unserialize(r_serialize(xdr(3)))  # a closure
    with pytest.raises(corpora.DataError, match="XDR"):
        corpora.r_unserialize(b"RDA2\n")


def test_austen_chapters_unwrap_paragraphs(cache):
    fake_debian(cache, "r-cran-janeaustenr", {})
    folder = cache / "debian" / "r-cran-janeaustenr" / os.path.dirname(corpora.AUSTEN_DB)
    folder.mkdir(parents=True)
    write_r_lazyload(str(cache / "debian" / "r-cran-janeaustenr" / corpora.AUSTEN_DB), {"novel": r_strings(NOVEL)})
    chapters = list(corpora.SOURCES["austen"].documents())
    assert chapters == ["A NOVEL\n\nBy Somebody\n\nCHAPTER I\n\nIt was a dark and stormy night.\n\nThen it rained.",
                        "Chapter 2\n\nThe end came soon."]


# --- the Bible: Unix compress (LZW) windows ---------------------------------------------------

def lzw_sample_text() -> str:
    """~16 KB of words from a small vocabulary (compresses well), then ~16 KB of letter pairs in a
    fixed pseudo-random order (compresses badly), so `compress -b 10` fills its table, sees its ratio
    drop and clears the table: every branch of the decoder runs."""
    words = ("the of and to in a is that for it as was with be by on not he this are or his from at "
             "which tune proof molecule chapter verse document token budget").split()
    state, out = 1, []
    for i in range(6000):
        state = (state * 1103515245 + 12345) % 2 ** 31  # a fixed pseudo-random sequence (an LCG)
        out.append(words[state >> 16 & 31] if i < 3000 else
                   string.ascii_letters[state >> 16 & 31] + string.ascii_letters[state >> 21 & 31])
    return " ".join(out) + "\n"


def bible_sample_lines() -> list[str]:
    """A title line, then 66 made-up books ("Xaa".."Xcn"), the first with two chapters, 3 verses each."""
    books = ["X" + a + b for a, b in itertools.islice(itertools.product(string.ascii_lowercase, repeat=2), 66)]
    lines = ["A made-up bible.data for the tests of data.py."]
    for n, book in enumerate(books):
        for chapter in (1, 2) if n == 0 else (1,):
            for verse in (1, 2, 3):
                lines.append(f"{book}{chapter}:{verse} Words of book {n + 1}, chapter {chapter}, verse {verse}.")
    return lines


def test_unlzw_decodes_compress_output():
    assert corpora.unlzw(fixture("sample_b10.Z", "rb")) == lzw_sample_text().encode()


@pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip is not installed")
def test_unlzw_agrees_with_gzip_on_the_windows():
    """gzip -d also reads .Z files: an independent decoder to compare with."""
    raw = fixture("bible_sample.data", "rb")
    offsets = struct.unpack_from(">4I", raw, 92)
    window = raw[offsets[0] - 3:offsets[0]] + raw[offsets[1]:offsets[2]]
    expected = subprocess.run(["gzip", "-dc"], input=window, capture_output=True, check=True).stdout
    assert corpora.unlzw(window) == expected and len(expected) == 2048


def test_unlzw_rejects_garbage():
    with pytest.raises(corpora.DataError, match="not compress"):
        corpora.unlzw(b"PK\x03\x04")
    with pytest.raises(corpora.DataError, match="corrupt"):
        corpora.unlzw(b"\x1f\x9d\x90" + b"\xff" * 8)  # a first code far beyond the table


def test_bible_chapters_with_book_names(cache):
    fake_debian(cache, "bible-kjv-text", {"usr/lib/bible.data": fixture("bible_sample.data", "rb")})
    chapters = list(corpora.SOURCES["bible"].documents())
    assert len(chapters) == 67
    assert chapters[0] == ("Genesis 1\n\n1 Words of book 1, chapter 1, verse 1.\n"
                           "2 Words of book 1, chapter 1, verse 2.\n3 Words of book 1, chapter 1, verse 3.")
    assert chapters[1].startswith("Genesis 2\n\n1 Words of book 1, chapter 2")
    assert chapters[-1].startswith("Revelation 1\n\n1 Words of book 66,")
    assert [c.split("\n")[0] for c in chapters].count("Song of Solomon 1") == 1


# --- Wikipedia, fortunes, documentation -------------------------------------------------------

WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Tune</title><ns>0</ns><revision><text xml:space="preserve">{{Infobox music|name={{nested|x}}}}
A '''tune''' is a [[melody]] played on a [[Violin|fiddle]].&lt;ref&gt;A source.&lt;/ref&gt;
[[File:Fiddle.jpg|thumb|A [[fiddle]].]]
&lt;!-- an editor's note --&gt;
== History ==
{| class="wikitable"
| cell || {| inner table |}
|}
See [http://example.org the site] &amp;nbsp;now.
[[Category:Music]]</text></revision></page>
  <page><title>Tunes</title><ns>0</ns><redirect title="Tune" />
    <revision><text>#REDIRECT [[Tune]]</text></revision></page>
  <page><title>Talk:Tune</title><ns>1</ns><revision><text>Discussion.</text></revision></page>
</mediawiki>"""


def test_mediawiki_articles_strip_markup_and_skip_redirects():
    assert list(corpora.mediawiki_articles(WIKI_XML.encode())) == [
        "Tune\n\nA tune is a melody played on a fiddle.\n\nHistory\n\nSee the site \xa0now."]


def test_fortunes_one_per_document_without_overstrikes(cache):
    fake_debian(cache, "fortunes", {
        "usr/share/games/fortunes/wisdom": "First fortune.\n%\nSecond, _\bu_\bn_\bd_\be_\br_\bl_\bi_\bn_\be_\bd.\n"
                                           "\t-- Someone\n%\n",
        "usr/share/games/fortunes/wisdom.dat": b"\x00\x00\x00\x02binary index",
    })
    os.symlink("wisdom", cache / "debian" / "fortunes" / "usr/share/games/fortunes/wisdom.u8")
    assert list(corpora.SOURCES["fortunes"].documents()) == ["First fortune.", "Second, underlined.\n\t-- Someone"]


def test_kernel_docs_skip_translations(cache):
    sources = "usr/share/doc/linux-doc-6.1/html/_sources"
    fake_debian(cache, "linux-doc-6.1", {f"{sources}/process/howto.rst.txt": "HOWTO",
                                         f"{sources}/translations/it_IT/howto.rst.txt": "COME FARE",
                                         f"{sources}/index.rst.txt": "Index"})
    assert list(corpora.SOURCES["kerneldocs"].documents()) == ["Index", "HOWTO"]


def test_mixes_chain_their_parts(cache, monkeypatch):
    for name in corpora.ENGLISH:
        monkeypatch.setitem(corpora.GENERATORS, name, lambda *package, n=name: iter([n]))
    packages = {"wiki": (), "austen": ("r-cran-janeaustenr",), "bible": ("bible-kjv-text",), "fortunes": ("fortunes",),
                "pydocs": ("python3.11-doc",), "perldocs": ("perl-doc",), "kerneldocs": ("linux-doc-6.1",)}
    assert corpora.SOURCES["english"].plan() == [("registry", name, *packages[name]) for name in corpora.ENGLISH]
    assert list(corpora.SOURCES["english"].documents()) == list(corpora.ENGLISH)
    assert list(corpora.SOURCES["prose"].documents()) == ["wiki", "austen", "bible", "fortunes"]


# --- chemistry --------------------------------------------------------------------------------

def smiles_csv_gz(molecules: list[str]) -> bytes:
    return gzip.compress(("SMILES\n" + "".join(m + "\n" for m in molecules)).encode())


def test_smiles_grouped_into_documents_of_32(cache):
    molecules = [f"C{'C' * (i % 7)}O{i}" for i in range(100)]
    fake_wheel(cache, "molsets-0.3.1-py3-none-any.whl", {
        "moses/dataset/data/train.csv.gz": smiles_csv_gz(molecules[:70]),
        "moses/dataset/data/test.csv.gz": smiles_csv_gz(molecules[70:90]),
        "moses/dataset/data/test_scaffolds.csv.gz": smiles_csv_gz(molecules[90:]),
    })
    docs = list(corpora.SOURCES["smiles"].documents())
    assert [len(d.split("\n")) for d in docs] == [32, 32, 6, 20, 10]  # groups never span two files
    assert "\n".join(docs).split("\n") == molecules


def test_csv_smiles_finds_the_column():
    csv_gz = gzip.compress(b"ID,SMILES,SPLIT\n1,CCO,train\n2,c1ccccc1,test\n")
    assert list(corpora.csv_smiles(csv_gz)) == ["CCO", "c1ccccc1"]


# --- fetching ---------------------------------------------------------------------------------

def test_run_command_failure_is_one_line_naming_the_command():
    with pytest.raises(corpora.DataError) as e:
        corpora.run_command([sys.executable, "-c", "import sys; print('noise'); sys.exit('it broke')"], "testing")
    assert "testing failed" in str(e.value) and "it broke" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(corpora.DataError, match="is not installed"):
        corpora.run_command(["no-such-program-spt"], "testing")


def test_pypi_wheel_uses_the_cache(cache):
    fake_wheel(cache, "music21-10.5.1-py3-none-any.whl", {"x.txt": "hi"})
    assert corpora.pypi_wheel("music21==10.5.1").read("x.txt") == b"hi"  # `cache` forbids running pip


def fake_apt(tmp_path, monkeypatch, offers: dict[str, list[str]], download: str = 'cp {deb} .') -> "pathlib.Path":
    """Fake apt-cache and apt-get on PATH. `apt-cache search --names-only REGEX` and `apt-cache depends
    NAME` answer from `offers` (package -> its dependencies) as apt prints them; `apt-get update` and
    `apt-get download` are logged, and `download` runs the shell command given (by default: hand over
    the .deb of a package spt-test, built here with dpkg-deb)."""
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: spt-test\nVersion: 1.0-2\nArchitecture: all\n"
                                             "Maintainer: nobody <nobody@example.org>\nDescription: test\n")
    (tree / "usr/share/spt").mkdir(parents=True)
    (tree / "usr/share/spt/hello.txt").write_text("hello")
    (tree / "usr/share/spt/noise.bin").write_bytes(random.Random(0).randbytes(50_000))  # a .deb of ~50 KB
    deb = tmp_path / "spt-test_1.0-2_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    depends = "".join(f"  {name}) printf '{name}\\n{''.join(f'  Depends: {d}{chr(92)}n' for d in deps)}';;\n"
                      for name, deps in offers.items())
    (bin_dir / "apt-cache").write_text(f"""#!/bin/sh
case "$1 $2" in
  "search --names-only") printf '%s\\n' {' '.join(offers)} | grep -E "$3" | sed 's/$/ - a package/'; exit 0;;
esac
[ "$1" = depends ] || exit 100
case "$2" in
{depends}  *) echo "E: No packages found" >&2; exit 100;;
esac
""")  # (apt's regular expressions are POSIX's, as grep -E's: no \\d)
    (bin_dir / "apt-get").write_text(f"""#!/bin/sh
echo "$@" >> {log}
if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi
{download.format(deb=deb, tmp=tmp_path)}
""")
    for tool in ("apt-cache", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(corpora, "CACHE_DIR", str(tmp_path / "cache"))
    corpora.apt_get_update.cache_clear()
    corpora.offered_package.cache_clear()
    return log


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (not Debian)")


@needs_dpkg
@pytest.mark.parametrize("release", OFFERS)
def test_versioned_packages_are_the_releases_own(tmp_path, monkeypatch, release):
    """python3.N-doc and linux-doc-X.Y are what python3-doc and linux-doc depend on in this release's
    apt (not Debian 12's newer linux-doc-6.12 from its security archive); where there is none (Ubuntu's
    kernel docs), the package lists are fetched once more and the English mix goes on without that part,
    while the part alone is an error."""
    log = fake_apt(tmp_path, monkeypatch, OFFERS[release])
    pydocs, kerneldocs = RELEASE_OWN[release]
    units = corpora.SOURCES["english"].plan()
    assert ("registry", "pydocs", pydocs) in units and ("registry", "perldocs", "perl-doc") in units
    assert ("registry", "austen", "r-cran-janeaustenr") in units and ("registry", "wiki") in units
    if kerneldocs:
        assert ("registry", "kerneldocs", kerneldocs) in units and not log.exists()
    else:
        why = r"linux-doc depends on no package named like linux-doc-[0-9]+\.[0-9]+ on this machine"
        assert ("missing", "kerneldocs", why) in units
        with pytest.raises(corpora.NotOffered, match="linux-doc depends on no package"):
            corpora.SOURCES["kerneldocs"].plan()  # alone, it is an error
    assert corpora.SOURCES["metamath"].plan() == [("registry", "metamath", "metamath-databases")]


@needs_dpkg
def test_a_package_apt_does_not_list_fetches_the_lists_once_then_is_missing(tmp_path, monkeypatch):
    log = fake_apt(tmp_path, monkeypatch, {"fortunes": []})
    assert corpora.SOURCES["prose"].plan()[-1] == ("registry", "fortunes", "fortunes")
    assert ("missing", "bible", "apt offers no package bible-kjv-text on this machine") in corpora.SOURCES["prose"].plan()
    assert log.read_text() == "update\n"


def test_without_apt_the_error_names_the_other_sources(tmp_path):
    """macOS, Fedora: no apt-cache. The default dataset fails before any download, in one line that
    says what else to use."""
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "SPT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "--out", str(tmp_path / "ds")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "`apt-cache` is not installed" in done.stderr and "local:PATH" in done.stderr and "fineweb" in done.stderr
    assert not os.path.exists(tmp_path / "cache" / "debian")


@needs_dpkg
def test_debian_package_updates_lists_once_then_downloads_unpacks_and_records_it(tmp_path, monkeypatch):
    """`download` fails until `update` has run, then hands over a real .deb: the retry, the unpacking,
    the record of its exact version and sha256, and the cache used after."""
    log = fake_apt(tmp_path, monkeypatch, {}, download=f'[ -e {{tmp}}/updated ] || {{{{ echo "E: Unable to locate '
                                                        f'package $2" >&2; exit 100; }}}}; cp {{deb}} .')
    deb_sha256 = corpora.file_sha256(str(tmp_path / "spt-test_1.0-2_all.deb"))
    corpora.FETCHED.clear()
    root = corpora.debian_package("spt-test")
    assert open(os.path.join(root, "usr/share/spt/hello.txt")).read() == "hello"
    assert corpora.debian_package("spt-test") == root
    assert log.read_text().split("\n") == ["download spt-test", "update", "download spt-test", ""]
    assert sorted(os.listdir(tmp_path / "cache" / "debian")) == ["spt-test", "spt-test.json"]  # no .deb
    assert corpora.FETCHED == {"debian:spt-test": {"registry": "debian", "package": "spt-test", "version": "1.0-2",
                                                   "sha256": deb_sha256}}
    corpora.apt_get_update.cache_clear()


@needs_dpkg
@pytest.mark.parametrize("failure, download, message", [
    ("cannot download", 'echo "E: Failed to fetch http://deb.debian.org/spt-test_1.0-2_all.deb  404  Not Found" >&2; '
                        'exit 100', "apt-get download spt-test failed: `apt-get download spt-test`: E: Failed to fetch"),
    ("cut short", "head -c 3000 {deb} > spt-test_1.0-2_all.deb", "unpacking"),
])
def test_a_package_that_fails_to_arrive_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, failure, download,
                                                                        message):
    fake_apt(tmp_path, monkeypatch, {"spt-test": []}, download=download)
    with pytest.raises(corpora.DataError) as e:
        corpora.debian_package("spt-test")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path / "cache" / "debian") == []  # no half package, no .deb, no record
    corpora.apt_get_update.cache_clear()


def test_a_mix_without_a_part_warns_with_its_tokens_and_meta_json_names_every_package(cache, monkeypatch, capsys):
    """On Ubuntu (no linux-doc-X.Y) a mix goes on without its kernel docs; meta.json says so and lists the
    exact version and sha256 of every package read."""
    answer_apt_from(monkeypatch, "ubuntu-24.04")
    monkeypatch.setitem(corpora.SOURCES, "bits", corpora.mix("bits", "general", "a test mix", ("fortunes", "kerneldocs")))
    fake_debian(cache, "fortunes", {"usr/share/games/fortunes/wisdom": "\n%\n".join(
        f"Fortune number {i}: " + "wise words " * (i % 7 + 3) for i in range(120))}, version="1:1.99.1-7.3")
    meta = data.prepare(str(cache.parent / "ds"), "bits", None, tokenizer="byte", workers=1)
    tokens = meta["splits"]["general_train"]["tokens"]
    why = r"linux-doc depends on no package named like linux-doc-[0-9]+\.[0-9]+ on this machine"
    assert tokens > 0 and meta["missing"] == {"general": {"kerneldocs": why}}
    assert meta["packages"] == [{"registry": "debian", "package": "fortunes", "version": "1:1.99.1-7.3",
                                 "sha256": "0" * 64}]
    assert f"warning: bits is without kerneldocs ({why}): general_train holds {tokens:,} tokens without it" \
        in capsys.readouterr().err
    with open(cache.parent / "ds" / "meta.json") as f:
        assert json.load(f)["packages"] == meta["packages"]


def test_a_package_without_the_expected_files_is_a_clear_error(cache):
    fake_debian(cache, "rdkit-doc", {"usr/share/doc/rdkit/README": "moved"})
    with pytest.raises(corpora.DataError, match="rdkit-doc has no file matching"):
        list(corpora.SOURCES["rdkit"].documents())


# --- local files ------------------------------------------------------------------------------

def test_local_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    (tmp_path / "ignored.csv").write_text("x")
    assert list(corpora.resolve_source(f"local:{tmp_path}").documents()) == ["first document", "second", "third"]


def test_local_files_become_units_of_about_unit_bytes(tmp_path, monkeypatch):
    """A large JSON-lines file is cut into byte ranges, each line read by exactly one of them; .txt files
    are grouped; the units together read every document once, in order."""
    monkeypatch.setattr(corpora, "UNIT_BYTES", 100)
    lines = [json.dumps({"text": f"line {i} " + "y" * (i % 23)}) for i in range(60)]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    for i in range(7):
        (tmp_path / f"t{i}.txt").write_text(f"text file {i} " + "z" * 40)
    units = corpora.local_units(str(tmp_path))
    ranges = [u for u in units if u[0] == "jsonl"]
    assert len(ranges) == -(-os.path.getsize(tmp_path / "big.jsonl") // 100)
    assert [u[2] for u in ranges] == list(range(0, os.path.getsize(tmp_path / "big.jsonl"), 100))
    assert 1 < len([u for u in units if u[0] == "txt"]) < 7
    docs = [doc for unit in units for doc in corpora.read_unit(unit)]
    assert docs == [json.loads(line)["text"] for line in lines] + [f"text file {i} " + "z" * 40 for i in range(7)]
    (tmp_path / "t0.txt").write_text("edited")  # an edited file is another unit (its work is not reused)
    assert corpora.local_units(str(tmp_path)) != units


def test_local_jsonl_bad_line_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "UNIT_BYTES", 40)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "still fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(corpora.DataError, match=r"bad.jsonl:4: expected a JSON object with a 'text' field"):
        list(corpora.resolve_source(f"local:{path}").documents())


def test_local_text_that_is_missing_undecodable_or_not_text(tmp_path, capsys):
    """Scraped text is messy: a null text is an empty document (prepare drops it), bytes that are not
    UTF-8 and half an emoji (a lone surrogate escape) become replacement characters, with a warning that
    says how many; a text that is not a string is an error naming the line."""
    (tmp_path / "a.jsonl").write_bytes(b'{"text": null}\n{"text": "caf\xe9"}\n{"text": "half \\ud83d emoji"}\n')
    source = corpora.resolve_source(f"local:{tmp_path / 'a.jsonl'}")
    assert list(source.documents()) == ["", "caf\ufffd", "half \ud83d emoji"]
    assert "1 bytes (1.61%) are not UTF-8 text and became U+FFFD" in capsys.readouterr().err
    out = str(tmp_path / "ds")
    data.prepare(out, f"local:{tmp_path / 'a.jsonl'}", None, tokenizer="byte", val_frac=0.4)
    splits = data.load_meta(out)["splits"]
    assert splits["general_train"]["documents"] + splits["general_val"]["documents"] == 2  # null: dropped
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{"text": 42}\n')
    with pytest.raises(corpora.DataError, match=r"b.jsonl:2: 'text' is a int, not a string"):
        list(corpora.resolve_source(f"local:{tmp_path / 'b.jsonl'}").documents())


def test_local_files_of_random_bytes_are_refused(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a real document " * 20)
    (folder / "b.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(corpora.DataError, match=r"b.txt: [\d,]+ of its 4,000 bytes are not UTF-8 text: convert it"):
        data.prepare(str(tmp_path / "ds"), f"local:{folder}", None, tokenizer="byte")
    (folder / "b.txt").write_text("hello\n".encode("utf-16").decode("latin-1"), encoding="latin-1")  # UTF-16
    with pytest.raises(corpora.DataError, match="are not UTF-8 text"):
        list(corpora.resolve_source(f"local:{folder}").documents())


def test_local_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["one", None, "two"], "id": [1, 2, 3]}), tmp_path / "d.parquet")
    assert list(corpora.resolve_source(f"local:{tmp_path}/*.parquet").documents()) == ["one", "", "two"]


def test_unknown_source_is_a_clear_error():
    with pytest.raises(corpora.DataError, match="unknown source 'nope'"):
        corpora.resolve_source("nope")


# --- online: hosted files read with `datasets`, tested on local files --------------------------

@pytest.fixture
def local_hub(tmp_path):
    """Local files that `datasets` reads like a hosted dataset's: 6 JSON-lines files of 40 documents
    of ~100 bytes, in two folders (as FineWeb keeps a crawl per folder)."""
    pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    for f in range(6):
        folder = tmp_path / "hub" / f"part{f % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        write = "".join(json.dumps({"text": f"file {f} doc {i:02d} " + "x" * 80, "n": i}) + "\n" for i in range(40))
        (folder / f"{f}.jsonl").write_text(write)
    return str(tmp_path / "hub" / "*" / "*.jsonl")


def test_hosted_files_are_units_interleaved_across_folders(local_hub):
    units = corpora.hf_units("json", data_files=local_hub, budget_tokens=100)
    assert [os.path.basename(u[1]) for u in units] == ["0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl", "4.jsonl", "5.jsonl"]
    assert [os.path.basename(os.path.dirname(u[1])) for u in units] == ["part0", "part1"] * 3
    docs = list(corpora.read_unit(units[1]))
    assert len(docs) == 40 and docs[0].startswith("file 1 doc 00 ")


def test_hosted_files_of_other_formats(tmp_path):
    pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["one", "two"]}), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write('{"text": "zipped"}\n')
    assert list(corpora.hosted_documents(str(tmp_path / "d.parquet"), "body")) == ["one", "two"]
    assert list(corpora.hosted_documents(str(tmp_path / "d.jsonl.gz"), "text")) == ["zipped"]
    with pytest.raises(corpora.DataError, match="not a file type"):
        list(corpora.hosted_documents(str(tmp_path / "d.bin"), "text"))


def test_online_errors(local_hub, monkeypatch):
    unit = corpora.hf_units("json", data_files=local_hub, budget_tokens=100)[0]
    with pytest.raises(corpora.DataError, match="no 'body' field, only \\['n', 'text'\\]"):
        list(corpora.hosted_documents(unit[1], "body"))
    with pytest.raises(corpora.DataError, match="reading .* failed: .*run the same command again"):
        list(corpora.hosted_documents(unit[1] + ".missing.jsonl", "text"))
    with pytest.raises(corpora.DataError, match="has no files for split 'train'"):
        corpora.hf_units("json", data_files=local_hub + ".missing", budget_tokens=100)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(corpora.DataError, match="pip install datasets"):
        corpora.hf_units("json", data_files=local_hub, budget_tokens=100)


def test_online_sources_need_a_budget_and_hf_specs_resolve():
    source = corpora.resolve_source("hf:someone/corpus:config")
    assert source.online and source.units.args == ("someone/corpus", "config")
    with pytest.raises(corpora.DataError, match="token budget"):
        corpora.SOURCES["fineweb"].plan()
    assert corpora.resolve_source("fineweb,abc").online


def test_fineweb_takes_the_smallest_configuration_that_holds_the_budget(monkeypatch):
    monkeypatch.setattr(corpora, "hf_units", lambda path, config, budget_tokens: [(path, config)])
    chosen = {budget: corpora.SOURCES["fineweb"].plan(budget)[0][1] for budget in (2e9, 9e9, 50e9, 200e9, 1e12)}
    assert chosen == {2e9: "sample-10BT", 9e9: "sample-10BT", 50e9: "sample-100BT", 200e9: "sample-350BT",
                      1e12: "default"}
    with pytest.raises(corpora.DataError, match="FineWeb holds about 15T tokens"):
        corpora.SOURCES["fineweb"].plan(20e12)


def test_prepare_reads_an_online_source_only_as_far_as_its_budget(local_hub, tmp_path, monkeypatch):
    """Files 0, 1, 2... are read in order until their training documents hold the budget; file 1 is a
    copy of file 0 (the estimate of how many files the budget needs is then short, and prepare reads
    further). The held-out documents come from the files read."""
    files = sorted(glob.glob(local_hub), key=os.path.basename)
    shutil.copy(files[0], files[1])
    monkeypatch.setitem(corpora.SOURCES, "web", corpora.Source(
        "web", "general", "local files as a hosted dataset",
        functools.partial(corpora.hf_units, "json", data_files=local_hub), online=True))
    read = []
    monkeypatch.setattr(data, "tokenize_unit", lambda task, tokenize_unit=data.tokenize_unit:
                        read.append(task[1][0] == "hosted" and os.path.basename(task[1][1])) or tokenize_unit(task))
    folder = tmp_path / "dom"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.txt").write_text(f"domain document {i}")
    out = str(tmp_path / "ds")
    meta = data.prepare(out, "web", f"local:{folder}", tokenizer="byte", val_frac=0.1, general_tokens=8000, workers=1)
    assert [r for r in read if r] == ["0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl"]  # 1 to learn a file's size, then more
    assert 8000 <= meta["splits"]["general_train"]["tokens"] < 8000 + 101
    for split in ("general_train", "general_val"):
        docs = [bytes(d[::2]).decode() for d in documents_of(np.asarray(data.open_split(out, split)), 256)]
        assert {d.split()[1] for d in docs} <= {"0", "2", "3"}  # file 1's copies of file 0 are dropped


def documents_of(tokens, eot):
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b].tobytes() for a, b in zip(cuts[:-1], cuts[1:])]


# --- command line -----------------------------------------------------------------------------

def test_list_names_every_source():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "--list"], capture_output=True,
                         text=True, check=True).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names[:len(corpora.SOURCES)] == list(corpora.SOURCES)
    for name in ("english", "prose", "wiki", "austen", "bible", "fortunes", "pydocs", "perldocs", "kerneldocs",
                 "abc", "kern", "smiles", "rdkit", "metamath", "metamath-thm", "hol", "coq", "fineweb", "musicpile", "chempile",
                 "proofpile", "local:PATH", "hf:ID[:CONFIG]"):
        assert name in names
