"""The serving container's version guard: refuse an engine built with another TensorRT-LLM or
TensorRT than this image has, before the server loads it (TensorRT's own refusal is opaque).

Runs in the server image, which has no kiln: the standard library only, and every name of the
operator/pod contract (exit code, termination log) comes on the command line, rendered from
:mod:`kiln.contract`. ``kiln fetch-engine --guard-dir`` copies this file next to the engine.
Versions are read from the packages Python would import (``tensorrt_llm/version.py``,
``__version__``), else from their distributions' metadata; the builder records them with this
same file (``--print-versions``, kiln.builder.toolchain), and they are compared in PEP 440
normal form (``packaging.version`` when the image has it, else ``normalize``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import sys
from importlib import metadata
from pathlib import Path

CHECKED = {"tensorrt_llm": ("tensorrt_llm", "tensorrt-llm"),
           "tensorrt": ("tensorrt", "tensorrt_cu13", "tensorrt-cu13", "tensorrt_cu12",
                        "tensorrt-cu12")}
"""Manifest version key → the module, then distributions that may carry it."""
_VERSION = re.compile(r"""^__version__\s*[:=][^"']*["']([^"']+)["']""", re.MULTILINE)


def installed(module: str, distributions: tuple[str, ...]) -> str | None:
    """The version of ``module`` as this image would import it, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in ("version.py", "__init__.py"):
            path = Path(folder) / name
            match = _VERSION.search(path.read_text(errors="replace")) if path.is_file() else None
            if match:
                return match.group(1)
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


_PRE = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "c": "rc", "rc": "rc", "pre": "rc",
        "preview": "rc"}
_PEP440 = re.compile(r"^v?(?P<release>[0-9]+(?:\.[0-9]+)*)"
                     r"(?:[-_.]?(?P<pre>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pren>[0-9]*))?"
                     r"(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post>[0-9]*))?"
                     r"(?:[-_.]?dev[-_.]?(?P<dev>[0-9]*))?"
                     r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?$")


def normalize(version: str) -> str:
    """``version`` in PEP 440 normal form (``1.2.0-RC.1`` → ``1.2.0rc1``); as it is when it is
    not a PEP 440 version."""
    text = version.strip().lower()
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        pass
    else:
        try:
            return str(Version(text))
        except InvalidVersion:
            return text
    match = _PEP440.match(text)
    if not match:
        return text
    out = ".".join(str(int(n)) for n in match["release"].split("."))
    if match["pre"]:
        out += _PRE[match["pre"]] + str(int(match["pren"] or 0))
    if match["post"] is not None:
        out += f".post{int(match['post'] or 0)}"
    if match["dev"] is not None:
        out += f".dev{int(match['dev'] or 0)}"
    if match["local"]:
        out += "+" + re.sub(r"[-_]", ".", match["local"])
    return out


def versions(checked: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``installed`` for each key (a module name) → its distributions; those found."""
    found = {key: installed(key, tuple(dists)) for key, dists in checked.items()}
    return {key: version for key, version in found.items() if version}


def mismatches(manifest: dict[str, object]) -> list[str]:
    """``what: engine X, image Y`` for each checked version that differs (or is missing)."""
    versions = manifest.get("versions")
    recorded = versions if isinstance(versions, dict) else {}
    out = []
    for key, (module, *dists) in CHECKED.items():
        built = recorded.get(key)
        if not built:
            continue
        here = installed(module, (module, *dists))
        if here is None or normalize(here) != normalize(str(built)):
            out.append(f"{key}: engine built with {built}, this image has {here or 'none'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="version_guard", description=__doc__)
    p.add_argument("engine", type=Path, nargs="?",
                   help="the engine directory (with manifest.json)")
    p.add_argument("--exit-code", type=int)
    p.add_argument("--reason", default="VersionMismatch")
    p.add_argument("--termination-log", type=Path, default=None)
    p.add_argument("--print-versions", metavar="JSON", default=None,
                   help="print the versions of {module: [distributions]} as JSON and exit "
                        "(the builder records them this way)")
    args = p.parse_args(argv)
    if args.print_versions is not None:
        print(json.dumps(versions(json.loads(args.print_versions))))
        return 0
    if args.engine is None or args.exit_code is None:
        p.error("an engine directory and --exit-code are needed")
    path = args.engine / "manifest.json"
    if not path.is_file():
        print(f"version guard: no {path} (a checkpoint, not an engine): nothing to check",
              file=sys.stderr)
        return 0
    manifest = json.loads(path.read_text())
    backend = ((manifest.get("inputs") or {}).get("build") or {}).get("backend")
    if backend == "pytorch":
        print("version guard: a PyTorch-backend checkpoint: no engine to check", file=sys.stderr)
        return 0
    wrong = mismatches(manifest)
    if not wrong:
        print("version guard: the engine's TensorRT-LLM and TensorRT match this image",
              file=sys.stderr)
        return 0
    message = (f"engine {manifest.get('key', '?')} cannot run in this server image: "
               + "; ".join(wrong) + ". Use a server image with the builder image's versions "
               "(spec.server.image), or rebuild the engine with this image's toolchain")
    print(f"version guard: {args.reason}: {message}", file=sys.stderr)
    if args.termination_log is not None:
        body = {"reason": args.reason, "message": message[:3500], "retryable": False,
                "exitCode": args.exit_code}
        with contextlib.suppress(OSError):
            args.termination_log.write_text(json.dumps(body, sort_keys=True))
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main())
