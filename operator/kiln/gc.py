"""``kiln gc``: delete the engines nobody needs from the store.

An engine goes only if no EngineBuild of this cluster references it (a current engine, the
previous one an EngineDeployment may fall back to, a key being built) and nobody marked it
used within the retention: every operator sharing the store rewrites ``last-used`` beside the
manifests of the engines its cluster references, so clusters never delete each other's
engines. The manifest goes first (an engine half deleted is no engine, its files are an
uncommitted upload the next run removes); timing caches (``cache/``) are kept. Dry-run unless
``apply``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from kiln import EB_PLURAL, ED_PLURAL
from kiln.api.common import parse_duration
from kiln.key import short_key
from kiln.kube import Kube
from kiln.labels import KEY_ANNOTATION, KEY_LABEL
from kiln.store import EngineStore

log = logging.getLogger(__name__)
REPORT = "gc-report.json"
"""Under the store's ``cache/``: what the last applied run found and reclaimed."""


@dataclass
class Report:
    """What one run found in one store."""

    store: str
    engines: int = 0
    bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    """Keys deleted (or, dry-run, that would be)."""
    reclaimed_bytes: int = 0
    kept_in_use: list[str] = field(default_factory=list)
    """Unreferenced here, but marked used within the retention (another cluster's)."""
    uploads_removed: list[str] = field(default_factory=list)
    applied: bool = False


def seconds(text: str) -> float:
    """A duration such as ``7d``, ``36h`` or ``90s``."""
    if text.endswith("d") and text[:-1].isdigit():
        return int(text[:-1]) * 86400.0
    return parse_duration(text).total_seconds()


def referenced(kube: Kube) -> set[str]:
    """Every engine key this cluster's objects name: EngineBuilds' current and previous
    engines, what EngineDeployments serve, and the keys of build Jobs."""
    keys: set[str | None] = set()
    for eb in kube.list_custom(EB_PLURAL):
        for engine in (eb.get("status") or {}).get("engines") or []:
            keys |= {engine.get("key"), engine.get("previousKey")}
    for ed in kube.list_custom(ED_PLURAL):
        keys |= {p.get("engineKey") for p in (ed.get("status") or {}).get("products") or []}
    for job in kube.list_build_jobs(KEY_LABEL):
        keys.add((job["metadata"].get("annotations") or {}).get(KEY_ANNOTATION))
    return {k for k in keys if k}


def collect(store: EngineStore, keep: Iterable[str], *, retention: float, apply: bool,
            uploads_after: float, say: Callable[[str], None] = print) -> Report:
    """Find (and with ``apply``, delete) the engines of ``store`` not in ``keep`` and unused
    for ``retention`` seconds; with ``apply``, also uploads no manifest committed, older than
    ``uploads_after`` seconds (those of a run killed mid-delete among them)."""
    keep = set(keep)
    report = Report(store=store.uri, applied=apply)
    for key in store.list_keys():
        manifest = store.read_manifest(key)
        if manifest is None:
            continue
        report.engines += 1
        report.bytes += manifest.total_bytes
        if key in keep:
            continue
        unused = store.unused_for(key)
        if unused is None:
            continue
        if unused < retention:
            report.kept_in_use.append(key)
            say(f"keep    {key}  used {unused / 3600:.1f} h ago (not referenced here)")
            continue
        if apply:
            again = store.unused_for(key)  # another cluster may have marked it meanwhile
            if again is None or again < retention:
                report.kept_in_use.append(key)
                continue
            store.delete(key)
        report.deleted.append(key)
        report.reclaimed_bytes += manifest.total_bytes
        say(f"{'deleted' if apply else 'delete '} {key}  {manifest.total_bytes} bytes, unused "
            f"for {unused / 86400:.1f} d")
    if apply:
        report.uploads_removed = store.collect_garbage(uploads_after)
        report.engines -= len(report.deleted)
        report.bytes -= report.reclaimed_bytes
        store.put_blob(REPORT, json.dumps(asdict(report)).encode())
    say(f"{store.uri}: {len(report.deleted)} engines ({report.reclaimed_bytes} bytes) "
        f"{'deleted' if apply else 'to delete (dry run: nothing deleted; --apply deletes)'}, "
        f"{len(report.kept_in_use)} kept as used elsewhere, {report.engines} engines in all")
    log.info("gc of %s: %s", store.uri, ", ".join(short_key(k) for k in report.deleted)
             or "nothing to delete")
    return report


def last_report(store: EngineStore) -> dict[str, Any] | None:
    """The last applied run's report, for the operator's metrics."""
    data = store.get_blob(REPORT)
    return None if data is None else dict(json.loads(data))
