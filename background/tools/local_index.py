"""The default search provider: a full-text index over a folder of documents, no network.

SQLite's FTS5 (in the stdlib `sqlite3` of CPython builds) gives bm25 ranking and snippets for
free. The index is built at first use from the folder's `.md` and `.txt` files, in memory or
in a cache file that is rebuilt whenever the folder's files change (names, sizes, mtimes).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

from background.tools.base import ToolError

SUFFIXES = (".md", ".txt")
TITLE_WEIGHT, BODY_WEIGHT = 4.0, 1.0
# Words too common to help a bm25 OR-query; kept only when a query has nothing else.
STOPWORDS = frozenset(
    "a an and are as at be by do does for from how i in is it me of on or the to was what when "
    "where which who why will with you your tell about please".split())


def fts5_available() -> bool:
    """Whether this Python's SQLite was compiled with FTS5."""
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    return True


def fts_query(text: str) -> str:
    """Free text as an FTS5 OR-query of quoted terms, so that no user input is FTS syntax."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    useful = [w for w in words if w not in STOPWORDS] or words
    unique = list(dict.fromkeys(useful))[:32]
    return " OR ".join(f'"{w}"' for w in unique)


def split_title(path: Path, text: str) -> tuple[str, str]:
    """A document's title (its leading "# " heading, else its file name) and the rest."""
    stripped = text.lstrip()
    first, _, rest = stripped.partition("\n")
    if first.startswith("#"):
        return first.lstrip("#").strip(), rest.strip()
    return path.stem.replace("-", " ").replace("_", " "), stripped


class LocalIndex:
    """An FTS5 index over `corpus_dir`; thread-safe, since searches run in worker threads."""

    def __init__(self, corpus_dir: Path, index_path: Path | None = None) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.index_path = index_path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _files(self) -> list[Path]:
        if not self.corpus_dir.is_dir():
            raise ToolError(f"search corpus folder not found: {self.corpus_dir}")
        return sorted(p for p in self.corpus_dir.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())

    def _fingerprint(self, files: list[Path]) -> str:
        digest = hashlib.sha256()
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(self.corpus_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def _open(self) -> sqlite3.Connection:
        """The index, built (or rebuilt when stale) on first use."""
        if self._db is not None:
            return self._db
        if not fts5_available():
            raise ToolError("this Python's SQLite has no FTS5; use the searxng search provider")
        files = self._files()
        fingerprint = self._fingerprint(files)
        target = ":memory:" if self.index_path is None else str(self.index_path)
        if self.index_path is not None:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("BEGIN IMMEDIATE")  # one builder at a time when processes share a cache file
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None or row[0] != fingerprint:
                self._build(db, files, fingerprint)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        self._db = db
        return db

    def _build(self, db: sqlite3.Connection, files: list[Path], fingerprint: str) -> None:
        db.execute("DROP TABLE IF EXISTS docs")
        db.execute("CREATE VIRTUAL TABLE docs USING fts5("
                   "path UNINDEXED, title, body, tokenize = 'porter unicode61')")
        for path in files:
            title, body = split_title(path, path.read_text(encoding="utf-8", errors="replace"))
            db.execute("INSERT INTO docs (path, title, body) VALUES (?, ?, ?)",
                       (path.relative_to(self.corpus_dir).as_posix(), title, body))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint', ?)", (fingerprint,))

    def __len__(self) -> int:
        with self._lock:
            return self._open().execute("SELECT count(*) FROM docs").fetchone()[0]

    def search(self, query: str, max_results: int = 5) -> list[dict[str, Any]]:
        """The best `max_results` documents by bm25, each with a snippet around the matches."""
        match = fts_query(query)
        if not match:
            raise ToolError("the query has no searchable words")
        with self._lock:
            rows = self._open().execute(
                "SELECT path, title, snippet(docs, 2, '', '', ' … ', 40), "
                f"bm25(docs, 0.0, {TITLE_WEIGHT}, {BODY_WEIGHT}) AS rank "
                "FROM docs WHERE docs MATCH ? ORDER BY rank LIMIT ?",
                (match, max_results)).fetchall()
        return [{"title": title, "url": f"local:{path}", "snippet": " ".join(snippet.split()),
                 "score": round(-rank, 4)} for path, title, snippet, rank in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
