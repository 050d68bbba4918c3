"""HTTPS with a company CA: the loopback hub served over TLS with a certificate from a CA made in
the test. Without the CA bundle the download fails clearly; with SSL_CERT_FILE it works."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.hubserver import HubServer
from release_fixtures import Release, run_source_py

pytestmark = pytest.mark.slow
LOAD = "import json, llama_runtime as l; lib = l.load(); print(json.dumps({'source': lib.source}))"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def company_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=llama-runtime test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


@pytest.fixture(scope="module")
def tls_hub(release: Release, company_ca: Path) -> Iterator[str]:
    """A second server over the release's store, speaking TLS only."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(company_ca / "server.pem", company_ca / "server.key")
    with HubServer(release.hub.data_dir) as hub:
        assert hub.httpd is not None
        hub.httpd.socket = ctx.wrap_socket(hub.httpd.socket, server_side=True)
        yield hub.url.replace("http://", "https://")


def test_untrusted_certificate_fails_clearly(release: Release, tls_hub: str, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=tls_hub)
    env.pop("SSL_CERT_FILE", None)
    proc = run_source_py(release, env, LOAD)
    assert proc.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr and "SSL_CERT_FILE" in proc.stderr


def test_company_ca_bundle_is_honoured(release: Release, tls_hub: str, company_ca: Path, tmp_path: Path) -> None:
    env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=tls_hub, SSL_CERT_FILE=str(company_ca / "ca.pem"))
    proc = run_source_py(release, env, LOAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["source"] == "download"


def test_https_through_an_http_proxy_tunnels_with_connect(release: Release, tls_hub: str, company_ca: Path,
                                                          tmp_path: Path) -> None:
    # the stdlib transport (the only one pip's build environment has) speaks CONNECT itself
    from counting_proxy import counting_proxy

    with counting_proxy() as (proxy, forwarded):
        env = release.env(tmp_path / "cache", LLAMA_RUNTIME_ENDPOINT=tls_hub, HTTPS_PROXY=proxy,
                          SSL_CERT_FILE=str(company_ca / "ca.pem"))
        proc = run_source_py(release, env, LOAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["source"] == "download"
    port = tls_hub.rsplit(":", 1)[1]
    assert forwarded and set(forwarded) == {f"CONNECT 127.0.0.1:{port}"}
