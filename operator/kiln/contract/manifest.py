"""``manifest.json``: what an engine directory holds; written last, it commits the engine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator

from kiln.api import KilnModel
from kiln.contract.warmup import ArtifactReport

MANIFEST = "manifest.json"
USED = "last-used"
"""Beside the manifest: rewritten (at most daily) by every operator serving the engine; its
age is how long nobody used it (``kiln gc``)."""
TOKENIZER_SUBDIR = "tokenizer"
"""In a tensorrt engine directory: the tokenizer with the model's Hugging Face ``config.json``
and ``generation_config.json`` (the engine's own ``config.json`` is TensorRT-LLM's).
``trtllm-serve --tokenizer`` and Triton's ``tokenizer_dir`` point here."""
MANIFEST_SCHEMA_VERSION = 1
MAX_MANIFEST = 4 << 20
"""The largest ``manifest.json`` read (bytes; tens of thousands of files): a larger one is not
kiln's, and is refused from its size before it is read."""


class FileEntry(KilnModel):
    """One file of an engine."""

    path: str = Field(max_length=1024)
    """Relative to the engine directory, ``/``-separated: no ``..``, ``.`` or empty part, no
    leading ``/``, no ``\\``, no control character (``kiln fetch-engine`` writes it under its
    destination and nowhere else)."""
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        return relative_path(path)


def relative_path(path: str) -> str:
    """``path`` if it names a file under a directory (see ``FileEntry.path``), else
    ``ValueError``."""
    if (not path or path.startswith("/") or "\\" in path or path == MANIFEST
            or any(ord(c) < 0x20 or c == "\x7f" for c in path)
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise ValueError(f"{path[:200]!r} is not a relative path inside the engine directory "
                         "(no '..', '.', empty part, leading '/', backslash or control "
                         "character; not the manifest itself)")
    return path


class Manifest(KilnModel):
    """The commit marker of an engine: its key, inputs, versions and files."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    key: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    """The key's inputs (``kiln.contract.key.key_inputs``)."""
    versions: dict[str, str] = Field(default_factory=dict)
    """What the builder ran: ``tensorrt_llm``, ``tensorrt``, ``kiln``, ..."""
    upload: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    """The upload (a directory under the engine's) whose files this manifest commits; two
    writers of one key never mix their files."""
    files: list[FileEntry] = Field(default_factory=list)
    total_bytes: int = Field(default=0, ge=0)
    build_seconds: float | None = None
    built: dict[str, bool] = Field(default_factory=dict)
    """The plugin features the engine really has (``plugins`` field names, read from its
    ``build_config.plugin_config``); empty for a PyTorch-backend checkpoint."""
    overridden: list[str] = Field(default_factory=list)
    """What trtllm-build changed from the spec, one sentence each."""
    artifacts: ArtifactReport | None = None
    """The artifact set under ``artifacts/`` (``kiln.contract.warmup``): what it was made with
    and on, and the cold and warm start it measured; None: the engine has none."""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("upload")
    @classmethod
    def _one_directory(cls, upload: str) -> str:
        if upload in (".", ".."):
            raise ValueError(f"{upload!r} is not an upload id")
        return upload

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode()
