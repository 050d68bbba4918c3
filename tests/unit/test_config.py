"""Settings: one resolution, precedence, sources, and a clear error for every bad value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.config import (
    BACKENDS,
    DEFAULT_ENDPOINT,
    DEFAULT_TIMEOUT,
    ENV_VARS,
    default_cache_dir,
    parse_config_settings,
    resolve,
    with_overrides,
)
from llama_runtime.errors import ConfigError

# --- precedence and sources --------------------------------------------------------------------

LAYERS: dict[str, Any] = {
    "arguments": {"backend": "cuda12"},
    "config_settings": {"backend": "vulkan"},
    "environ": {"LLAMA_BACKEND": "rocm"},
    "pyproject": {"backend": "cpu"},
}
# (layers present, expected value, expected source)
PRECEDENCE = [
    (("arguments", "config_settings", "environ", "pyproject"), "cuda12", "argument"),
    (("config_settings", "environ", "pyproject"), "vulkan", "config-settings"),
    (("environ", "pyproject"), "rocm", "env:LLAMA_BACKEND"),
    (("pyproject",), "cpu", "pyproject"),
    ((), "auto", None),
]


@pytest.mark.parametrize(("layers", "value", "source"), PRECEDENCE,
                         ids=["argument-wins", "config-settings-beat-env", "env-beats-pyproject",
                              "pyproject-beats-default", "default"])
def test_precedence(layers: tuple[str, ...], value: str, source: str | None) -> None:
    kwargs = {k: LAYERS[k] for k in layers}
    kwargs.setdefault("environ", {})
    settings = resolve(**kwargs)
    assert settings.backend == value
    assert settings.sources.get("backend") == source
    assert settings.report()["backend"] == {"value": value, "source": source or "default"}


def test_none_argument_falls_through_to_the_next_source() -> None:
    settings = resolve(arguments={"backend": None, "timeout": None},
                       environ={"LLAMA_BACKEND": "cpu", "LLAMA_RUNTIME_TIMEOUT": "30"})
    assert (settings.backend, settings.timeout) == ("cpu", 30.0)
    assert settings.sources["timeout"] == "env:LLAMA_RUNTIME_TIMEOUT"


def test_defaults_with_an_empty_environment(tmp_path: Path) -> None:
    settings = resolve(environ={"XDG_CACHE_HOME": str(tmp_path)})
    assert settings.backend == "auto"
    assert settings.endpoint == DEFAULT_ENDPOINT
    assert settings.timeout == DEFAULT_TIMEOUT
    assert (settings.offline, settings.strict, settings.skip_download) == (False, False, False)
    assert settings.auto_download is True
    assert settings.token is None and settings.library is None
    assert dict(settings.sources) == {}


def test_every_env_var_is_read_with_its_source(tmp_path: Path) -> None:
    environ = {
        "LLAMA_BACKEND": "CUDA12", "LLAMA_RUNTIME_VARIANT": "linux-x86_64-cpu",
        "LLAMA_RUNTIME_LIB": str(tmp_path / "libllama.so"), "LLAMA_RUNTIME_TARGET": "target.json",
        "LLAMA_RUNTIME_SKIP_DOWNLOAD": "1", "LLAMA_RUNTIME_AUTO_DOWNLOAD": "0",
        "LLAMA_RUNTIME_ENDPOINT": "http://127.0.0.1:8080/", "LLAMA_RUNTIME_REPO": "org/bins",
        "LLAMA_RUNTIME_REVISION": "v1", "LLAMA_RUNTIME_CACHE": str(tmp_path / "cache"),
        "LLAMA_RUNTIME_MIRROR": str(tmp_path / "mirror"), "LLAMA_RUNTIME_OFFLINE": "yes",
        "LLAMA_RUNTIME_TIMEOUT": "2.5", "LLAMA_RUNTIME_PROXY": "http://proxy:3128",
        "LLAMA_RUNTIME_STRICT": "true",
    }
    s = resolve(environ=environ)
    assert s.backend == "cuda12"  # case-insensitive, stored lower-case
    assert s.library == tmp_path / "libllama.so"
    assert s.endpoint == "http://127.0.0.1:8080"  # trailing slash dropped
    assert (s.skip_download, s.auto_download, s.offline, s.strict) == (True, False, True, True)
    assert s.timeout == 2.5
    assert s.cache_dir == tmp_path / "cache" and s.mirror == tmp_path / "mirror"
    assert (s.variant, s.target, s.repo, s.revision, s.proxy) == (
        "linux-x86_64-cpu", "target.json", "org/bins", "v1", "http://proxy:3128")
    expected = {name: f"env:{var}" for name, var in ENV_VARS.items() if var in environ}
    assert len(expected) == len(environ)
    assert dict(s.sources) == expected


def test_blank_env_values_are_unset_for_every_setting() -> None:
    s = resolve(environ={"LLAMA_BACKEND": "  ", "LLAMA_RUNTIME_VARIANT": "",
                         "LLAMA_RUNTIME_STRICT": ""},
                pyproject={"backend": "cpu", "strict": True})
    assert (s.backend, s.sources["backend"]) == ("cpu", "pyproject")
    assert s.variant is None
    # an empty boolean variable is unset too: the next source decides
    assert (s.strict, s.sources["strict"]) == (True, "pyproject")


BOOLEAN_VARS = [(name, var) for name, var in ENV_VARS.items()
                if isinstance(getattr(resolve(environ={}), name), bool)]


@pytest.mark.parametrize(("name", "var"), BOOLEAN_VARS, ids=[var for _, var in BOOLEAN_VARS])
@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "blank"])
def test_every_empty_boolean_is_its_default(name: str, var: str, blank: str) -> None:
    # LLAMA_RUNTIME_AUTO_DOWNLOAD="" used to be ignored while LLAMA_RUNTIME_OFFLINE="" meant false
    default = getattr(resolve(environ={}), name)
    s = resolve(environ={var: blank})
    assert (getattr(s, name), s.sources.get(name)) == (default, None)
    flipped = resolve(environ={var: blank}, pyproject={name.replace("_", "-"): not default})
    assert (getattr(flipped, name), flipped.sources[name]) == (not default, "pyproject")


def test_the_boolean_settings_are_all_found() -> None:
    assert {var for _, var in BOOLEAN_VARS} == {
        "LLAMA_RUNTIME_SKIP_DOWNLOAD", "LLAMA_RUNTIME_AUTO_DOWNLOAD", "LLAMA_RUNTIME_OFFLINE",
        "LLAMA_RUNTIME_STRICT", "LLAMA_RUNTIME_ABI_CHECK", "LLAMA_RUNTIME_ALLOW_HTTP"}


def test_empty_own_variable_falls_back_to_hugging_face_s() -> None:
    s = resolve(environ={"LLAMA_RUNTIME_OFFLINE": "", "HF_HUB_OFFLINE": "1"})
    assert (s.offline, s.sources["offline"]) == (True, "env:HF_HUB_OFFLINE")


def test_sources_and_parsers_come_from_the_fields() -> None:
    from dataclasses import fields

    from llama_runtime.config import CONFIG_SETTING_KEYS, Settings

    names = [f.name for f in fields(Settings) if f.metadata]
    assert list(ENV_VARS) == [n for n in names if n != "token"]
    assert set(CONFIG_SETTING_KEYS.values()) <= set(names)
    assert all(callable(f.metadata["parse"]) for f in fields(Settings) if f.metadata)


def test_cache_dir_expands_user() -> None:
    s = resolve(environ={"LLAMA_RUNTIME_CACHE": "~/llama-cache"})
    assert s.cache_dir == Path.home() / "llama-cache"


def test_environment_is_read_at_call_time() -> None:
    # the same function, two mappings: nothing is cached between calls
    assert resolve(environ={"LLAMA_BACKEND": "cpu"}).backend == "cpu"
    assert resolve(environ={"LLAMA_BACKEND": "vulkan"}).backend == "vulkan"
    assert resolve(environ={}).backend == "auto"


def test_with_overrides_marks_arguments() -> None:
    base = resolve(environ={"LLAMA_BACKEND": "cpu", "LLAMA_RUNTIME_TIMEOUT": "9"})
    changed = with_overrides(base, backend="metal")
    assert (changed.backend, changed.sources["backend"]) == ("metal", "argument")
    assert changed.sources["timeout"] == "env:LLAMA_RUNTIME_TIMEOUT"
    assert base.backend == "cpu" and base.sources["backend"] == "env:LLAMA_BACKEND"


# --- Hugging Face fallbacks --------------------------------------------------------------------

HF_CASES = [
    ({"HF_ENDPOINT": "https://hf-mirror.example/"}, "endpoint", "https://hf-mirror.example",
     "env:HF_ENDPOINT"),
    ({"HF_ENDPOINT": "https://hf-mirror.example", "LLAMA_RUNTIME_ENDPOINT": "http://127.0.0.1:1"},
     "endpoint", "http://127.0.0.1:1", "env:LLAMA_RUNTIME_ENDPOINT"),
    ({"HF_ENDPOINT": ""}, "endpoint", DEFAULT_ENDPOINT, None),
    ({"HF_HUB_OFFLINE": "1"}, "offline", True, "env:HF_HUB_OFFLINE"),
    ({"HF_HUB_OFFLINE": "1", "LLAMA_RUNTIME_OFFLINE": "0"}, "offline", False,
     "env:LLAMA_RUNTIME_OFFLINE"),
    ({"HF_TOKEN": "hf_secret"}, "token", "hf_secret", "env:HF_TOKEN"),
    ({"HF_TOKEN": ""}, "token", None, None),
]


@pytest.mark.parametrize(("environ", "name", "value", "source"), HF_CASES,
                         ids=["hf-endpoint", "own-endpoint-wins", "empty-hf-endpoint",
                              "hf-hub-offline", "own-offline-wins", "hf-token", "empty-hf-token"])
def test_hugging_face_fallbacks(environ: dict[str, str], name: str, value: Any,
                                source: str | None) -> None:
    s = resolve(environ=environ)
    assert getattr(s, name) == value
    assert s.sources.get(name) == source


def test_bad_hf_endpoint_is_reported_by_its_name() -> None:
    with pytest.raises(ConfigError, match="HF_ENDPOINT='hf-mirror.example'"):
        resolve(environ={"HF_ENDPOINT": "hf-mirror.example"})


def test_report_hides_the_token() -> None:
    s = resolve(environ={"HF_TOKEN": "hf_verysecret"})
    report = s.report()
    assert report["token"] == {"value": "***", "source": "env:HF_TOKEN"}
    assert "hf_verysecret" not in json.dumps(report)
    assert "hf_verysecret" not in repr(s)
    assert set(report) >= set(ENV_VARS) and "sources" not in report
    assert resolve(environ={}).report()["token"] == {"value": None, "source": "default"}


def test_report_is_json_ready(tmp_path: Path) -> None:
    report = resolve(environ={"LLAMA_RUNTIME_CACHE": str(tmp_path)}).report()
    assert report["cache_dir"] == {"value": str(tmp_path), "source": "env:LLAMA_RUNTIME_CACHE"}
    assert json.loads(json.dumps(report)) == report


# --- bad values --------------------------------------------------------------------------------

def test_unknown_backend_lists_every_valid_one() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(environ={"LLAMA_BACKEND": "cuda99"})
    message = str(info.value)
    assert "LLAMA_BACKEND='cuda99'" in message
    for backend in BACKENDS:
        assert backend in message
    assert isinstance(info.value, ValueError)


BAD_VALUES = [
    ({"LLAMA_RUNTIME_OFFLINE": "maybe"}, "LLAMA_RUNTIME_OFFLINE='maybe' is not a boolean"),
    ({"LLAMA_RUNTIME_STRICT": "2"}, "LLAMA_RUNTIME_STRICT='2' is not a boolean"),
    ({"LLAMA_RUNTIME_SKIP_DOWNLOAD": "yesplease"}, "LLAMA_RUNTIME_SKIP_DOWNLOAD='yesplease'"),
    ({"HF_HUB_OFFLINE": "sure"}, "HF_HUB_OFFLINE='sure' is not a boolean"),
    ({"LLAMA_RUNTIME_TIMEOUT": "ten"}, "LLAMA_RUNTIME_TIMEOUT='ten' is not a number of seconds"),
    ({"LLAMA_RUNTIME_TIMEOUT": "0"}, "must be a positive number"),
    ({"LLAMA_RUNTIME_TIMEOUT": "-5"}, "must be a positive number"),
    ({"LLAMA_RUNTIME_TIMEOUT": "nan"}, "must be a positive number"),
    ({"LLAMA_RUNTIME_ENDPOINT": "hub.example.com"}, "must be an http:// or https:// URL"),
    ({"LLAMA_RUNTIME_ENDPOINT": "ftp://hub.example.com"}, "must be an http:// or https:// URL"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_VALUES,
                         ids=["offline-maybe", "strict-2", "skip-download-word", "hf-offline-word",
                              "timeout-word", "timeout-zero", "timeout-negative", "timeout-nan",
                              "endpoint-no-scheme", "endpoint-ftp"])
def test_bad_environment_values(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve(environ=environ)


BAD_SOURCES = [
    ({"arguments": {"offline": "perhaps"}}, "offline='perhaps' is not a boolean"),
    ({"arguments": {"timeout": "soon"}}, "timeout='soon' is not a number"),
    ({"config_settings": {"backend": "gpu"}}, "-C backend='gpu' is not a known backend"),
    ({"config_settings": {"skip-download": "sometimes"}}, "-C skip-download='sometimes'"),
    ({"pyproject": {"timeout": -1}}, r"\[tool.llama-runtime\] timeout=-1 must be a positive"),
    ({"pyproject": {"endpoint": "localhost:8080"}}, r"\[tool.llama-runtime\] endpoint="),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SOURCES,
                         ids=["argument-bool", "argument-timeout", "config-backend",
                              "config-bool", "pyproject-timeout", "pyproject-endpoint"])
def test_bad_values_name_their_source(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(environ={}, **kwargs)


@pytest.mark.parametrize(("raw", "value"),
                         [("1", True), ("TRUE", True), (" on ", True), ("yes", True),
                          ("0", False), ("false", False), ("Off", False), ("no", False)],
                         ids=["1", "TRUE", "padded-on", "yes", "0", "false", "Off", "no"])
def test_boolean_spellings(raw: str, value: bool) -> None:
    assert resolve(environ={"LLAMA_RUNTIME_STRICT": raw}).strict is value


# --- config settings (-C) and pyproject keys ---------------------------------------------------

def test_config_settings_spellings() -> None:
    parsed = parse_config_settings({"--backend": "cpu", "skip_download": "1",
                                    "Cache-Dir": "/tmp/c", "variant": ["a", "b"]})
    assert parsed == {"backend": "cpu", "skip_download": "1", "cache_dir": "/tmp/c",
                      "variant": "b"}  # a repeated -C key: the last one wins, like pip
    assert parse_config_settings(None) == {}


def test_config_settings_reach_settings() -> None:
    s = resolve(config_settings={"skip-download": "1", "timeout": "12"}, environ={})
    assert (s.skip_download, s.timeout) == (True, 12.0)
    assert s.sources["skip_download"] == s.sources["timeout"] == "config-settings"


@pytest.mark.parametrize("key", ["bakend", "library", "auto-download", "token"],
                         ids=["typo", "runtime-only-library", "runtime-only-auto-download",
                              "token"])
def test_unknown_config_setting_fails_with_valid_keys(key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config setting '{key}'.*backend, variant"):
        resolve(config_settings={key: "x"}, environ={})


def test_pyproject_keys_use_dashes() -> None:
    s = resolve(pyproject={"auto-download": False, "cache-dir": "/opt/llama"}, environ={})
    assert (s.auto_download, s.cache_dir) == (False, Path("/opt/llama"))
    assert s.sources["cache_dir"] == "pyproject"


@pytest.mark.parametrize("key", ["bakend", "token", "hf-endpoint"],
                         ids=["typo", "token-not-allowed", "foreign"])
def test_unknown_pyproject_key_fails(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key '{key}' in \[tool.llama-runtime\]"):
        resolve(pyproject={key: "x"}, environ={})


def test_unknown_argument_fails() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'cuda'"):
        resolve(arguments={"cuda": True}, environ={})


# --- cache dir ---------------------------------------------------------------------------------

@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="XDG is Linux's")
@pytest.mark.parametrize(("environ", "expected"),
                         [({"XDG_CACHE_HOME": "/srv/cache"}, Path("/srv/cache/llama-runtime")),
                          ({}, Path.home() / ".cache" / "llama-runtime"),
                          ({"XDG_CACHE_HOME": ""}, Path.home() / ".cache" / "llama-runtime")],
                         ids=["xdg", "unset", "empty"])
def test_default_cache_dir_honours_xdg(environ: dict[str, str], expected: Path) -> None:
    assert default_cache_dir(environ) == expected
    s = resolve(environ=environ)
    assert s.cache_dir == expected and "cache_dir" not in s.sources
