"""Bad input, each case with the error type a caller can catch and the words that tell them what
is wrong: environment values, manifests and locks, hostile or broken archives, libraries and
models that are not what they claim, prompts that are not text, caches that cannot be written.

Pure validation runs in this process; anything that loads native code runs in a fresh one.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from _tarballs import tarball
from release_fixtures import Release

from llama_runtime.fetch.archive import safe_extract
from llama_runtime.config import resolve
from llama_runtime.errors import (CacheError, ConfigError, ManifestError, UnsafeArchiveError)
from llama_runtime.variants import select
from llama_runtime.variants.manifest import Lock, Manifest, read_lock

SHA = "ab" * 32
VARIANT = {"archive": "v.tar.gz", "sha256": SHA, "size": 10, "os": "linux", "arch": "x86_64",
           "backend": "cpu", "requires": {}, "libraries": ["libllama.so"]}
MANIFEST = {"schema": 1, "llama_cpp": "b1", "variants": {"v": VARIANT}}
LOCK = {"repo": "o/r", "revision": "v1", "commit": "c" * 40, "manifest": MANIFEST}


# 1. environment --------------------------------------------------------------------------------

ENV_CASES = [
    ("backend-unknown", {"LLAMA_BACKEND": "gpu"}, "LLAMA_BACKEND='gpu' is not a known backend"),
    ("backend-spaced", {"LLAMA_BACKEND": "cuda 12"}, "valid values: auto, cpu"),
    ("timeout-negative", {"LLAMA_RUNTIME_TIMEOUT": "-1"}, "must be a positive number of seconds"),
    ("timeout-zero", {"LLAMA_RUNTIME_TIMEOUT": "0"}, "must be a positive number of seconds"),
    ("timeout-nan", {"LLAMA_RUNTIME_TIMEOUT": "nan"}, "must be a positive number of seconds"),
    ("timeout-words", {"LLAMA_RUNTIME_TIMEOUT": "abc"}, "LLAMA_RUNTIME_TIMEOUT='abc' is not a number"),
    ("offline-maybe", {"LLAMA_RUNTIME_OFFLINE": "maybe"}, "LLAMA_RUNTIME_OFFLINE='maybe' is not a boolean"),
    ("hf-offline-maybe", {"HF_HUB_OFFLINE": "maybe"}, "HF_HUB_OFFLINE='maybe' is not a boolean"),
    ("auto-download-sometimes", {"LLAMA_RUNTIME_AUTO_DOWNLOAD": "sometimes"}, "use 1 or 0"),
    ("strict-2", {"LLAMA_RUNTIME_STRICT": "2"}, "LLAMA_RUNTIME_STRICT='2' is not a boolean"),
    ("allow-http-perhaps", {"LLAMA_RUNTIME_ALLOW_HTTP": "perhaps"}, "LLAMA_RUNTIME_ALLOW_HTTP='perhaps'"),
    ("endpoint-ftp", {"LLAMA_RUNTIME_ENDPOINT": "ftp://x"}, "must be an http:// or https:// URL"),
    ("endpoint-bare-host", {"LLAMA_RUNTIME_ENDPOINT": "hub.example.com"}, "must be an http:// or https:// URL"),
    ("endpoint-plain-http-remote", {"LLAMA_RUNTIME_ENDPOINT": "http://hub.example.com"},
     "uses plain http:// to another machine"),
    ("hf-endpoint-plain-http-lan", {"HF_ENDPOINT": "http://10.0.0.5:8080"}, "LLAMA_RUNTIME_ALLOW_HTTP=1"),
]


@pytest.mark.parametrize("environ, fragment", [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES])
def test_bad_environment_value(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(environ=environ)
    assert isinstance(info.value, ValueError) and fragment in str(info.value)


def test_unknown_variant_names_the_known_ones() -> None:
    manifest = Manifest.parse(MANIFEST)
    settings = resolve(environ={"LLAMA_RUNTIME_VARIANT": "nope"})
    with pytest.raises(ManifestError, match=r"variant 'nope' is not in the manifest; known: v\."):
        select(manifest, variant=settings.variant)


def test_target_that_is_neither_variant_nor_file() -> None:
    from llama_runtime.install import _target

    settings = resolve(environ={"LLAMA_RUNTIME_TARGET": "missing-file.json"})
    with pytest.raises(ConfigError, match="LLAMA_RUNTIME_TARGET='missing-file.json' is neither a variant"
                                          r" name \(v\) nor a profile file"):
        _target(settings, Manifest.parse(MANIFEST))


# 2. manifests and locks ----------------------------------------------------------------------


def _edit(path: str, value: Any) -> dict[str, Any]:
    """LOCK with one key (dotted path) replaced; value ``...`` deletes it."""
    data = copy.deepcopy(LOCK)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


LOCK_CASES = [
    ("schema-2", _edit("manifest.schema", 2), "manifest schema 2 is not supported"),
    ("schema-missing", _edit("manifest.schema", ...), "manifest schema None is not supported"),
    ("variants-empty", _edit("manifest.variants", {}), "the manifest has no variants"),
    ("variants-list", _edit("manifest.variants", [VARIANT]), "the manifest has no variants"),
    ("manifest-not-object", _edit("manifest", "[]"), "the manifest is not a JSON object"),
    ("variant-not-object", _edit("manifest.variants.v", "x"), "variant 'v' is not an object"),
    ("variant-missing-keys", _edit("manifest.variants.v.sha256", ...), "variant 'v' lacks sha256"),
    ("sha256-uppercase", _edit("manifest.variants.v.sha256", SHA.upper()), "is not 64 lowercase hex digits"),
    ("sha256-short", _edit("manifest.variants.v.sha256", "ab12"), "is not 64 lowercase hex digits"),
    ("size-zero", _edit("manifest.variants.v.size", 0), "size 0 is not a positive integer"),
    ("size-bool", _edit("manifest.variants.v.size", True), "size True is not a positive integer"),
    ("libraries-empty", _edit("manifest.variants.v.libraries", []), "libraries must be a non-empty list"),
    ("library-climbs-out", _edit("manifest.variants.v.libraries", ["../libevil.so"]),
     "library '../libevil.so' is not a plain file name"),
    ("archive-in-folder", _edit("manifest.variants.v.archive", "a/v.tar.gz"), "is not a plain file name"),
    ("archive-trailing-newline", _edit("manifest.variants.v.archive", "v.tar.gz\n"), "is not a plain file name"),
    ("requires-list", _edit("manifest.variants.v.requires", ["glibc"]), "requires must be an object"),
    ("lock-missing-commit", _edit("commit", ...), "the lock lacks commit"),
    ("lock-short-commit", _edit("commit", "abc123"), "is not a 40-hex commit sha"),
    ("lock-not-object", ["repo"], "the lock is not a JSON object"),
]


@pytest.mark.parametrize("data, fragment", [c[1:] for c in LOCK_CASES], ids=[c[0] for c in LOCK_CASES])
def test_malformed_lock_or_manifest(data: Any, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        Lock.parse(data)
    assert isinstance(info.value, ValueError) and fragment in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    (None, "no binary lock at"),
], ids=["lock-non-json", "lock-empty-file", "lock-missing-file"])
def test_unreadable_lock_file(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "binaries.lock.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ManifestError, match=fragment) as info:
        read_lock(path)
    assert str(path) in str(info.value)


# 3. archives ----------------------------------------------------------------------------------


REG, OK = tarfile.REGTYPE, ("libllama.so", tarfile.REGTYPE, "")
ARCHIVE_CASES = [
    ("dotdot", [OK, ("../evil.so", REG, "")], "'../evil.so' climbs out of the folder"),
    ("dotdot-deep", [OK, ("a/../../evil.so", REG, "")], "climbs out of the folder"),
    ("absolute", [OK, ("/etc/evil.so", REG, "")], "'/etc/evil.so' has an absolute path"),
    ("backslash", [OK, ("..\\evil.dll", REG, "")], "climbs out of the folder"),
    ("windows-drive", [OK, ("C:evil.dll", REG, "")], "has an absolute path"),
    ("symlink-out", [OK, ("libggml.so", tarfile.SYMTYPE, "/usr/lib/libc.so.6")],
     "is a symbolic link to '/usr/lib/libc.so.6'"),
    ("symlink-inside", [OK, ("libggml.so", tarfile.SYMTYPE, "libllama.so")], "is a symbolic link"),
    ("hardlink-out", [OK, ("libggml.so", tarfile.LNKTYPE, "../../etc/passwd")], "is a hard link to"),
    ("directory", [OK, ("sub", tarfile.DIRTYPE, "")], "is not a regular file"),
    ("fifo", [OK, ("pipe", tarfile.FIFOTYPE, "")], "is not a regular file"),
    ("char-device", [OK, ("null", tarfile.CHRTYPE, "")], "is not a regular file"),
    ("duplicate", [OK, OK], "'libllama.so' appears more than once"),
    ("missing-listed-library", [("libggml.so", REG, "")], "lacks libllama.so; it holds libggml.so"),
]


@pytest.mark.parametrize("members, fragment", [c[1:] for c in ARCHIVE_CASES], ids=[c[0] for c in ARCHIVE_CASES])
def test_hostile_archive_is_refused_before_writing(tmp_path: Path, members: list[Any], fragment: str) -> None:
    archive = tmp_path / "v.tar.gz"
    archive.write_bytes(tarball(*members, content=b"x"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest, ["libllama.so"])
    assert isinstance(info.value, ValueError) and fragment in str(info.value)
    assert list(dest.iterdir()) == []  # nothing written, not even the good member
    assert not (tmp_path / "evil.so").exists()


@pytest.mark.parametrize("cut, fragment", [
    (0, "is not a readable tar archive"),
    (None, "is not a readable tar archive"),
    (4096, "truncated or corrupt"),
], ids=["empty-file", "not-gzip", "truncated-gzip"])
def test_broken_archive(tmp_path: Path, cut: int | None, fragment: str) -> None:
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:  # incompressible bodies: a cut lands inside the members
        for name in ("libggml.so", "libllama.so"):
            info = tarfile.TarInfo(name)
            info.size = 65536
            tar.addfile(info, io.BytesIO(os.urandom(65536)))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is a text file, not an archive\n" * 20 if cut is None else good.read_bytes()[:cut])
    with pytest.raises(UnsafeArchiveError, match=fragment):
        safe_extract(bad, tmp_path / "dest", ["libllama.so"])


def test_extra_unlisted_files_are_kept_recorded_and_policed(tmp_path: Path) -> None:
    """Decision: an archive may hold files the manifest does not list (publish packs variant.json,
    a licence): the lock's sha256 covers the whole archive. They are recorded with their hashes,
    and a file that appears later in the folder makes the cache entry invalid (ggml loads any
    plugin it finds there), so it is fetched again."""
    from llama_runtime.fetch.cache import install, lookup, verify_entry
    from llama_runtime.fetch.hashing import sha256_file

    archive = tmp_path / "v.tar.gz"
    archive.write_bytes(tarball(OK, ("NOTICE.txt", REG, ""), content=b"x"))
    variant = Manifest.parse({**MANIFEST, "variants": {"v": {**VARIANT, "sha256": sha256_file(archive),
                                                              "size": archive.stat().st_size}}}).get("v")
    folder = install(tmp_path / "cache", variant, archive, {"kind": "test"})
    record = json.loads((folder / "llama-runtime.json").read_text())
    assert set(record["files"]) == {"libllama.so"} and set(record["extra_files"]) == {"NOTICE.txt"}
    assert lookup(tmp_path / "cache", variant) == folder and verify_entry(folder) == []
    (folder / "libggml-planted.so").write_bytes(b"\x7fELF")
    assert lookup(tmp_path / "cache", variant) is None
    assert verify_entry(folder) == ["libggml-planted.so: not from the archive (added later)"]


# 4. libraries, models, prompts and caches (fresh processes) -----------------------------------

PROBE = """
import json, sys, llama_runtime
try:
    exec(sys.argv[1])
    out = {"ok": True}
except BaseException as exc:
    out = {"ok": False, "types": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
print(json.dumps(out))
"""


def _probe(release: Release, env: dict[str, str], code: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE, code], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(release.tree)}, cwd=release.tree)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def libdir(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("bad-input") / "cache"
    out = _probe(release, release.env(cache), "print(json.dumps(llama_runtime.load().to_dict()), file=sys.stderr)")
    assert out["ok"], out
    return next(p for p in (cache / "0.1.0").iterdir() if p.is_dir() and not p.name.startswith("."))


def _lib(folder: Path) -> Path:
    return next(p for p in sorted(folder.iterdir()) if p.name.startswith("libllama"))


@pytest.mark.slow
def test_library_that_is_not_a_shared_object(release: Release, tmp_path: Path) -> None:
    fake = tmp_path / "libllama.so"
    fake.write_text("#!/bin/sh\necho not a library\n")
    out = _probe(release, release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(fake)), "llama_runtime.load()")
    assert not out["ok"] and "LibraryLoadError" in out["types"] and "OSError" in out["types"], out
    assert str(fake) in out["message"] and ("invalid ELF header" in out["message"] or "too short" in out["message"])


@pytest.mark.slow
def test_library_missing_symbols(release: Release, libdir: Path, tmp_path: Path) -> None:
    base = next(p for p in libdir.iterdir() if p.name.startswith("libggml-base"))
    out = _probe(release, release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(base)), "llama_runtime.load()")
    assert not out["ok"] and "LibraryLoadError" in out["types"], out
    assert "lacks" in out["message"] and "symbol(s) this llama-runtime needs" in out["message"]
    assert "llama_model_load_from_file" in out["message"]


@pytest.mark.slow
@pytest.mark.parametrize("make, fragment", [
    (lambda model: b"PK\x03\x04 a zip, not a model" * 8, "is not a GGUF model (it starts with b'PK\\x03\\x04'"),
    (lambda model: b"", "is not a GGUF model (it starts with b''"),
    (lambda model: model[: len(model) // 3], "llama.cpp could not load"),
    (lambda model: model[:64], "llama.cpp could not load"),
], ids=["model-zip", "model-empty", "model-truncated-third", "model-header-only"])
def test_bad_model_file(release: Release, libdir: Path, tiny_model: Path, tmp_path: Path,
                        make: Any, fragment: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(make(tiny_model.read_bytes()))
    env = release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(_lib(libdir)))
    out = _probe(release, env, f"llama_runtime.Llama({str(bad)!r})")
    assert not out["ok"] and "ModelError" in out["types"] and "ValueError" in out["types"], out
    assert fragment in out["message"] and str(bad) in out["message"]


@pytest.mark.slow
def test_model_path_missing(release: Release, libdir: Path, tmp_path: Path) -> None:
    env = release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(_lib(libdir)))
    out = _probe(release, env, "llama_runtime.Llama('/nonexistent/model.gguf')")
    assert not out["ok"] and "ModelError" in out["types"], out
    assert "does not exist" in out["message"]


@pytest.mark.slow
def test_non_utf8_prompt(release: Release, libdir: Path, tiny_model: Path, tmp_path: Path) -> None:
    # a str holding a lone surrogate (what os.fsdecode makes of invalid bytes) is not encodable text
    env = release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(_lib(libdir)))
    out = _probe(release, env, f"llama_runtime.Llama({str(tiny_model)!r}).generate('Hi \\udcff', max_tokens=2)")
    assert not out["ok"] and "ValueError" in out["types"], out
    assert "surrogates not allowed" in out["message"] or "UTF-8" in out["message"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (see test_crashes for a read-only mount)")
def test_unwritable_cache_by_permissions(tmp_path: Path) -> None:
    from llama_runtime.fetch.ensure import ensure_variant

    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    lock = Lock.parse(LOCK)
    settings = resolve(environ={"LLAMA_RUNTIME_CACHE": str(root / "cache")})
    with pytest.raises(CacheError, match="LLAMA_RUNTIME_CACHE"):
        ensure_variant(lock.manifest.get("v"), lock, settings)


def test_cache_path_that_is_a_file(tmp_path: Path) -> None:
    from llama_runtime.fetch.ensure import ensure_variant

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    lock = Lock.parse(LOCK)
    settings = resolve(environ={"LLAMA_RUNTIME_CACHE": str(blocker), "LLAMA_RUNTIME_ENDPOINT": "http://127.0.0.1:9"})
    with pytest.raises(CacheError) as info:
        ensure_variant(lock.manifest.get("v"), lock, settings)
    assert isinstance(info.value, OSError)
    assert str(blocker) in str(info.value) and "set LLAMA_RUNTIME_CACHE to a writable folder" in str(info.value)


@pytest.mark.slow
def test_explicit_library_is_a_folder(release: Release, libdir: Path, tmp_path: Path) -> None:
    out = _probe(release, release.env(tmp_path / "c", LLAMA_RUNTIME_LIB=str(libdir)), "llama_runtime.load()")
    assert not out["ok"] and "LibraryLoadError" in out["types"], out
    assert "does not exist" in out["message"] or "not a file" in out["message"]
