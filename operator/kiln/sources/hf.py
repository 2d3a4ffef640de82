"""Weights on a Hugging Face hub: identified by the commit sha a revision points at."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from kiln.errors import AccessDenied, InvalidInput, KilnError, NotFound, Unavailable, quoted
from kiln.sources import bounded
from kiln.sources.base import Progress, WeightsIdentity, digest_of

log = logging.getLogger(__name__)

_URI = re.compile(r"^hf://([A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*)"
                  r"(?:@([A-Za-z0-9][-A-Za-z0-9_./]*))?$")


RepoType = Literal["model", "dataset"]


def hf_repo(uri: str) -> str:
    """``org/name`` of ``hf://org/name@revision``; ``InvalidInput`` for a malformed URI."""
    match = _URI.match(uri)
    if match is None:
        raise InvalidInput(f"{uri!r} is not a Hugging Face URI such as "
                           "hf://org/name@revision")
    return match.group(1)

HUB_SECONDS = 30.0
"""The longest a model-info call may take, the whole call (connect, headers, every byte of
the body): a hub that hangs or drips holds a reconcile no longer."""
HUB_READ_SECONDS = 10.0
"""Seconds without a byte from the hub."""
HUB_MAX_BYTES = 16 << 20
"""The largest model-info answer read (a repository of thousands of files is a few MiB)."""
DEFAULT_HUB = "https://huggingface.co"


class HuggingFaceSource:
    """``hf://org/name@revision`` (revision: a branch, tag or commit; default ``main``).

    The token is ``HF_TOKEN`` from the credentials, else (``ambient``) the environment's; the
    hub is ``HF_ENDPOINT`` from the credentials, else the environment, else huggingface.co.
    The operator opens a tenant's source with ``ambient`` false where the tenant names the
    hub: its own token never goes there.
    """

    def __init__(self, uri: str, *, credentials: Mapping[str, str] | None = None,
                 repo_type: RepoType = "model", ambient: bool = True) -> None:
        match = _URI.match(uri)
        if match is None:
            raise InvalidInput(f"{uri!r} is not a Hugging Face URI such as "
                               "hf://org/name@revision")
        self.uri = uri
        self.repo_type = repo_type
        """``model`` for weights, ``dataset`` for calibration data."""
        self.repo, self.revision = match.group(1), match.group(2) or "main"
        creds = dict(credentials or {})
        self.token = creds.get("HF_TOKEN") or (
            os.environ.get("HF_TOKEN") if ambient else None) or None
        self.endpoint = creds.get("HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or None

    def _hub_error(self, error: Exception, what: str) -> KilnError:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(error, RevisionNotFoundError):
            return NotFound(f"{self.uri}: revision {self.revision!r} does not exist in "
                            f"{self.repo}")
        if isinstance(error, GatedRepoError):
            return AccessDenied(f"{self.uri}: the repository is gated; put an HF_TOKEN with "
                                "access in the credentials Secret")
        if isinstance(error, RepositoryNotFoundError):
            hint = "check the token" if self.token else "set HF_TOKEN if it is private"
            return NotFound(f"{self.uri}: repository {self.repo} not found ({hint})")
        status = getattr(getattr(error, "response", None), "status_code", 0) or 0
        if isinstance(error, HfHubHTTPError) and status in (401, 403):
            return AccessDenied(f"{self.uri}: the hub refused the token ({status}); check "
                                "HF_TOKEN in the credentials Secret")
        if isinstance(error, HfHubHTTPError) and 400 <= status < 500 and status != 429:
            return InvalidInput(f"{self.uri}: {what}: {quoted(error)}")
        return Unavailable(f"{self.uri}: {what}: {type(error).__name__}: {quoted(error)}")

    def _answer_error(self, status: int, code: str, body: bytes) -> KilnError:
        """The hub's error answer (its ``X-Error-Code``, as huggingface_hub reads it)."""
        if code == "RevisionNotFound":
            return NotFound(f"{self.uri}: revision {self.revision!r} does not exist in "
                            f"{self.repo}")
        if code == "GatedRepo":
            return AccessDenied(f"{self.uri}: the repository is gated; put an HF_TOKEN with "
                                "access in the credentials Secret")
        if code == "RepoNotFound" or status == 404:
            hint = "check the token" if self.token else "set HF_TOKEN if it is private"
            return NotFound(f"{self.uri}: repository {self.repo} not found ({hint})")
        said = quoted(body.decode(errors="replace"))
        if status in (401, 403):
            return AccessDenied(f"{self.uri}: the hub refused the token ({status}); check "
                                "HF_TOKEN in the credentials Secret")
        if 400 <= status < 500 and status != 429:
            return InvalidInput(f"{self.uri}: reading the model info: {status} {said}")
        return Unavailable(f"{self.uri}: reading the model info: {status} {said}")

    def _info_url(self) -> str:
        kind = "datasets" if self.repo_type == "dataset" else "models"
        return (f"{(self.endpoint or DEFAULT_HUB).rstrip('/')}/api/{kind}/{self.repo}"
                f"/revision/{quote(self.revision, safe='')}")

    def _sha(self) -> str:
        """The commit sha of the revision: one model-info request, bounded as a whole
        (``HUB_SECONDS``, ``HUB_MAX_BYTES``, tighter inside tighter ``bounded.within``),
        however slowly the hub sends its headers or body."""
        headers = {"Accept": "application/json", "User-Agent": "kiln"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with bounded.within(HUB_SECONDS, HUB_MAX_BYTES,
                            f"{self.uri}: reading the model info") as limits:
            status, answered, body = bounded.exchange("GET", self._info_url(), headers,
                                                      limits=limits,
                                                      read_timeout=HUB_READ_SECONDS)
        if status != 200:
            raise self._answer_error(status, answered.get("X-Error-Code", ""), body[:4096])
        try:
            sha = json.loads(body).get("sha")
        except (ValueError, AttributeError) as error:
            raise Unavailable(f"{self.uri}: the hub's model info is not JSON") from error
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise Unavailable(f"{self.uri}: the hub returned no commit sha")
        return sha

    def identity(self) -> WeightsIdentity:
        """sha256 over (repo, commit sha); one model-info request, nothing downloaded."""
        sha = self._sha()
        return WeightsIdentity(digest_of("hf", [self.repo, sha]), "hf",
                               {"repo": self.repo, "revision": self.revision, "sha": sha})

    def download(self, dest_dir: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        """Fetch the commit the revision points at now (by its sha, so a branch moving
        meanwhile cannot mix two commits)."""
        from huggingface_hub import constants, snapshot_download

        # No call kiln did not ask for: huggingface_hub 2.5 fetches
        # ``{HF_ENDPOINT}/api/agent-harnesses`` to write its User-Agent unless telemetry is off
        # (utils/_headers.py ``build_hf_headers``; _detect_agent.py ``_fetch_registry``).
        constants.HF_HUB_DISABLE_TELEMETRY = True
        identity = self.identity()
        sha = identity.details["sha"]
        try:
            snapshot_download(self.repo, revision=sha, local_dir=str(dest_dir),
                              repo_type=self.repo_type, token=self.token or False,
                              endpoint=self.endpoint)
        except Exception as error:
            raise self._hub_error(error, f"downloading commit {sha}") from error
        _drop_hub_metadata(dest_dir)
        if progress:
            size = sum(p.stat().st_size for p in dest_dir.rglob("*") if p.is_file())
            progress(size, size)
        return identity


def _drop_hub_metadata(dest_dir: Path) -> None:
    """``snapshot_download(local_dir=...)`` leaves ``.cache/huggingface/`` behind; the weights
    directory holds weights only."""
    cache = dest_dir / ".cache"
    shutil.rmtree(cache / "huggingface", ignore_errors=True)
    if cache.is_dir() and not any(cache.iterdir()):
        cache.rmdir()

