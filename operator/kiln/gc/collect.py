"""``kiln gc``: delete the engines nobody needs from the store.

An engine goes only if no EngineBuild of this cluster references it (a current engine, the
previous one an EngineDeployment may fall back to, a key being built) and nobody marked it
used within the retention: every operator sharing the store rewrites ``last-used`` beside the
manifests of the engines its cluster references, so clusters never delete each other's
engines. A marker says how often its writer re-marks (``every``): an engine marked less than
``max(retention, 2 * every)`` ago stays. Just before each delete the cluster's references are
listed again (an EngineBuild may have reported the key Cached meanwhile). The manifest goes
first, and only the one read (an engine half deleted is no engine, its files are an
uncommitted upload the next run removes); other uploads of the key (a rebuild) stay; timing
caches (``cache/``) are kept. Dry-run unless ``apply``. A retention below
``KILN_GC_MIN_RETENTION`` (default 1h) is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from kiln import EB_PLURAL, ED_PLURAL
from kiln.api.common import parse_duration
from kiln.contract.key import short_key
from kiln.domain.labels import ED_LABEL, KEY_ANNOTATION, KEY_LABEL
from kiln.errors import InvalidInput
from kiln.kube.client import Kube
from kiln.store import EngineStore

log = logging.getLogger(__name__)
MIN_RETENTION_ENV = "KILN_GC_MIN_RETENTION"
DEFAULT_MIN_RETENTION = "1h"
REPORT = "gc-report.json"
MAX_REPORT = 1 << 20
"""The largest report read back (bytes): anyone with the store's credentials can write one."""
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


def check_retention(retention: float, env: dict[str, str] | None = None) -> float:
    """``retention`` if it is at least the floor (``KILN_GC_MIN_RETENTION``), else
    ``InvalidInput`` saying why: a retention shorter than the operators' marking deletes
    engines in use by other clusters."""
    text = (os.environ if env is None else env).get(MIN_RETENTION_ENV) or DEFAULT_MIN_RETENTION
    floor = seconds(text)
    if retention < floor:
        raise InvalidInput(
            f"a retention of {retention:.0f} s is below the floor of {floor:.0f} s "
            f"({MIN_RETENTION_ENV}={text}): engines other clusters use but marked longer ago "
            "could be deleted. Give a longer --retention")
    return retention


def referenced(kube: Kube) -> set[str]:
    """Every engine key this cluster's objects name: EngineBuilds' current and previous
    engines, what EngineDeployments serve (their status, and the serving Deployments' key
    annotation), and the keys of build Jobs."""
    keys: set[str | None] = set()
    for eb in kube.list_custom(EB_PLURAL):
        for engine in (eb.get("status") or {}).get("engines") or []:
            keys |= {engine.get("key"), engine.get("previousKey")}
    for ed in kube.list_custom(ED_PLURAL):
        keys |= {p.get("engineKey") for p in (ed.get("status") or {}).get("products") or []}
    for job in kube.list_build_jobs(KEY_LABEL):
        keys.add((job["metadata"].get("annotations") or {}).get(KEY_ANNOTATION))
    found = kube.api.request("GET", "/apis/apps/v1/deployments",
                             query={"labelSelector": ED_LABEL}) or {}
    for deployment in found.get("items") or []:
        template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        keys.add((template.get("annotations") or {}).get(KEY_ANNOTATION))
    return {k for k in keys if k}


def _idle(store: EngineStore, key: str, retention: float) -> tuple[float, float] | None:
    """How long engine ``key`` has been unused, and how long it must be to go (the retention,
    or two of its marker's writer's intervals if longer); None if it is not committed."""
    marker = store.last_used(key)
    if marker is not None:
        age, every = marker
        return age, max(retention, 2 * every) if every else retention
    unused = store.unused_for(key)
    return None if unused is None else (unused, retention)


def collect(store: EngineStore, keep: Iterable[str], *, retention: float, apply: bool,
            uploads_after: float, say: Callable[[str], None] = print,
            recheck: Callable[[], Iterable[str]] | None = None) -> Report:
    """Find (and with ``apply``, delete) the engines of ``store`` not in ``keep`` and unused
    for ``retention`` seconds; with ``apply``, also uploads no manifest committed, older than
    ``uploads_after`` seconds (those of a run killed mid-delete among them). ``recheck``
    lists the references again, called just before each delete."""
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
        idle = _idle(store, key, retention)
        if idle is None:
            continue
        unused, window = idle
        if unused < window:
            report.kept_in_use.append(key)
            say(f"keep    {key}  used {unused / 3600:.1f} h ago (not referenced here)")
            continue
        if apply:
            if recheck is not None and key in set(recheck()):  # reported Cached meanwhile
                say(f"keep    {key}  referenced here now")
                continue
            again = _idle(store, key, retention)  # another cluster may have marked it
            if again is None or again[0] < again[1]:
                report.kept_in_use.append(key)
                continue
            if not store.delete(key):  # its manifest changed (a rebuild committed): kept
                continue
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
    data = store.get_blob(REPORT, MAX_REPORT)
    return None if data is None else dict(json.loads(data))
