"""Run kiln's Argo CD health scripts the way Argo CD does: Lua 5.1 (gopher-lua's dialect),
the object as the global ``obj``, only the libraries Argo CD opens by default.

Argo CD (``util/lua``) opens the base, table and package libraries and a reduced ``os``;
``string``, ``math``, ``io`` and ``debug`` are closed unless ``useOpenLibs`` is set, so a
script must not call them (``s:upper()`` included). The sandbox here offers the same.

Status objects for tests live in ``argocd_health/<Kind>/<expected status>/<name>.json``; to
add one captured from a real run, write the object there (``save_fixture``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lupa import lua51

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "EngineBuild": ROOT / "charts" / "kiln" / "argocd" / "enginebuild-health.lua",
    "EngineDeployment": ROOT / "charts" / "kiln" / "argocd" / "enginedeployment-health.lua",
}
FIXTURES = Path(__file__).resolve().parent / "argocd_health"
STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")

_SANDBOX = """
local script, obj = ...
local env = {obj = obj, table = table}
for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "select",
                       "tonumber", "tostring", "type", "unpack", "xpcall"}) do
  env[name] = _G[name]
end
getmetatable("").__index = nil  -- no string methods: the string library is closed
local chunk = assert(loadstring(script, "=health.lua"))
setfenv(chunk, env)
local hs = chunk()
return hs.status, hs.message
"""


def health(obj: dict[str, Any], script: Path | None = None) -> tuple[str, str]:
    """(status, message) of ``obj`` by the health script of its kind."""
    path = script or SCRIPTS[obj["kind"]]
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    run = runtime.eval(f"function(...) {_SANDBOX} end")
    status, message = run(path.read_text(), runtime.table_from(obj, recursive=True))
    if status not in STATUSES:
        raise AssertionError(f"{path.name} returned status {status!r}")
    if not isinstance(message, str):
        raise AssertionError(f"{path.name} returned message {message!r}")
    return status, message


def fixtures() -> list[tuple[str, str, Path]]:
    """(kind, expected status, path) of every status object under ``argocd_health/``."""
    return [(p.parent.parent.name, p.parent.name, p)
            for p in sorted(FIXTURES.glob("*/*/*.json"))]


def save_fixture(obj: dict[str, Any], expected: str, name: str) -> Path:
    """Keep a status object (e.g. from an end-to-end run) as a fixture of ``expected``."""
    if expected not in STATUSES or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"bad fixture {expected}/{name}")
    keep = {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj}
    keep["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    path: Path = FIXTURES / str(obj["kind"]) / expected / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=2) + "\n")
    return path
