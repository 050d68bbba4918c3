"""What ``llama-runtime doctor`` reports: the machine, every candidate, the choice, and the library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import LlamaRuntimeError


def _target_profile(target: str | None, settings: Settings) -> Any:
    """A profile read from ``--target FILE`` / ``LLAMA_RUNTIME_TARGET`` (a file), else None."""
    from ..probe import MachineProfile

    spec = target or settings.target
    if spec and Path(spec).is_file():
        return MachineProfile.from_file(spec)
    return None


def doctor(target: str | None = None, *, settings: Settings | None = None, load: bool = True) -> dict[str, Any]:
    """The same content as ``llama-runtime doctor --json``; never downloads anything."""
    from ..config import current_settings
    from ..probe import probe

    settings = settings or current_settings()
    profile = _target_profile(target, settings) or probe()
    out: dict[str, Any] = {"profile": profile.to_dict(), "candidates": [], "selected": None,
                           "library": None, "plan": [], "notes": [], "warnings": [],
                           "settings": settings.report(), "build_report": None}
    steps: list[Any] = []
    try:
        steps = _fill_plan(out, settings, profile)
    except LlamaRuntimeError as exc:
        out["error"] = str(exc)
    if load and not (target or settings.target):
        _fill_library(out, steps, settings, profile)
    if out["candidates"]:
        lib = out["library"] or {}
        out["plugins"] = _plugins(lib.get("variant") or out["selected"], profile, lib.get("plugin"), settings)
        out["qualification"] = _qualification(lib.get("variant") or out["selected"])
    return out


def _qualification(name: str | None) -> dict[str, Any] | None:
    """How the release qualified the variant (its manifest entry's ``qualification``, issue 14.3)."""
    from ..qualify.report import summary
    from ..variants import read_lock

    v = read_lock().manifest.variants.get(name or "")
    if v is None:
        return None
    record = v.extra.get("qualification")
    plugins = (record or {}).get("plugins") or {}
    return {"variant": v.name, "status": (record or {}).get("status"), "summary": summary(record),
            "plugins": {f: e.get("why") or e.get("status") for f, e in sorted(plugins.items())}}


def _fill_plan(out: dict[str, Any], settings: Settings, profile: Any) -> list[Any]:
    from ..runtime.loader import plan, read_build_report

    report = read_build_report()
    out["build_report"] = None if report is None else {
        k: report.get(k) for k in ("selected", "request", "profile_summary", "source", "built_at", "reason")}
    steps, selection, notes = plan(settings, profile=profile)
    out["notes"] = notes
    out["plan"] = [{"source": s.source, "variant": s.variant.name if s.variant else None,
                    "path": str(s.folder) if s.folder else None} for s in steps]
    if selection is not None:
        out["candidates"] = [c.to_dict() for c in selection.candidates]
        out["native_dependencies"] = _native_dependencies(settings)
        out["selected"] = selection.selected
        out["warnings"] = selection.warnings
    return steps


def _plugins(name: str | None, profile: Any, proof: dict[str, Any] | None,
             settings: Settings) -> dict[str, Any] | None:
    """A variant's CPU plugins ranked for this machine: with the scores and crashes of its proof
    record when there is one, else predicted from CPUID and the OS state (nothing is run)."""
    import json

    from ..plugins.rank import rank
    from ..fetch.trust import trusted_lock

    v = trusted_lock(settings).manifest.variants.get(name or "")
    if v is None or not v.backend_dl:
        return None
    record: dict[str, Any] = {}
    if proof and proof.get("record"):
        try:
            record = json.loads(Path(proof["record"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
    ranking = rank(v.plugins, profile.cpu, profile.os, scores=record.get("scores"), failed=record.get("failed"))
    return {"variant": v.name, "measured": bool(record), **ranking.to_dict()}


def _native_dependencies(settings: Settings) -> dict[str, Any]:
    """For each GPU variant: every library it needs but does not ship, and where the loader finds it."""
    from ..runtime.nativedeps import resolve_all
    from ..fetch.trust import trusted_lock

    out = {}
    for v in trusted_lock(settings).manifest.variants.values():
        needs = list(v.extra.get("external_libraries") or ())
        if needs and v.backend != "cpu":
            out[v.name] = resolve_all(needs)
    return out


def _fill_library(out: dict[str, Any], steps: list[Any], settings: Settings, profile: Any) -> None:
    """Load the first library available without a download; else say it would be downloaded."""
    from ..runtime.loader import open_step

    for step in steps:
        where = step.variant.name if step.variant else str(step.folder)
        if step.source == "download":
            out["library"] = {"path": None, "sha256": None, "source": "download", "variant": where}
            return
        try:
            library = open_step(step, settings, profile)
        except LlamaRuntimeError as exc:
            out["notes"].append(f"{step.source} {where} does not load: {exc}")
            continue
        out["library"] = {**library.to_dict(), "system_info": library.native.system_info(),
                          "devices": library.native.devices()}
        return
