"""Weights on a Hugging Face hub: identified by the commit sha of a revision."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from kiln.errors import AccessDenied, InvalidInput, NotFound, Unavailable
from kiln.sources.base import Progress, WeightsIdentity, digest_of

_URI = re.compile(r"^hf://([A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*)"
                  r"(?:@([A-Za-z0-9][-A-Za-z0-9_./]*))?$")


class HuggingFaceSource:
    def __init__(self, uri: str, *, credentials: Mapping[str, str] | None = None) -> None:
        match = _URI.match(uri)
        if match is None:
            raise InvalidInput(f"{uri!r} is not a Hugging Face URI such as "
                               "hf://org/name@revision")
        self.uri = uri
        self.repo, self.revision = match.group(1), match.group(2) or "main"
        creds = dict(credentials or {})
        self.token = creds.get("HF_TOKEN") or os.environ.get("HF_TOKEN")
        self.endpoint = creds.get("HF_ENDPOINT") or os.environ.get("HF_ENDPOINT")

    def _sha(self) -> str:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo, revision=self.revision)
        except RevisionNotFoundError as error:
            raise NotFound(f"{self.uri}: revision {self.revision} not found") from error
        except GatedRepoError as error:
            raise AccessDenied(f"{self.uri}: gated; set HF_TOKEN in credentialsSecret "
                               "with access") from error
        except RepositoryNotFoundError as error:
            raise NotFound(f"{self.uri}: repository not found (or private without a "
                           "token)") from error
        except HfHubHTTPError as error:
            raise Unavailable(f"{self.uri}: {error}") from error
        except OSError as error:
            raise Unavailable(f"{self.uri}: {error}") from error
        if not info.sha:
            raise Unavailable(f"{self.uri}: the hub returned no commit sha")
        return str(info.sha)

    def identity(self) -> WeightsIdentity:
        sha = self._sha()
        return WeightsIdentity(digest_of("hf", [self.repo, sha]), "hf",
                               {"repo": self.repo, "revision": self.revision, "sha": sha})

    def download(self, dest: Path, *, progress: Progress | None = None) -> WeightsIdentity:
        from huggingface_hub import snapshot_download

        identity = self.identity()
        sha = identity.details["sha"]
        try:
            snapshot_download(self.repo, revision=sha, local_dir=str(dest), token=self.token,
                              endpoint=self.endpoint)
        except OSError as error:
            raise Unavailable(f"download {self.repo}@{sha}: {error}") from error
        return identity
