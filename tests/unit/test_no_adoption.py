"""kiln applies to an object only when its controller reference is on it, and deletes a
Deployment only as it read it (review of issue 19, finding 9)."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.errors import NameTaken
from kiln.kube.client import Kube


class Api:
    def __init__(self, existing: dict[str, Any] | None) -> None:
        self.existing, self.calls = existing, []  # type: ignore[var-annotated]

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        self.calls.append((method, path, body))
        return self.existing if method == "GET" else {}


def _deployment(refs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "d", "namespace": "ns",
                                               "resourceVersion": "7", "uid": "d-uid",
                                               "ownerReferences": refs}}


OURS = {"kind": "EngineDeployment", "name": "chat", "uid": "ed-uid", "controller": True}


def test_an_owner_reference_without_controller_is_not_kilns() -> None:
    api = Api(_deployment([{**OURS, "controller": False}]))
    with pytest.raises(NameTaken):
        Kube(api).apply(_deployment([OURS]))  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["GET"]
    api = Api(_deployment([OURS]))
    Kube(api).apply(_deployment([OURS]))  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["GET", "PATCH"]


def test_a_deployment_is_deleted_only_as_it_was_read() -> None:
    api = Api(None)
    Kube(api).delete_deployment("ns", "d", uid="d-uid", resource_version="7")  # type: ignore[arg-type]
    (method, _, body), = api.calls
    assert method == "DELETE" and body["preconditions"] == {"uid": "d-uid",
                                                            "resourceVersion": "7"}
