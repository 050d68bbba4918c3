"""Settings, resolved in one place.

Precedence (highest first): explicit arguments (``configure()``, CLI flags) > build config
settings (``pip install -C key=value``) > environment variables > ``[tool.llama-runtime]`` in
pyproject.toml > defaults. The environment is passed in as a mapping and read at call time,
never at import. Every resolved value remembers where it came from, for ``doctor``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

BACKENDS = ("auto", "cpu", "cuda", "cuda11", "cuda12", "cuda13", "rocm", "vulkan", "metal")
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 600.0

# setting name -> environment variable (the contract in DESIGN.md)
ENV_VARS: dict[str, str] = {
    "backend": "LLAMA_BACKEND",
    "variant": "LLAMA_RUNTIME_VARIANT",
    "library": "LLAMA_RUNTIME_LIB",
    "target": "LLAMA_RUNTIME_TARGET",
    "skip_download": "LLAMA_RUNTIME_SKIP_DOWNLOAD",
    "auto_download": "LLAMA_RUNTIME_AUTO_DOWNLOAD",
    "endpoint": "LLAMA_RUNTIME_ENDPOINT",
    "repo": "LLAMA_RUNTIME_REPO",
    "revision": "LLAMA_RUNTIME_REVISION",
    "cache_dir": "LLAMA_RUNTIME_CACHE",
    "mirror": "LLAMA_RUNTIME_MIRROR",
    "offline": "LLAMA_RUNTIME_OFFLINE",
    "timeout": "LLAMA_RUNTIME_TIMEOUT",
    "proxy": "LLAMA_RUNTIME_PROXY",
    "strict": "LLAMA_RUNTIME_STRICT",
    "abi_check": "LLAMA_RUNTIME_ABI_CHECK",
    "allow_http": "LLAMA_RUNTIME_ALLOW_HTTP",
}
# `-C key=value` spellings accepted by the build backend
CONFIG_SETTING_KEYS: dict[str, str] = {
    "backend": "backend",
    "variant": "variant",
    "target": "target",
    "skip-download": "skip_download",
    "endpoint": "endpoint",
    "repo": "repo",
    "revision": "revision",
    "cache-dir": "cache_dir",
    "mirror": "mirror",
    "offline": "offline",
    "timeout": "timeout",
    "proxy": "proxy",
    "strict": "strict",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    backend: str = "auto"
    variant: str | None = None
    library: Path | None = None
    target: str | None = None
    skip_download: bool = False
    auto_download: bool = True
    endpoint: str = DEFAULT_ENDPOINT
    repo: str | None = None
    revision: str | None = None
    cache_dir: Path = field(default_factory=lambda: default_cache_dir({}))
    mirror: Path | None = None
    offline: bool = False
    timeout: float = DEFAULT_TIMEOUT
    proxy: str | None = None
    strict: bool = False
    abi_check: bool = True
    allow_http: bool = False
    token: str | None = field(default=None, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def report(self) -> dict[str, Any]:
        """The settings as JSON-ready data, each with its source; the token is never shown."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "token"):
                continue
            value = getattr(self, f.name)
            out[f.name] = {
                "value": str(value) if isinstance(value, Path) else value,
                "source": self.sources.get(f.name, "default"),
            }
        out["token"] = {"value": "***" if self.token else None,
                        "source": self.sources.get("token", "default")}
        return out


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """The platform's user cache folder plus ``llama-runtime``."""
    if sys.platform == "win32":
        base = environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "llama-runtime" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama-runtime"
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-runtime"


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1 or 0.")


def _parse(name: str, raw: Any, label: str) -> Any:
    """Turn one raw value (a string from the environment, or a Python value) into its type."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if raw is None:
        return None
    if "bool" in str(kind):
        return raw if isinstance(raw, bool) else _parse_bool(label, str(raw))
    if name == "timeout":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}={raw!r} is not a number of seconds.") from None
        if not value > 0:
            raise ConfigError(f"{label}={raw!r} must be a positive number of seconds.")
        return value
    if name == "backend":
        backend = str(raw).strip().lower()
        if backend not in BACKENDS:
            raise ConfigError(
                f"{label}={raw!r} is not a known backend; valid values: {', '.join(BACKENDS)}."
            )
        return backend
    if "Path" in str(kind):
        return Path(os.path.expanduser(str(raw))) if str(raw) else None
    text = str(raw).strip()
    if name == "endpoint":
        if not text.startswith(("http://", "https://")):
            raise ConfigError(f"{label}={raw!r} must be an http:// or https:// URL.")
        return text.rstrip("/")
    return text or None


def parse_config_settings(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Map PEP 517 ``config_settings`` (``-C key=value``) onto setting names.

    Unknown keys are an error: a typo must not silently build the wrong wheel.
    """
    out: dict[str, Any] = {}
    for key, value in (config_settings or {}).items():
        norm = key.strip().lower().replace("_", "-")
        if norm.startswith("--"):
            norm = norm[2:]
        if norm not in CONFIG_SETTING_KEYS:
            raise ConfigError(
                f"unknown config setting {key!r}; valid keys: {', '.join(CONFIG_SETTING_KEYS)}."
            )
        if isinstance(value, list):  # pip passes repeated -C keys as a list
            value = value[-1]
        out[CONFIG_SETTING_KEYS[norm]] = value
    return out


def resolve(
    *,
    arguments: Mapping[str, Any] | None = None,
    config_settings: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    pyproject: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve every setting from its sources; see the module docstring for precedence."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def offer(name: str, raw: Any, source: str, label: str) -> None:
        if name in values or raw is None:
            return
        values[name] = _parse(name, raw, label)
        sources[name] = source

    for name, raw in (arguments or {}).items():
        if name not in ENV_VARS and name != "token":
            raise ConfigError(f"unknown setting {name!r}; valid: {', '.join(ENV_VARS)}.")
        offer(name, raw, "argument", name)
    for name, raw in parse_config_settings(config_settings).items():
        offer(name, raw, "config-settings", f"-C {name.replace('_', '-')}")
    for name, var in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and (raw.strip() or name in ("skip_download", "offline", "strict", "abi_check",
                                                          "allow_http")):
            offer(name, raw, f"env:{var}", var)
    # the Hugging Face variables are honoured as fallbacks
    offer("endpoint", env.get("HF_ENDPOINT") or None, "env:HF_ENDPOINT", "HF_ENDPOINT")
    if env.get("HF_HUB_OFFLINE"):
        offer("offline", env["HF_HUB_OFFLINE"], "env:HF_HUB_OFFLINE", "HF_HUB_OFFLINE")
    offer("token", env.get("HF_TOKEN") or None, "env:HF_TOKEN", "HF_TOKEN")
    for key, raw in (pyproject or {}).items():
        name = key.replace("-", "_")
        if name not in ENV_VARS:
            raise ConfigError(f"unknown key {key!r} in [tool.llama-runtime].")
        offer(name, raw, "pyproject", f"[tool.llama-runtime] {key}")
    if "cache_dir" not in values:
        values["cache_dir"] = default_cache_dir(env)
    settings = Settings(**values, sources=sources)
    check_endpoint(settings)
    return settings


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def check_endpoint(settings: Settings) -> None:
    """Refuse plain HTTP to anything but this machine: the token and the binaries travel over it.

    Loopback (127.0.0.0/8, ::1, localhost) is allowed for tests and local mirrors; a LAN mirror
    without TLS needs ``LLAMA_RUNTIME_ALLOW_HTTP=1``. The sha256 check still guards the bytes,
    but a token sent in clear, or a manifest trusted after an override, would not be.
    """
    from urllib.parse import urlsplit

    url = urlsplit(settings.endpoint)
    if url.scheme == "http" and not settings.allow_http and not is_loopback_host(url.hostname):
        where = settings.sources.get("endpoint", "default")
        raise ConfigError(
            f"endpoint {settings.endpoint} ({where}) uses plain http:// to another machine; use"
            " https://, or set LLAMA_RUNTIME_ALLOW_HTTP=1 if you trust the network to it."
        )


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values replaced (marked as arguments)."""
    sources = dict(settings.sources)
    for name in changes:
        sources[name] = "argument"
    return replace(settings, **changes, sources=sources)
