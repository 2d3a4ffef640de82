"""Fixtures of the builder tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from builder.support import Bed


@pytest.fixture
def bed(s3_endpoint: str, s3_client: Any, tmp_path: Path) -> Bed:
    """moto's S3 with a fresh store bucket, and a scratch directory for one builder run."""
    store = "engines-" + os.urandom(4).hex()
    s3_client.create_bucket(Bucket=store)
    return Bed(s3_endpoint, s3_client, store, tmp_path)
