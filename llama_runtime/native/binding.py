"""Load llama.cpp's shared libraries with ctypes and bind the table of ``functions.py``.

Nothing here runs at import time. ``Native.open`` is the one place a library is loaded; it
never touches ``os.environ`` (``PATH``, ``LD_LIBRARY_PATH``): libraries are opened by absolute
path in dependency order, so the loader finds each one already in the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LibraryLoadError
from .functions import CPU_PROCS, FUNCTIONS, Fn
from .generations import describe
from .structs import ggml_log_callback

LLAMA_CPP_GENERATION = "0.5.0"  # the llama.h whose struct layouts structs.py copies
# (the loader also accepts the other generations of generations.COMPATIBLE)

logger = logging.getLogger("llama_runtime.native")

# enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# llama.cpp is chatty at INFO (every model load prints hundreds of lines): keep it at DEBUG,
# and errors at WARNING because the caller gets them again as an exception.
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING,
               4: logging.WARNING}
_GGML_LOG_CONT = 5

_lock = threading.Lock()
_opened: dict[str, Native] = {}
_last_level = [logging.DEBUG]
_capture = threading.local()  # .lines: list of warnings/errors logged by this thread, or unset


def opened() -> list[Native]:
    """The llama.cpp libraries loaded into this process.

    No lock: the fork hook calls this in a child, where a lock another thread held at fork
    time would never be released. Copying the dict is atomic under the GIL.
    """
    return list(_opened.values())


def _on_log(level: int, text: bytes | None, _user_data: Any) -> None:
    # An exception must not escape into C: ctypes would print it and carry on anyway.
    with contextlib.suppress(Exception):
        py_level = _last_level[0] if level == _GGML_LOG_CONT else _LOG_LEVELS.get(level, logging.DEBUG)
        _last_level[0] = py_level
        message = (text or b"").decode("utf-8", "replace").rstrip("\n")
        lines = getattr(_capture, "lines", None)
        if message and lines is not None and py_level >= logging.WARNING:
            lines.append(message)
        if message and logger.isEnabledFor(py_level):
            logger.log(py_level, "%s", message)


# llama.cpp keeps this function pointer for as long as the library is loaded, which is the
# rest of the process (a CDLL is never unloaded): the ctypes thunk must never be collected.
_LOG_CALLBACK = ggml_log_callback(_on_log)


def _load_cdll(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise LibraryLoadError(
            f"could not load the llama.cpp library {path}: {exc}. Check that the file exists, "
            "matches this machine (architecture, glibc) and that its sibling libraries are in "
            "the same folder; `llama-runtime doctor` shows what was tried."
        ) from exc


def _resolve(libs: Sequence[ctypes.CDLL], fn: Fn) -> Any | None:
    """The symbol from the last library that has it (libllama first, then what it links)."""
    for lib in reversed(libs):
        try:
            cfunc = getattr(lib, fn.name)
        except AttributeError:
            continue
        cfunc.argtypes = fn.argtypes
        cfunc.restype = fn.restype
        return cfunc
    return None


class _Capture:
    """``with Native.capture_errors() as lines:`` (a class: it runs once per generated token)."""

    __slots__ = ("lines", "previous")

    def __enter__(self) -> list[str]:
        self.previous = getattr(_capture, "lines", None)
        self.lines: list[str] = []
        _capture.lines = self.lines
        return self.lines

    def __exit__(self, *exc_info: object) -> None:
        _capture.lines = self.previous


class Native:
    """A loaded llama.cpp: the bound functions of ``functions.FUNCTIONS`` as attributes.

    >>> native = Native.open([base, ggml, llama], backend_dir=folder)  # doctest: +SKIP
    >>> native.llama_vocab_n_tokens(vocab)  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[Path], libs: Sequence[ctypes.CDLL],
                 functions: dict[str, Any]) -> None:
        self.paths = tuple(paths)
        self.libraries = tuple(libs)
        self._functions = functions
        self._cpu_procs: dict[str, Any] = {}  # name -> CFUNCTYPE or None (looked up once)
        # Set by the contexts: a decode ran (with OpenMP, libgomp then holds threads that a
        # forked child does not have), and, in such a child, that only one thread is safe.
        self.decoded = False
        self.single_thread_after_fork = False
        # Plain instance attributes: a bound C function costs one dict lookup per call, which
        # matters on the per-token path (``__getattr__`` below only explains unknown names).
        self.__dict__.update(functions)

    @classmethod
    def open(cls, libraries: Sequence[Path], *, backend_dir: Path | None = None,
             cpu_plugin: Path | None = None, extra_plugins: Sequence[Path] = ()) -> Native:
        """Load ``libraries`` in order (the last one is libllama), bind the table, initialise.

        With ``backend_dir`` (a ``GGML_BACKEND_DL`` build), ggml loads its backend libraries
        from that folder before ``llama_backend_init``. With ``cpu_plugin`` it loads exactly
        ``extra_plugins`` (the GPU ones) and that CPU plugin instead, each by path: what the
        loader does when the CPU plugin ggml would pick crashed in its test run. Opening the same
        libraries again returns the same object: ggml's backend registry is process-wide and
        would register twice.
        """
        paths = [Path(p).absolute() for p in libraries]
        if not paths:
            raise LibraryLoadError("no llama.cpp library was given to load")
        # Keyed by the real libllama file: the same file is one library to the dynamic loader,
        # whatever the list of siblings or the link it was reached through.
        key = str(paths[-1].resolve())
        with _lock:
            if key not in _opened:
                if _opened:
                    logger.warning(
                        "loading a second llama.cpp (%s) into a process that already has %s: "
                        "two ggml copies keep separate backend registries", key, next(iter(_opened)))
                _opened[key] = cls._open_new(paths, backend_dir, cpu_plugin, extra_plugins)
            return _opened[key]

    @classmethod
    def _open_new(cls, paths: list[Path], backend_dir: Path | None, cpu_plugin: Path | None = None,
                  extra_plugins: Sequence[Path] = ()) -> Native:
        libs = [_load_cdll(p) for p in paths]
        functions: dict[str, Any] = {}
        missing = []
        for fn in FUNCTIONS:
            cfunc = _resolve(libs, fn)
            if cfunc is None and fn.optional:
                logger.debug("%s lacks the optional %s", paths[-1], fn.name)
            elif cfunc is None:
                missing.append(fn.name)
            functions[fn.name] = cfunc
        if missing:
            raise LibraryLoadError(
                f"{paths[-1]} lacks {len(missing)} symbol(s) this llama-runtime needs: "
                f"{', '.join(missing)}. It is probably a llama.cpp of another generation than "
                f"{describe()}; use the library llama-runtime selects for you."
            )
        native = cls(paths, libs, functions)
        native._initialise(backend_dir, cpu_plugin, extra_plugins)
        return native

    def _initialise(self, backend_dir: Path | None, cpu_plugin: Path | None = None,
                    extra_plugins: Sequence[Path] = ()) -> None:
        # The log goes to Python first, so that backend loading is logged too.
        self.llama_log_set(_LOG_CALLBACK, None)
        if cpu_plugin is not None:
            self._load_plugins(cpu_plugin, extra_plugins)
        elif backend_dir is not None:
            folder = Path(backend_dir).absolute()
            if not folder.is_dir():
                raise LibraryLoadError(f"the ggml backend folder {folder} does not exist")
            self.ggml_backend_load_all_from_path(str(folder).encode())
            if self.ggml_backend_dev_count() == 0:
                raise LibraryLoadError(
                    f"ggml found no usable backend in {folder} (no libggml-cpu-*.so that runs "
                    "on this CPU?); the folder must hold the backends shipped with libllama"
                )
        self.llama_backend_init()

    def _load_plugins(self, cpu_plugin: Path, extra_plugins: Sequence[Path]) -> None:
        """``ggml_backend_load`` each plugin; like ggml's own scan, a GPU plugin may fail quietly
        (the loader then finds no GPU device and says so), the CPU plugin may not."""
        if self.ggml_backend_load is None:
            raise LibraryLoadError(f"{self.paths[-1]} has no ggml_backend_load: its CPU plugin cannot be"
                                   " chosen explicitly")
        for path in extra_plugins:
            if not self.ggml_backend_load(str(path).encode()):
                logger.debug("ggml did not load the backend plugin %s", path)
        with self.capture_errors() as errors:
            reg = self.ggml_backend_load(str(cpu_plugin).encode())
        if not reg:
            raise LibraryLoadError(
                f"ggml refused the CPU plugin {cpu_plugin}: {'; '.join(errors) or 'it scores 0 here'}"
                " (ggml_backend_load returned NULL)")

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are neither regular attributes nor bound C functions.
        raise AttributeError(f"{type(self).__name__} has no attribute or bound function {name!r}")

    @staticmethod
    def capture_errors() -> _Capture:
        """Collect the warnings and errors llama.cpp logs on this thread inside the block.

        llama.cpp reports why a call failed only in its log (a NULL or -1 says nothing): the
        caller puts these lines into the exception it raises.
        """
        return _Capture()

    def devices(self) -> list[dict[str, str]]:
        """ggml's devices after backend loading: name, description and type (cpu/gpu/igpu/accel)."""
        kinds = ("cpu", "gpu", "igpu", "accel", "meta")
        out = []
        for i in range(self.ggml_backend_dev_count()):
            dev = self.ggml_backend_dev_get(i)
            kind = self.ggml_backend_dev_type(dev)
            out.append({"name": (self.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                        "description": (self.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                        "type": kinds[kind] if 0 <= kind < len(kinds) else str(kind)})
        return out

    def system_info(self) -> str:
        """``llama_print_system_info()``: the CPU features and backends llama.cpp sees."""
        raw = self.llama_print_system_info()
        return raw.decode("utf-8", "replace") if raw else ""

    # --- the CPU backend's own functions (a plugin in GGML_BACKEND_DL builds) ----------------

    def _cpu_reg(self) -> int | None:
        by_name = self.ggml_backend_reg_by_name
        reg = by_name(b"CPU") if by_name is not None else None
        return int(reg) if reg else None

    def cpu_proc(self, name: str) -> Any | None:
        """``CPU_PROCS[name]`` from the CPU registry's proc-address table, or None if absent."""
        if name not in self._cpu_procs:
            fn, reg, get = CPU_PROCS[name], self._cpu_reg(), self.ggml_backend_reg_get_proc_address
            address = get(reg, name.encode()) if reg is not None and get is not None else None
            self._cpu_procs[name] = (ctypes.CFUNCTYPE(fn.restype, *fn.argtypes)(address)
                                     if address else None)
            if not address:
                logger.debug("the CPU backend of %s has no %s", self.paths[-1], name)
        return self._cpu_procs[name]

    def has_openmp(self) -> bool:
        return (self.cpu_features() or {}).get("OPENMP") == "1"

    def cpu_features(self) -> dict[str, str] | None:
        """The CPU backend's feature flags (``{"AVX2": "1", "OPENMP": "1", ...}``), or None.

        The same list ``llama_print_system_info`` prints after ``CPU :``; None when this
        library cannot say.
        """
        get_features = self.cpu_proc("ggml_backend_get_features")
        reg = self._cpu_reg()
        if get_features is None or reg is None:
            return None
        array, i = get_features(reg), 0
        out: dict[str, str] = {}
        while array and array[i].name is not None:  # a NULL-terminated array
            out[array[i].name.decode(errors="replace")] = (array[i].value or b"").decode(errors="replace")
            i += 1
        return out

    def threadpool_new(self, n_threads: int) -> int:
        """A new ggml thread pool of ``n_threads`` (default parameters), or 0 if none can be made."""
        new, params_default = self.cpu_proc("ggml_threadpool_new"), self.ggml_threadpool_params_default
        if new is None or params_default is None or self.cpu_proc("ggml_threadpool_free") is None:
            return 0
        params = params_default(n_threads)
        return int(new(ctypes.byref(params)) or 0)

    def threadpool_free(self, pool: int) -> None:
        """Free a pool of :meth:`threadpool_new`, after every context using it is freed."""
        free = self.cpu_proc("ggml_threadpool_free")
        if free is not None:  # always: threadpool_new makes no pool it could not free
            free(pool)

    def __repr__(self) -> str:
        return f"Native({self.paths[-1]})"
