"""The tools' own settings, so that `background` needs nothing from `cluster` to build them.

The cluster maps its config onto `ToolsConfig`; tests build one directly. The defaults are
safe on a laptop with no network: search the shipped corpus, fetch nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SHIPPED_CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class ToolsConfig:
    """Which search provider, which hosts `fetch_url` may reach, and how long each tool may take."""

    search_provider: Literal["local", "searxng"] = "local"
    corpus_dir: Path = SHIPPED_CORPUS  # .md / .txt files the local index covers
    index_path: Path | None = None  # an SQLite cache file for the index; None: in memory
    searxng_url: str = ""  # base URL of a SearXNG-style server, e.g. http://searxng:8080
    # Hosts fetch_url may reach: "example.org" exactly, or "*.example.org" for its subdomains.
    fetch_allow_hosts: tuple[str, ...] = ()
    # Let fetch_url reach private, loopback and link-local addresses (tests, in-cluster services).
    allow_private: bool = False
    fetch_max_bytes: int = 1_000_000
    fetch_max_chars: int = 20_000
    search_timeout_s: float = 5.0
    fetch_timeout_s: float = 10.0
    local_timeout_s: float = 2.0  # calculator, clock, ui.render

    def __post_init__(self) -> None:
        if self.search_provider not in ("local", "searxng"):
            raise ValueError(f"search_provider: expected 'local' or 'searxng', got {self.search_provider!r}")
        if self.search_provider == "searxng" and not self.searxng_url.startswith(("http://", "https://")):
            raise ValueError("searxng_url: an http(s) base URL is required when search_provider is 'searxng'")
        object.__setattr__(self, "corpus_dir", Path(self.corpus_dir))
        if self.index_path is not None:
            object.__setattr__(self, "index_path", Path(self.index_path))
        if isinstance(self.fetch_allow_hosts, str):
            raise ValueError("fetch_allow_hosts: expected a list of host names, got a string")
        hosts = tuple(h.strip().lower().rstrip(".") for h in self.fetch_allow_hosts if h.strip())
        object.__setattr__(self, "fetch_allow_hosts", hosts)
        for name in ("search_timeout_s", "fetch_timeout_s", "local_timeout_s",
                     "fetch_max_bytes", "fetch_max_chars"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
