"""Qualify variant folders: every CPU plugin, on its own, on a model of every quantization type.

The reference is ggml's generic C code, the ``x64`` plugin, run natively: the kernels every other
plugin vectorises, the least dependent on the compiler and the ISA, and a plugin every x86-64
CPU and every qemu model runs. A variant without one (a build without plugins, a build of a few
plugins) is compared with the ``x64`` plugin of another variant of the same llama.cpp in the same
folder of variants, decoding *this* variant's models; failing that, with its own least
demanding CPU code (said so in the record). Each candidate decodes the reference's greedy text
(:mod:`.rule`), natively and under qemu (:mod:`.where`). A Linux aarch64 variant runs every
plugin under ``qemu-aarch64`` through the cross-compiled C driver (:mod:`.cross`), against the
``x64`` plugin of an x86-64 variant of the same llama.cpp decoding the aarch64 build's models; a
Windows one the same way under Wine (:mod:`.wine`, :mod:`.targets`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .report import NOT_HERE, QUALIFIED, REFUSED, describe_failure, plugin_status, refusals
from .run import TYPES, Answer, Build, Store, ensure_models, place_key, run_plugin
from .where import NATIVE, Run, builtin_runs, plugin_runs, qemu_path, runnable_here

SCHEMA = 1
X64 = "libggml-cpu-x64.so"


@lru_cache(maxsize=1)
def host() -> dict[str, Any]:
    """This machine as qualification needs it: OS, arch, glibc, the CPU (probe), its identity key."""
    from ..plugins.record import cpu_identity, cpu_key
    from ..probe.cpu import os_name, read_cpu
    from ..probe.libc import read_libc

    cpu, libc = read_cpu(detail=False), read_libc()
    return {"os": os_name(), "arch": cpu["arch"], "glibc": libc.get("version") if libc.get("name") == "glibc" else None,
            "cpu": cpu, "key": cpu_key(cpu_identity(cpu, os_name())),
            "machine": f"{cpu.get('model_name') or cpu['arch']} (x86-64-v{cpu.get('x86_64_level')}, {os_name()})"
            if cpu["arch"] == "x86_64" else f"{cpu.get('model_name') or cpu['arch']} ({os_name()})"}


@lru_cache(maxsize=2)
def qemu_version(emulator: str | None = None) -> str | None:
    """``qemu-x86_64 --version``'s first line (or ``emulator``'s); None without it."""
    path = shutil.which(emulator) if emulator else qemu_path()
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def _child(job: dict[str, Any], prefix: Sequence[str], timeout: float) -> Any:
    from ..plugins.trial import _run_child

    return _run_child(job, prefix, timeout)


def read_build(folder: Path) -> tuple[dict[str, Any], Build]:
    meta: dict[str, Any] = json.loads((folder / "variant.json").read_text(encoding="utf-8"))
    return meta, Build(folder.name, folder, tuple(meta["libraries"]), bool(meta.get("backend_dl")))


def _plan(meta: Mapping[str, Any], build: Build, qemu: bool) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """plugin file (or the variant name for linked-in CPU code) -> its runs; and what cannot run here."""
    from ..plugins.rank import cpu_plugins

    cpu = host()["cpu"]
    files = cpu_plugins(meta.get("plugins") or [], "linux") if build.backend_dl else []
    runs: dict[str, list[Run]] = {}
    not_here: dict[str, str] = {}
    for file in files:
        runs[file], why = plugin_runs(file, cpu, qemu)
        if why:
            not_here[file] = why
    if not build.backend_dl:
        runs[build.name], why = builtin_runs(meta.get("requires") or {}, cpu, qemu)
        if why:
            not_here[build.name] = why
    elif not files:  # what ggml's own scan of the folder finds: nothing, and it says so
        runs[build.name] = [Run(None, NATIVE, "ggml's own scan of the folder")]
    return runs, not_here


def _references(build: Build, runs: Mapping[str, list[Run]], sibling: Build | None) -> list[tuple[Build, Run, str]]:
    """The reference, and the ones to fall back on, best first."""
    if X64 in runs:
        return [(build, Run(X64, NATIVE, "reference"), f"{build.name}/{X64} (native)")]
    if sibling is not None:
        return [(sibling, Run(X64, NATIVE, "reference"), f"{sibling.name}/{X64} (native, another variant)")]
    driven = [rs[0] for rs in runs.values() if rs and rs[0].where != NATIVE]  # qemu-aarch64, Wine
    if driven:  # its x64 plugin (Windows), else its least demanding one (armv8.0)
        first = min(driven, key=lambda r: ("x64" not in (r.plugin or ""), r.plugin or ""))
        return [(build, first, f"{build.name}/{first.plugin} ({first.where}; no Linux {X64} plugin of this"
                               " llama.cpp in reach)")]
    from ..plugins.rank import ggml_cpu, plugin_variant

    order = list(ggml_cpu()["x86"]["variants"])  # least demanding first; plugins it does not know last
    native = [r for rs in runs.values() for r in rs if r.where == NATIVE]
    native.sort(key=lambda r: order.index(v) if (v := plugin_variant(r.plugin or "", "linux")) in order else len(order))
    return [(build, r, f"{build.name}/{r.plugin or 'its CPU backend'} (native; no x64 plugin of this llama.cpp"
                       " in reach)") for r in native]


def _reference_run(build: Build, runs: Mapping[str, list[Run]], sibling: Build | None, models: Mapping[str, Path],
                   store: Store, child: Any) -> tuple[Answer, str, bool]:
    """The first reference that decodes every type (else the last one's failure), and whether it
    is one of the variant's own runs (whose failure its own entry then reports)."""
    ref, what, own = Answer(setup={"error": "no CPU code of it runs natively here"}), "nothing", False
    for ref_build, run, what in _references(build, runs, sibling):
        own = ref_build is build
        ref = run_plugin(ref_build, run, models, force=None, place=place_key(run, host()["key"], None),
                         store=store, run_child=child if own else _child, scan=build.backend_dl and run.plugin is None)
        if not ref.setup and not ref.failed:
            break
    return ref, what, own


def _verdicts(answer: Answer, ref: Answer | None) -> dict[str, Any]:
    """``passed`` (types), ``failed`` (type -> why) and ``near_tie_flips`` (type -> steps)."""
    from .rule import Trace, judge

    out: dict[str, Any] = {"passed": [], "failed": {}, "near_tie_flips": {}, "unjudged": []}
    for kind in TYPES:
        if kind in answer.failed:
            out["failed"][kind] = describe_failure(answer.failed[kind])
        elif kind not in answer.traces:
            out["failed"][kind] = "not run: the child stopped before it"
        elif ref is None or kind not in ref.traces:
            out["unjudged"].append(kind)  # the reference failed on it: that is the refusal
        else:
            v = judge(Trace.parse(ref.traces[kind]), Trace.parse(answer.traces[kind]), kind)
            if v.ok:
                out["passed"].append(kind)
            else:
                out["failed"][kind] = v.why
            if v.flips:
                out["near_tie_flips"][kind] = v.flips
    return out


def qualify_folder(folder: Path, store: Store, *, sibling: Build | None = None, qemu: bool = True) -> dict[str, Any]:
    """The ``qualification`` record of one variant folder (``status``: qualified, refused or
    not qualified here; ``failures``: the refusal lines)."""
    meta, build = read_build(folder)
    h = host()
    # nothing volatile (no dates, no timings): the same files give the same record, so the same
    # release publishes to the same bytes and re-publishing it stays a no-op
    base = {"schema": SCHEMA, "machine": h["machine"], "types": list(TYPES), "rule": _rule()}
    why = runnable_here(meta, h["os"], h["arch"], h["glibc"])
    if why:
        return {**base, "status": NOT_HERE, "why": why, "plugins": {}, "failures": []}
    from .targets import target_for

    target = target_for(meta, h["os"], h["arch"])
    if target and target.kind == "aarch64" and not qemu:
        return {**base, "status": NOT_HERE, "why": "an aarch64 build, and qemu runs are off (--no-qemu)",
                "plugins": {}, "failures": []}
    child = target.child(store.root) if target else _child
    models, problem = ensure_models(build, store, child)
    if problem:
        return {**base, "status": REFUSED, "plugins": {}, "failures": [f"{build.name}: {problem}"]}
    use_qemu = qemu and qemu_path() is not None
    runs, not_here = target.plan(meta, h["cpu"], build.backend_dl, build.name) if target else \
        _plan(meta, build, use_qemu)
    ref, ref_what, own = _reference_run(build, runs, sibling, models, store, child)
    force = {t: tr["ids"] for t, tr in ref.traces.items()}
    plugins = {name: _entry(build, rs, models, force, ref, store, not_here.get(name), child, target,
                            scan=build.backend_dl and name == build.name) for name, rs in runs.items()}
    failures = [] if own else [f"{build.name}: the reference {ref_what} {why}" for why in
                               ([describe_failure(ref.setup)] if ref.setup else
                                [f"{describe_failure(f)} the {t} model" for t, f in ref.failed.items()])]
    failures += refusals(build.name, plugins)
    status = REFUSED if failures else QUALIFIED if any(e["status"] == QUALIFIED for e in plugins.values()) else NOT_HERE
    return {**base, "status": status, "reference": ref_what,
            "qemu": target.version() if target else qemu_version() if use_qemu else None,
            "plugins": plugins, "failures": failures, "gpu_plugins": _gpu(meta)}


def _entry(build: Build, runs: list[Run], models: Mapping[str, Path], force: Mapping[str, Sequence[int]],
           ref: Answer, store: Store, why: str | None, child: Any, target: Any, scan: bool) -> dict[str, Any]:
    entry_runs = {}
    for r in runs:
        place = target.place(r, host()["key"]) if target else place_key(r, host()["key"], qemu_version())
        answer = run_plugin(build, r, models, force=force, place=place, store=store, run_child=child,
                            scan=scan)
        setup = describe_failure(answer.setup) if answer.setup else None
        entry_runs[r.where] = {"purpose": r.purpose, "score": answer.score, "setup": setup,
                               **({} if answer.setup else _verdicts(answer, ref))}
    entry: dict[str, Any] = {"runs": entry_runs}
    entry["status"] = plugin_status(entry)
    if why:
        entry["why"] = why
    return entry


def _gpu(meta: Mapping[str, Any]) -> dict[str, str]:
    from ..plugins.rank import cpu_plugins

    cpu = set(cpu_plugins(meta.get("plugins") or [], "windows" if meta.get("os") == "windows" else "linux"))
    return {f: f"{NOT_HERE}: only the CPU code is qualified; the {meta.get('backend')} backend needs its device"
            for f in meta.get("plugins") or [] if f not in cpu}


def _rule() -> dict[str, Any]:
    from ..plugins.trial import PROMPT
    from .model import RECIPE, SHAPE
    from .rule import DRIFT, EPSILON, MIN_SURE, N_GEN

    return {"n_gen": N_GEN, "min_sure": MIN_SURE, "epsilon": dict(EPSILON), "drift": dict(DRIFT),
            "prompt": list(PROMPT), "teacher_forced": True, "model": {**SHAPE, "recipe": RECIPE}}


def qualify_folders(folders: Sequence[Path], store: Store, *, qemu: bool = True) -> dict[str, dict[str, Any]]:
    """Each folder's record; a variant without an ``x64`` plugin borrows the first one of the same
    llama.cpp among ``folders`` as its reference."""
    metas = {f: read_build(f) for f in folders}
    donors = [b for f, (m, b) in metas.items() if X64 in (m.get("plugins") or []) and m.get("arch") == "x86_64"
              and m.get("os") == "linux"]
    out = {}
    for folder, (meta, build) in metas.items():
        sibling = next((d for d in donors if metas[d.folder][0].get("llama_cpp") == meta.get("llama_cpp")), None)
        out[build.name] = qualify_folder(folder, store, sibling=sibling, qemu=qemu)
    return out


def for_publish(cache_dir: Path | None) -> Any:
    """The ``qualify`` callable of :func:`llama_runtime.release.publish.build_release`: records, or a
    :class:`~llama_runtime.errors.QualificationError` naming every failure (nothing is uploaded)."""
    from ..config import resolve
    from ..errors import QualificationError

    store = Store.in_cache(cache_dir if cache_dir is not None else resolve().cache_dir)

    def qualify(folders: list[Path]) -> dict[str, dict[str, Any]]:
        records = qualify_folders(folders, store)
        for folder in folders:  # a variant this machine cannot run keeps the record of its build
            earlier = read_build(folder)[0].get("qualification")
            here = records[folder.name]
            if here["status"] == NOT_HERE and not here["plugins"] and isinstance(earlier, dict):
                records[folder.name] = {**earlier, "publish_machine": f"{NOT_HERE}: {here['why']}"}
        refused = [r for r in records.values() if r.get("status") == REFUSED]
        failures = [line for r in refused for line in r["failures"]]
        if failures:
            raise QualificationError(
                f"{len(refused)} variant(s) failed their qualification on"
                f" {host()['machine']} (each CPU plugin on its own, decoding the qualification model in"
                f" {', '.join(TYPES)}); nothing was uploaded:\n  - " + "\n  - ".join(failures)
                + "\nRebuild or fix those variants, or leave them out of the release folder, and publish again.")
        return records

    return qualify
