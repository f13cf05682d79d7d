"""Jurisdiction rule packs as data files; `cartback.core.jurisdiction` parses and merges them.

Reading these package files is the one I/O the core does, once per process.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

PACK_NAMES: tuple[str, ...] = ("default", "us", "ca", "eu", "uk", "no", "dk", "se", "fr")


@lru_cache(maxsize=1)
def pack_texts() -> dict[str, str]:
    """The YAML text of every rule pack, by pack name."""
    folder = resources.files(__name__)
    return {
        name: folder.joinpath(f"{name}.yaml").read_text(encoding="utf-8") for name in PACK_NAMES
    }
