"""Where things are in an engine store, for the operator, ``kiln-builder`` and ``kiln
fetch-engine`` alike: one function composes each place.

``<store>engines/<key>/`` holds an engine (``manifest.json`` commits it); ``<store>damaged/
<key>/<upload>/`` an engine kiln found damaged and set aside, kept for evidence and never
served (``kiln gc`` leaves it alone).
"""

from __future__ import annotations

ENGINES = "engines/"
DAMAGED = "damaged/"
FINDING = "finding.json"
"""Beside a set-aside engine's manifest: what was found wrong with it, when, and how."""
FILES = "files/"
"""Under a set-aside engine: its files, as they were in the store."""


def _root(store: str) -> str:
    return store if store.endswith("/") else store + "/"


def engine_uri(store: str, key: str) -> str:
    """``<store>engines/<key>/``: where engine ``key`` lives in ``store``."""
    return f"{_root(store)}{ENGINES}{key}/"


def damaged_uri(store: str, key: str, upload: str) -> str:
    """``<store>damaged/<key>/<upload>/``: where a damaged engine is kept."""
    return f"{_root(store)}{DAMAGED}{key}/{upload}/"


def store_of(uri: str, key: str) -> str:
    """The store of an engine URI (the inverse of :func:`engine_uri`), for what holds only the
    URI: a serving Deployment's engine, as its pods fetch it and as it is marked used."""
    suffix = f"{ENGINES}{key}/"
    found = _root(uri)
    if not found.endswith(suffix):
        raise ValueError(f"{uri!r} is not an engine URI ending in {suffix}")
    return found[:-len(suffix)]
