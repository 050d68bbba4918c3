"""Prove a variant's CPU plugin on this machine before its first model runs here (issue 14).

ggml picks a CPU plugin from CPUID alone; the plugin may still die with SIGILL (an OS that does
not enable a register state, a miscompiled kernel such as GCC 11/12's AMX tile config). So the
first load of a variant on a CPU runs :mod:`.child` in a separate process (:mod:`.trial`): the plugin ggml would
pick decodes a quantized model (``proof-q4_0.gguf``). If that process dies, the plugin is
marked, the next best is tried the same way, and the result goes to a record in the cache
(:mod:`.record`). Every later load reads the record (no process): ``default`` loads as ggml
would (``ggml_backend_load_all_from_path``); ``explicit`` loads the proven plugin by path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LibraryLoadError
from .record import cpu_identity, cpu_key, fallback_path, read_proof, record_path, write_proof

if TYPE_CHECKING:
    from ..variants import Variant

log = logging.getLogger("llama_runtime")


class PluginChoice:
    """How to load a variant's backends here, and why.

    A plain class, not a dataclass: this module is imported on every load, and building a
    dataclass costs about as much as everything else the record path does.
    """

    __slots__ = ("mode", "cpu_plugin", "ggml_pick", "source", "record", "failed", "os_skipped", "ms")

    def __init__(self, mode: str, cpu_plugin: str | None, ggml_pick: str | None, source: str,
                 record: str | None = None, failed: dict[str, str] | None = None,
                 os_skipped: dict[str, str] | None = None, ms: float = 0.0) -> None:
        self.mode = mode  # default | explicit | builtin (no plugins: the CPU code is linked in)
        self.cpu_plugin = cpu_plugin
        self.ggml_pick = ggml_pick
        self.source = source  # record | child | none (not proven: the test run itself failed)
        self.record = record
        self.failed = failed or {}
        self.os_skipped = os_skipped or {}
        self.ms = ms

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def warning(self, variant: str) -> str | None:
        """The WARNING for a plugin that crashed (None when nothing did)."""
        if not self.failed:
            return None
        bad = "; ".join(f"{f} {why}" for f, why in sorted(self.failed.items()))
        return (f"{variant}: CPU plugin {bad} in its test run on this CPU; loading {self.cpu_plugin}"
                f" explicitly instead (proof record: {self.record or 'not written'})")


def choose(v: Variant, folder: Path, library_sha256: str | None, cpu: Mapping[str, Any], os_name: str,
           cache_dir: Path) -> PluginChoice:
    """How to load ``v`` from ``folder`` here: from the record, else from test runs (then recorded).

    Raises :class:`LibraryLoadError` when the variant's CPU code crashes whatever plugin runs it.
    """
    start = time.perf_counter()
    identity = cpu_identity(cpu, os_name)
    lib_sha = library_sha256 or v.sha256
    expect = {"variant": v.name, "library_sha256": lib_sha, "archive_sha256": v.sha256, "cpu": identity}
    path = record_path(cache_dir, v.name, lib_sha, cpu_key(identity))
    record, path = _read(v, path, expect)
    source = "record"
    if record is None:
        source = "child"
        from .trial import decide, run_proofs

        out, facts = run_proofs(v, folder, cpu, os_name)
        record = {**expect, "cpu_key": cpu_key(identity), **decide(v, out, facts, cpu, os_name)}
        if record["mode"] == "unproven":  # not the plugin's fault: try again next time, say why now
            log.warning("%s: the CPU plugin test run did not complete (%s); loading the plugin ggml picks,"
                        " unproven", v.name, record.get("error"))
        else:
            path = _write(path, record)
    return _choice(v, record, source, path, (time.perf_counter() - start) * 1000)


def _read(v: Variant, path: Path, expect: Mapping[str, Any]) -> tuple[dict[str, Any] | None, Path]:
    """The valid record for ``expect``, from the cache or (a read-only cache) the private folder."""
    spare = None if path.exists() else fallback_path(path)
    for candidate in (path, spare):
        if candidate is None:
            continue
        record, why = read_proof(candidate, expect)
        if why:
            log.info("%s", why)
        if record is not None and record.get("chosen") not in (None, *v.plugins):
            log.info("the proof record %s names a plugin %s does not ship; proving again", candidate, v.name)
            record = None
        if record is not None:
            return record, candidate
    return None, path


def _write(path: Path, record: Mapping[str, Any]) -> Path:
    problem = write_proof(path, record)
    spare = fallback_path(path, create=True) if problem else None
    if problem and spare is not None and write_proof(spare, record) is None:
        return spare
    if problem:
        log.info("%s; the test run repeats on every load", problem)
    return path


def _choice(v: Variant, record: Mapping[str, Any], source: str, path: Path, ms: float) -> PluginChoice:
    mode = record["mode"]
    failed = dict(record.get("failed") or {})
    if mode == "refused":
        bad = "; ".join(f"{f} {w}" for f, w in sorted(failed.items())) or "no CPU plugin runs here"
        raise LibraryLoadError(f"{v.name} cannot run on this CPU: {bad} (test run of a quantized model;"
                               f" record {path})")
    return PluginChoice(mode="default" if mode == "unproven" else mode, cpu_plugin=record.get("chosen"),
                        ggml_pick=record.get("ggml_pick"), source="none" if mode == "unproven" else source,
                        record=None if mode == "unproven" else str(path), failed=failed,
                        os_skipped=dict(record.get("os_skipped") or {}), ms=round(ms, 2))


def gpu_plugins(files: list[str], folder: Path, os_name: str, environ: Mapping[str, str]) -> list[Path]:
    """The non-CPU plugins ``ggml_backend_load_all_from_path`` would load, in its order.

    For each backend ggml keeps the best-scoring ``libggml-<name>-*.so``, else ``libggml-<name>.so``;
    then ``GGML_BACKEND_PATH``, an out-of-tree backend ggml also loads.
    """
    from .child import score
    from .rank import ggml_cpu, plugin_variant

    data, out = ggml_cpu(), []
    base = data["base_file"].get(os_name, data["base_file"]["linux"])
    for backend in data["backend_order"]:
        if backend == "cpu":
            continue
        suffixed = sorted(f for f in files if plugin_variant(f, os_name, backend) is not None)
        scored = [(score(folder / f) or 0, f) for f in suffixed]
        best = max((s for s in scored if s[0] > 0), default=None, key=lambda s: s[0])
        if best is not None:
            out.append(folder / best[1])
        elif base.format(backend=backend) in files:
            out.append(folder / base.format(backend=backend))
    if environ.get("GGML_BACKEND_PATH"):
        out.append(Path(environ["GGML_BACKEND_PATH"]))
    return out
