"""Find and load libllama through the priority chain, first match wins:

1. an explicit library (``LLAMA_RUNTIME_LIB`` / ``configure(library=...)``), loaded as is;
2. the library shipped in the wheel (``_libs/``), if it still fits this machine and settings;
3. the versioned cache, for each compatible variant best first;
4. a download into that cache (unless disabled or offline);
5. an error that lists every step tried and why it failed.

A candidate that fails to load is logged with the OS loader's message and the next one is
tried; ``LLAMA_RUNTIME_STRICT=1`` turns any such fallback into an error.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import (DownloadError, IntegrityError, LibraryLoadError, LibraryNotFoundError,
                     LlamaRuntimeError)

if TYPE_CHECKING:
    from ..native.binding import Native
    from ..plugins.prove import PluginChoice
    from ..probe import MachineProfile
    from ..variants import Lock, Selection, Variant

log = logging.getLogger("llama_runtime")
# llama.cpp's own log is quiet unless the application configures logging for it
logging.getLogger("llama_runtime.native").addHandler(logging.NullHandler())
_DLL_DIRECTORIES: list[Any] = []  # handles of os.add_dll_directory, kept for the process
REPORT = "selection.json"
FIX_WHEEL = "pip install --no-cache-dir --force-reinstall llama-runtime"


@dataclass
class Library:
    """A loaded libllama and where it came from."""

    path: Path
    directory: Path
    source: str  # explicit | installed | cache | download
    variant: str | None
    sha256: str | None
    native: Native
    attempts: list[str] = field(default_factory=list)
    plugin: dict[str, Any] | None = None  # the CPU plugin's proof (plugins.prove.PluginChoice)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "directory": str(self.directory), "source": self.source,
                "variant": self.variant, "sha256": self.sha256, "attempts": self.attempts,
                "plugin": self.plugin}


@dataclass
class Step:
    """One place the chain may take a library from."""

    source: str
    variant: Variant | None
    folder: Path | None  # None: must be downloaded first
    note: str = ""


def installed_dir() -> Path:
    """The library shipped in the wheel: ``llama_runtime/_libs``, or, for an editable install
    (which imports this file from the source tree), ``llama_runtime_libs`` in site-packages."""
    here = Path(__file__).resolve().parent.parent / "_libs"
    if (here / REPORT).is_file():
        return here
    import sys

    for entry in sys.path:
        candidate = Path(entry or ".") / "llama_runtime_libs"
        if (candidate / REPORT).is_file():
            return candidate
    return here


def read_build_report(folder: Path | None = None) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(((folder or installed_dir()) / REPORT).read_text(encoding="utf-8"))
        return report
    except (OSError, ValueError):
        return None


def effective_request(settings: Settings, report: dict[str, Any] | None) -> tuple[str, str | None]:
    """The backend and variant asked for: run-time settings when set, else the install's."""
    backend, variant = settings.backend, settings.variant
    built = (report or {}).get("request") or {}
    if settings.sources.get("backend") is None and built.get("backend"):
        backend = built["backend"]
    if settings.sources.get("variant") is None and built.get("variant"):
        variant = built["variant"]
    return backend, variant


def plan(settings: Settings, *, profile: MachineProfile | None = None, lock: Lock | None = None,
         ) -> tuple[list[Step], Selection | None, list[str]]:
    """The ordered steps the chain would try, the selection behind them, and notes on skips."""
    if settings.library is not None:
        return [Step("explicit", None, settings.library)], None, []
    from ..fetch.cache import lookup
    from ..fetch.trust import trusted_lock
    from ..variants import select

    lock = lock or trusted_lock(settings)
    report = read_build_report()
    backend, variant = effective_request(settings, report)
    if profile is None:  # selection reads levels/features, never archspec's name: skip it (B6)
        from ..probe import probe

        profile = probe(detail=False)
    selection = select(lock.manifest, profile, backend=backend, variant=variant)
    shipped = (report or {}).get("selected")
    notes = []
    if shipped and selection.ranked[:1] != [shipped]:
        notes.append(_misfit_message(shipped, selection, report or {}))
    steps: list[Step] = []
    for name in selection.ranked:
        v = lock.manifest.variants[name]
        cached = lookup(settings.cache_dir, v)
        if name == shipped:  # still runs here, even if no longer the best: tried in its rank
            steps.append(Step("installed", v, installed_dir()))
        elif cached is not None:
            steps.append(Step("cache", v, cached))
        elif settings.auto_download:
            steps.append(Step("download", v, None))
        else:
            notes.append(f"{name}: not cached, and downloads are disabled (LLAMA_RUNTIME_AUTO_DOWNLOAD=0)")
    return steps, selection, notes


def _misfit_message(shipped: str, selection: Selection, report: dict[str, Any]) -> str:
    best = selection.ranked[0] if selection.ranked else None
    built = report.get("profile_summary") or (report.get("request") or {}).get("target") or "another machine"
    known = {c.name: c for c in selection.candidates}
    if shipped not in known:
        why = "it is not in this release's lock"
    elif known[shipped].compatible:
        why = f"{best} fits this machine better ({'; '.join(known[best].reasons)})" if best else "?"
    else:
        why = "; ".join(known[shipped].reasons)
    return (f"the library shipped in the wheel ({shipped}, built for: {built}) no longer fits: {why}."
            f" The wheel was probably reused from pip's cache; fix it with `{FIX_WHEEL}`")


def check_generation(found: str | None, what: str, settings: Settings) -> None:
    """Refuse a llama.cpp generation whose struct layouts the binding has not been checked
    against (ABI guard; see ``native/generations.py`` for the evidence behind each one)."""
    from ..native import generations

    if found and settings.abi_check and not generations.is_compatible(found):
        raise LibraryLoadError(
            f"{what} is llama.cpp {generations.normalize(found)}, but this llama-runtime's binding"
            f" is checked only against generations {generations.describe()}; its structs would be"
            " misread (crashes, garbage). Use the library llama-runtime selects, or set"
            " LLAMA_RUNTIME_ABI_CHECK=0 if you know better.")


def open_step(step: Step, settings: Settings, profile: MachineProfile | None = None) -> Library:
    from ..native.binding import Native
    from ..native.generations import from_filename

    if step.source == "explicit":
        path = Path(step.folder or "")
        if not path.is_file():
            raise LibraryLoadError(f"LLAMA_RUNTIME_LIB={path} does not exist.")
        other_os = foreign_binary(path)
        if other_os:
            raise LibraryLoadError(f"LLAMA_RUNTIME_LIB={path} is {other_os}; point it at a"
                                   " libllama built for this machine, or unset it.")
        check_generation(from_filename(path.name), str(path), settings)
        folder = path.parent
        allow_dll_folder(folder)
        dl = any(folder.glob("libggml-cpu*.so")) or any(folder.glob("ggml-cpu*.dll"))
        native = Native.open([path], backend_dir=folder if dl else None)
        return Library(path, folder, "explicit", None, None, native)
    assert step.variant is not None and step.folder is not None
    v, folder = step.variant, step.folder
    # the manifest says which llama.cpp; an npm library name says it too (libllama.v0.4.0.so)
    declared = v.extra.get("llama_cpp") or from_filename(v.libraries[-1])
    check_generation(declared, f"variant {v.name}", settings)
    allow_dll_folder(folder)
    preflight(v, folder)
    paths = [folder / name for name in v.libraries]
    sha256 = _lib_sha256(folder, v.libraries[-1])
    choice = prove_plugin(v, folder, sha256, settings, profile)
    if choice.mode == "explicit":
        import os

        assert choice.cpu_plugin is not None
        from ..plugins.prove import gpu_plugins

        native = Native.open(paths, cpu_plugin=folder / choice.cpu_plugin,
                             extra_plugins=gpu_plugins(list(v.plugins), folder, v.os, os.environ))
    else:
        native = Native.open(paths, backend_dir=folder if v.backend_dl else None)
    if v.backend != "cpu" and not any(d["type"] in ("gpu", "igpu") for d in native.devices()):
        hint = (" ggml's Vulkan backend skips software devices (llvmpipe, lavapipe); to use one"
                " anyway set GGML_VK_VISIBLE_DEVICES=0." if v.backend == "vulkan" else "")
        raise LibraryLoadError(f"{v.name} loaded, but ggml found no {v.backend} device"
                               f" (devices: {', '.join(d['name'] for d in native.devices()) or 'none'})."
                               + hint)
    return Library(paths[-1], folder, step.source, v.name, sha256, native, plugin=choice.to_dict())


def prove_plugin(v: Variant, folder: Path, sha256: str | None, settings: Settings,
                 profile: MachineProfile | None) -> PluginChoice:
    """The CPU plugin to load (``plugins.prove``): from the proof record, or test runs on first use.

    A plugin that crashed in its test run is a fallback: a WARNING naming it and the signal, an
    error under ``LLAMA_RUNTIME_STRICT=1``. A plugin skipped because the OS disables a register
    state it needs is selection, not a fallback (the same as a variant the CPU cannot run).
    """
    from ..plugins.prove import choose

    if profile is None:
        from ..probe import probe

        profile = probe(detail=False)
    choice = choose(v, folder, sha256, profile.cpu, profile.os, settings.cache_dir)
    for file, why in sorted(choice.os_skipped.items()):
        log.info("%s: not using the CPU plugin %s, which %s", v.name, file, why)
    message = choice.warning(v.name)
    if message and settings.strict:
        raise LibraryLoadError(message)
    if message:
        log.warning("%s", message)
    return choice


def foreign_binary(path: Path) -> str | None:
    """"a PE x86_64 DLL or executable, built for windows; this machine runs linux" when
    ``path`` is a library of another OS (the OS loader would only say "invalid ELF header")."""
    from .binformat import OS_FORMAT, identify
    from ..probe.cpu import os_name

    here, found = os_name(), identify(path)
    built = next((name for name, fmt in OS_FORMAT.items() if fmt == found.format), None)
    if built is None or built == here:
        return None
    return f"{found.describe()}, built for {built}; this machine runs {here}"


def allow_dll_folder(folder: Path) -> None:
    """On Windows, let the loader find a library's sibling DLLs (never by changing PATH)."""
    import os
    import sys

    if sys.platform == "win32" and hasattr(os, "add_dll_directory"):
        _DLL_DIRECTORIES.append(os.add_dll_directory(str(folder)))


# ggml's backend plugin of each GPU backend (GGML_BACKEND_DL builds): libggml-vulkan.so on
# Linux, ggml-vulkan.dll on Windows
GPU_PLUGINS = {"cuda": "ggml-cuda", "vulkan": "ggml-vulkan", "rocm": "ggml-hip", "metal": "ggml-metal"}


def preflight(v: Variant, folder: Path) -> None:
    """Load a GPU variant's native dependencies and backend plugin alone first.

    ggml skips a plugin that fails to load without saying why, and would quietly run on the
    CPU. Loading it here first turns a missing ``libcudart``/``libcuda`` into an error carrying
    the OS loader's message (and the pip line that provides it), before anything else of the
    variant is in the process. NVIDIA's runtime wheels are loaded from site-packages first.
    """
    import ctypes

    from .nativedeps import pip_line, resolve_all

    prefix = GPU_PLUGINS.get(v.backend)
    if not prefix:
        return
    deps = resolve_all(list(v.extra.get("external_libraries") or ()))
    for name in v.files:
        if name.removeprefix("lib").startswith(prefix):
            try:
                ctypes.CDLL(str(folder / name))
            except OSError as exc:
                missing = [d for d in deps if not d["found"]]
                fix = ""
                if v.python_requires and any((d["provider"] or "").startswith("nvidia-") for d in missing):
                    fix = f"; install the CUDA runtime wheels: {pip_line(v.python_requires)}"
                names = ", ".join(f"{d['name']} ({d['provider'] or '?'})" for d in missing)
                raise LibraryLoadError(f"the {v.backend} backend of {v.name} does not load: {exc}"
                                       + (f"; missing: {names}" if names else "") + fix) from exc


def _lib_sha256(folder: Path, name: str) -> str | None:
    from ..fetch.cache import read_record

    record = read_record(folder) or read_build_report(folder) or {}
    return ((record.get("files") or {}).get(name) or {}).get("sha256")


def _realize(step: Step, settings: Settings, lock: Lock) -> Step:
    if step.folder is not None:
        return step
    from ..fetch.ensure import ensure_variant

    assert step.variant is not None
    folder, how = ensure_variant(step.variant, lock, settings)
    return Step(how, step.variant, folder)


def _fallback(message: str, settings: Settings, attempts: list[str]) -> None:
    attempts.append(message)
    if settings.strict:
        raise LibraryLoadError(message + " (LLAMA_RUNTIME_STRICT=1 makes this an error)")
    log.warning("%s", message)


def resolve(settings: Settings, *, profile: MachineProfile | None = None, lock: Lock | None = None) -> Library:
    """Run the chain once and return the first library that loads."""
    if lock is None and settings.library is None:
        from ..fetch.trust import trusted_lock

        lock = trusted_lock(settings)
    if profile is None and settings.library is None:  # one probe for the plan and the plugin proof
        from ..probe import probe

        profile = probe(detail=False)
    steps, selection, notes = plan(settings, profile=profile, lock=lock)
    attempts: list[str] = []
    fetch_errors: list[LlamaRuntimeError] = []
    for warning in selection.warnings if selection is not None else []:
        _fallback(warning, settings, [])
    for note in notes:
        _fallback(note, settings, attempts)
    for step in steps:
        where = step.variant.name if step.variant else str(step.folder)
        if step.source == "download" and any(type(e) is not IntegrityError for e in fetch_errors):
            attempts.append(f"download {where}: not tried, the hub or mirror failed above")
            continue
        try:
            real = _realize(step, settings, lock) if lock is not None else step
            library = open_step(real, settings, profile)
        except LlamaRuntimeError as exc:
            if step.source == "explicit":
                raise
            if isinstance(exc, (DownloadError, IntegrityError)):
                fetch_errors.append(exc)
            _fallback(f"{step.source} {where}: {exc}", settings, attempts)
            continue
        library.attempts = attempts
        if selection is not None and library.variant != selection.selected:
            _fallback(f"using {library.variant} instead of {selection.selected}", settings, [])
        return library
    message = _nothing_loaded(settings, selection, attempts)
    if fetch_errors:  # keep the class, so `except IntegrityError` / `except DownloadError` still works
        raise type(fetch_errors[0])(message) from fetch_errors[0]
    raise LibraryNotFoundError(message)


def _nothing_loaded(settings: Settings, selection: Selection | None, attempts: list[str]) -> str:
    lines = ["no llama.cpp library could be loaded. Tried:"]
    lines += [f"  - {a}" for a in attempts] or ["  - nothing: no compatible variant"]
    if selection is not None and not selection.ranked:
        lines += [f"  - {c.name}: {'; '.join(c.reasons)}" for c in selection.candidates]
    lines.append("Set LLAMA_RUNTIME_LIB to a libllama you built, allow downloads"
                 " (LLAMA_RUNTIME_AUTO_DOWNLOAD=1, not offline), or run `llama-runtime doctor`.")
    return "\n".join(lines)


_lock = threading.Lock()
_loaded: Library | None = None


def load(settings: Settings | None = None) -> Library:
    """Run the priority chain once per process and cache the result (see :func:`resolve`)."""
    global _loaded
    with _lock:
        if _loaded is None:
            if settings is None:
                from ..config import current_settings

                settings = current_settings()
            _loaded = resolve(settings)
        return _loaded
