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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

BACKENDS = ("auto", "cpu", "cuda", "cuda11", "cuda12", "cuda13", "rocm", "vulkan", "metal")
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 600.0
Parser = Callable[[Any, str], Any]  # (raw value, label for messages) -> the typed value

def _parse_bool(raw: Any, label: str) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{label}={raw!r} is not a boolean; use 1 or 0.")


def _parse_timeout(raw: Any, label: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={raw!r} is not a number of seconds.") from None
    if not value > 0:  # also refuses nan
        raise ConfigError(f"{label}={raw!r} must be a positive number of seconds.")
    return value


def _parse_backend(raw: Any, label: str) -> str:
    backend = str(raw).strip().lower()
    if backend not in BACKENDS:
        raise ConfigError(f"{label}={raw!r} is not a known backend; valid values: {', '.join(BACKENDS)}.")
    return backend


def _parse_endpoint(raw: Any, label: str) -> str:
    text = str(raw).strip()
    if not text.startswith(("http://", "https://")):
        raise ConfigError(f"{label}={raw!r} must be an http:// or https:// URL.")
    return text.rstrip("/")


def _parse_path(raw: Any, label: str) -> Path | None:
    return Path(os.path.expanduser(str(raw))) if str(raw) else None


def _parse_text(raw: Any, label: str) -> str | None:
    return str(raw).strip() or None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _setting(default: Any = None, *, env: tuple[str, ...], parse: Parser, build: bool = False,
             pyproject: bool = True, secret: bool = False,
             default_factory: Callable[[], Any] | None = None) -> Any:
    """A settings field whose metadata says where the value comes from and how it is parsed.

    ``env``: the environment variables read, first one set wins (ours, then Hugging Face's
    fallback); ``build``: also a ``-C key=value`` of the build backend (the key is the name with
    dashes); ``pyproject``: allowed in ``[tool.llama-runtime]``; ``secret``: never shown.
    """
    meta = {"env": env, "parse": parse, "build": build, "pyproject": pyproject, "secret": secret}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Every setting; each field's metadata (see :func:`_setting`) names its sources and parser.

    One rule for every environment variable: an empty (or blank) value counts as unset, so the
    next source (pyproject, then the default) decides. ``LLAMA_RUNTIME_OFFLINE=""`` is therefore
    the default (online), exactly as ``LLAMA_RUNTIME_AUTO_DOWNLOAD=""`` is the default (on).
    """

    backend: str = _setting("auto", env=("LLAMA_BACKEND",), parse=_parse_backend, build=True)
    variant: str | None = _setting(env=("LLAMA_RUNTIME_VARIANT",), parse=_parse_text, build=True)
    library: Path | None = _setting(env=("LLAMA_RUNTIME_LIB",), parse=_parse_path)
    target: str | None = _setting(env=("LLAMA_RUNTIME_TARGET",), parse=_parse_text, build=True)
    skip_download: bool = _setting(False, env=("LLAMA_RUNTIME_SKIP_DOWNLOAD",), parse=_parse_bool,
                                   build=True)
    auto_download: bool = _setting(True, env=("LLAMA_RUNTIME_AUTO_DOWNLOAD",), parse=_parse_bool)
    endpoint: str = _setting(DEFAULT_ENDPOINT, env=("LLAMA_RUNTIME_ENDPOINT", "HF_ENDPOINT"),
                             parse=_parse_endpoint, build=True)
    repo: str | None = _setting(env=("LLAMA_RUNTIME_REPO",), parse=_parse_text, build=True)
    revision: str | None = _setting(env=("LLAMA_RUNTIME_REVISION",), parse=_parse_text, build=True)
    cache_dir: Path = _setting(env=("LLAMA_RUNTIME_CACHE",), parse=_parse_path, build=True,
                               default_factory=lambda: default_cache_dir({}))
    mirror: Path | None = _setting(env=("LLAMA_RUNTIME_MIRROR",), parse=_parse_path, build=True)
    offline: bool = _setting(False, env=("LLAMA_RUNTIME_OFFLINE", "HF_HUB_OFFLINE"), parse=_parse_bool,
                             build=True)
    timeout: float = _setting(DEFAULT_TIMEOUT, env=("LLAMA_RUNTIME_TIMEOUT",), parse=_parse_timeout,
                              build=True)
    proxy: str | None = _setting(env=("LLAMA_RUNTIME_PROXY",), parse=_parse_text, build=True)
    strict: bool = _setting(False, env=("LLAMA_RUNTIME_STRICT",), parse=_parse_bool, build=True)
    abi_check: bool = _setting(True, env=("LLAMA_RUNTIME_ABI_CHECK",), parse=_parse_bool)
    allow_http: bool = _setting(False, env=("LLAMA_RUNTIME_ALLOW_HTTP",), parse=_parse_bool)
    token: str | None = _setting(env=("HF_TOKEN",), parse=_parse_text, pyproject=False, secret=True)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def report(self) -> dict[str, Any]:
        """The settings as JSON-ready data, each with its source; a secret (the token) is never shown."""
        out: dict[str, Any] = {}
        for f in _SETTING_FIELDS:
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                value = "***" if value else None
            out[f.name] = {
                "value": str(value) if isinstance(value, Path) else value,
                "source": self.sources.get(f.name, "default"),
            }
        return out


_SETTING_FIELDS = tuple(f for f in fields(Settings) if f.metadata)
# setting name -> its environment variable: a public contract (the README lists them), names
# never change; the token is HF_TOKEN's
ENV_VARS: dict[str, str] = {f.name: f.metadata["env"][0] for f in _SETTING_FIELDS if not f.metadata["secret"]}
# `-C key=value` spellings accepted by the build backend -> setting name
CONFIG_SETTING_KEYS: dict[str, str] = {f.name.replace("_", "-"): f.name for f in _SETTING_FIELDS
                                       if f.metadata["build"]}
_BY_NAME = {f.name: f for f in _SETTING_FIELDS}


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """The platform's user cache folder plus ``llama-runtime``."""
    if sys.platform == "win32":
        base = environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "llama-runtime" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama-runtime"
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-runtime"


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
        values[name] = _BY_NAME[name].metadata["parse"](raw, label)
        sources[name] = source

    for name, raw in (arguments or {}).items():
        if name not in _BY_NAME:
            raise ConfigError(f"unknown setting {name!r}; valid: {', '.join(ENV_VARS)}.")
        offer(name, raw, "argument", name)
    for name, raw in parse_config_settings(config_settings).items():
        offer(name, raw, "config-settings", f"-C {name.replace('_', '-')}")
    for f in _SETTING_FIELDS:
        for var in f.metadata["env"]:
            raw = env.get(var)
            if raw is not None and raw.strip():  # empty or blank: unset (see Settings)
                offer(f.name, raw, f"env:{var}", var)
                break
    for key, raw in (pyproject or {}).items():
        name = key.replace("-", "_")
        if name not in _BY_NAME or not _BY_NAME[name].metadata["pyproject"]:
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


# configure()'s values for this process: they win over the environment, lose to CLI flags
_configured: dict[str, Any] = {}
_configured_guard = threading.Lock()


def remember(arguments: Mapping[str, Any]) -> None:
    """Keep ``configure()``'s arguments (already validated) for every later :func:`current_settings`."""
    with _configured_guard:
        _configured.update(arguments)


def current_settings(environ: Mapping[str, str] | None = None, **arguments: Any) -> Settings:
    """The settings in force now: ``arguments`` (CLI flags) over ``configure()`` over the environment."""
    with _configured_guard:
        given = {**_configured, **arguments}
    return resolve(arguments=given, environ=os.environ if environ is None else environ)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values replaced (marked as arguments)."""
    sources = dict(settings.sources)
    for name in changes:
        sources[name] = "argument"
    return replace(settings, **changes, sources=sources)
