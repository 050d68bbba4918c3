"""Which proxy a request goes through and which CAs TLS trusts, decided as the hub's client does.

The install-time fetch runs in pip's isolated build environment, where ``huggingface_hub`` and
its ``httpx`` flavour are not installed; the stdlib transport of :mod:`llama_runtime.fetch.download`
applies the same rules itself:

* proxy: an explicit one (``LLAMA_RUNTIME_PROXY``) for every URL, as ``httpx.Client(proxy=...)``
  does; else ``HTTP(S)_PROXY``/``ALL_PROXY`` from the environment, with ``NO_PROXY`` applied
  (``urllib``'s reading of them, which matches ``httpx``'s for host names, suffixes and ``*``);
* CAs: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else the system's store, as ``httpcore2``'s
  ``default_ssl_context`` (``truststore`` on Windows and macOS when it is installed).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

PLAIN_PROXY_SCHEMES = ("http",)  # what http.client can speak to; https/socks proxies need httpx


def environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``{scheme: proxy}`` (and ``"no"``: NO_PROXY) from ``*_proxy`` variables, lowercase first,
    as ``urllib.request.getproxies_environment`` reads ``os.environ``."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy") and not name.islower():
            proxies[name[:-6].lower()] = value
    for name, value in environ.items():
        if name.islower() and name.endswith("_proxy"):
            if value:
                proxies[name[:-6]] = value
            else:
                proxies.pop(name[:-6], None)
    if "REQUEST_METHOD" in environ:  # httpoxy: under CGI, HTTP_PROXY is a request header
        proxies.pop("http", None)
    return proxies


def proxy_for(url: str, explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL ``url`` goes through, or None for a direct connection."""
    if explicit:
        return explicit
    from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed

    proxies = environment_proxies(os.environ if environ is None else environ)
    target = urlsplit(url)
    chosen = proxies.get(target.scheme) or proxies.get("all")
    host = f"{target.hostname}:{target.port}" if target.port else str(target.hostname)
    if not chosen or proxy_bypass_environment(host, proxies):
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


def proxy_authorization(proxy: str) -> dict[str, str]:
    """``Proxy-Authorization`` for a proxy URL with ``user:password@`` in it."""
    import base64
    from urllib.parse import unquote

    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(secret).decode("ascii")}


def ssl_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The context ``verify=True`` gives in the hub's client (see the module docstring)."""
    import sys

    env = os.environ if environ is None else environ
    if env.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    if env.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=env["SSL_CERT_DIR"])
    if sys.platform in ("win32", "darwin"):
        try:
            import truststore

            return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # type: ignore[no-any-return,unused-ignore]
        except ImportError:  # the build environment: the OS store as Python loads it
            pass
    return ssl.create_default_context()
