"""Credentials for ``kiln.kubeapi``: kubeconfig forms, in-cluster files, refusals."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from kiln.kubeapi import ApiError, ConfigError, from_kubeconfig, in_cluster


def _write(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> str:
    doc = {"current-context": "c",
           "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                        {"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "clusters": [{"name": "k", "cluster": {"server": "https://k:6443/", **cluster}}],
           "users": [{"name": "u", "user": user}]}
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    creds = from_kubeconfig(_write(
        tmp_path, {"client-certificate": "u.crt", "client-key": "/abs/u.key"},
        {"certificate-authority": "ca.crt"}))
    assert creds.server == "https://k:6443"
    assert creds.ca_file == str(tmp_path / "ca.crt")
    assert creds.cert_file == str(tmp_path / "u.crt") and creds.key_file == "/abs/u.key"
    assert creds.token is None and not creds.insecure


def test_inline_data_and_tokens(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    creds = from_kubeconfig(_write(
        tmp_path, {"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY"),
                   "token": "t0k"},
        {"certificate-authority-data": b64("CA"), "insecure-skip-tls-verify": True}))
    assert creds.ca_data == "CA" and creds.insecure and creds.token == "t0k"
    assert creds.cert_file and Path(creds.cert_file).read_text() == "CERT"
    assert creds.key_file and Path(creds.key_file).read_text() == "KEY"
    assert Path(creds.key_file).stat().st_mode & 0o077 == 0  # private


def test_the_kubeconfig_env_names_the_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, {"token": "t"}, {})
    monkeypatch.setenv("KUBECONFIG", f"{path}:/elsewhere")
    assert from_kubeconfig().token == "t"


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}},
                                  {"auth-provider": {"name": "gcp"}}])
def test_plugins_are_refused_by_name(tmp_path: Path, user: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="exec and auth-provider credentials"):
        from_kubeconfig(_write(tmp_path, user, {}))


def test_a_missing_file_or_context_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig"):
        from_kubeconfig(str(tmp_path / "absent"))
    (tmp_path / "bad").write_text("current-context: nope\ncontexts: []\n")
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        from_kubeconfig(str(tmp_path / "bad"))


def test_in_cluster_reads_the_service_account(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert in_cluster(tmp_path) is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert in_cluster(tmp_path) is None  # no token mounted
    (tmp_path / "token").write_text("abc")
    creds = in_cluster(tmp_path)
    assert creds is not None and creds.server == "https://[fd00::1]:6443"
    assert creds.token_file == str(tmp_path / "token")
    assert creds.ca_file == str(tmp_path / "ca.crt")


def test_api_errors_carry_the_status_message() -> None:
    error = ApiError(422, "Unprocessable Entity",
                     '{"kind":"Status","message":"spec.x: Invalid value"}')
    assert error.message == "spec.x: Invalid value"
    assert ApiError(502, "Bad Gateway", "<html>upstream</html>").message == "<html>upstream</html>"
