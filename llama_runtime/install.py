"""What the wheel build hook does, as plain code: settings, probe, select, fetch, report.

``prepare_wheel`` returns a :class:`WheelPlan` (files to force-include, the wheel tag, extra
dependencies); :mod:`hatch_llama.hook` only copies it into hatchling's ``build_data``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import Settings, resolve
from .errors import ConfigError, NoCompatibleVariantError
from .fetch.trust import HOW_TO_GET_A_LIBRARY

LIBS = "llama_runtime/_libs"
EDITABLE_LIBS = "llama_runtime_libs"  # an editable install's libraries, in site-packages


@dataclass
class WheelPlan:
    force_include: dict[str, str] = field(default_factory=dict)
    tag: str | None = None  # None: a pure wheel (no binary shipped)
    dependencies: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def platform_tag(os_name: str, arch: str, requires: Mapping[str, Any]) -> str:
    """The wheel platform tag for a variant's os/arch (a wheel built here installs here)."""
    if os_name == "linux":
        return f"linux_{arch}"
    if os_name == "macos":
        return f"macosx_{_macos_tag_version(requires.get('macos'))}_{'arm64' if arch == 'aarch64' else arch}"
    if os_name == "windows":
        return {"x86_64": "win_amd64", "aarch64": "win_arm64"}.get(arch, f"win_{arch}")
    raise ConfigError(f"no wheel tag is known for {os_name}/{arch}.")


def _macos_tag_version(floor: Any) -> str:
    """``14_0`` for a floor of 14.x, ``10_15`` for 10.15: the variant's ``requires.macos``.

    From macOS 11 on, pip matches ``macosx_<major>_0`` (packaging's ``mac_platforms`` yields only
    minor 0 for 11+); before, the minor is part of the version. Without a floor, 11.0, the first
    macOS that runs on Apple Silicon.
    """
    from .versions import padded

    major, minor = padded(floor or "11.0", 2)
    return f"10_{minor}" if major == 10 else f"{major}_0"


def _pyproject_settings(root: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: hatchling depends on tomli there
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data.get("tool", {}).get("llama-runtime", {}))


def _target(settings: Settings, manifest: Any) -> tuple[Any, str | None]:
    """(profile, variant) for LLAMA_RUNTIME_TARGET: a profile file, or a variant name."""
    from .probe import MachineProfile

    spec = settings.target
    if not spec:
        return None, settings.variant
    if spec in manifest.variants:
        return None, spec
    if Path(spec).is_file():
        return MachineProfile.from_file(spec), settings.variant
    raise ConfigError(f"LLAMA_RUNTIME_TARGET={spec!r} is neither a variant name"
                      f" ({', '.join(sorted(manifest.variants))}) nor a profile file.")


def _report(settings: Settings, profile: Any, selection: Any, **extra: Any) -> dict[str, Any]:
    return {
        "schema": 1, "llama_runtime": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request": {"backend": settings.backend, "variant": settings.variant, "target": settings.target},
        "profile": profile.to_dict() if profile else None,
        "profile_summary": profile.summary() if profile else None,
        "candidates": [c.to_dict() for c in selection.candidates] if selection else [],
        "settings": settings.report(), **extra,
    }


def _write_report(staging: Path, report: dict[str, Any]) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / "selection.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def prepare_wheel(*, root: Path, config_settings: Mapping[str, Any] | None, staging: Path,
                  environ: Mapping[str, str] | None = None, editable: bool = False,
                  echo: Callable[[str], Any] = print) -> WheelPlan:
    """Decide and fetch what the wheel ships; see the module docstring."""
    from .probe import probe
    from .fetch.trust import names_a_release, trusted_lock
    from .variants import select

    settings = resolve(config_settings=config_settings, environ=os.environ if environ is None else environ,
                       pyproject=_pyproject_settings(root))
    lock_path = root / "llama_runtime" / "binaries.lock.json"
    if settings.skip_download:
        echo("llama-runtime: skip-download is set: the wheel ships no library; it is fetched on first use")
        return _no_library(settings, staging, editable, "skip-download was set at install")
    if not lock_path.exists() and not names_a_release(settings):
        echo(f"llama-runtime: {NO_LOCK} {HOW_TO_GET_A_LIBRARY}")
        return _no_library(settings, staging, editable, NO_LOCK)
    lock = trusted_lock(settings, lock_path, echo=echo)
    profile, variant = _target(settings, lock.manifest)
    target_profile = profile
    profile = profile or (None if variant and settings.target else probe())
    if profile is not None:
        echo(f"llama-runtime: machine: {profile.summary()}")
        selection = select(lock.manifest, profile, backend=settings.backend, variant=variant)
        name = selection.require()
        if selection.warnings and settings.strict:
            raise NoCompatibleVariantError(
                "LLAMA_RUNTIME_STRICT=1 forbids building with a fallback: " + "; ".join(selection.warnings))
        for w in selection.warnings:
            echo(f"llama-runtime: warning: {w}")
        echo(f"llama-runtime: selected {selection.why()}")
    else:  # LLAMA_RUNTIME_TARGET named a variant: nothing to probe
        assert variant is not None
        selection, name = None, variant
        echo(f"llama-runtime: target variant {name} (LLAMA_RUNTIME_TARGET); no probe of this machine")
    return _fetch_into_plan(settings, lock, name, profile, selection, staging, editable, echo,
                            target_profile is not None or settings.target is not None)


NO_LOCK = ("no binary lock (llama_runtime/binaries.lock.json) in this source tree: it is a checkout,"
           " not a release sdist, so the wheel ships no llama.cpp library.")


def _no_library(settings: Settings, staging: Path, editable: bool, reason: str) -> WheelPlan:
    """A pure wheel: no library, and a report that says why (the loader reads it)."""
    report = _report(settings, None, None, selected=None, reason=reason)
    return _finish(WheelPlan(report=report), staging, editable)


def _fetch_into_plan(settings: Settings, lock: Any, name: str, profile: Any, selection: Any,
                     staging: Path, editable: bool, echo: Callable[[str], Any],
                     cross: bool) -> WheelPlan:
    from .fetch.cache import read_record
    from .fetch.ensure import ensure_variant

    v = lock.manifest.variants[name]
    start = time.perf_counter()
    folder, how = ensure_variant(v, lock, settings)
    record = read_record(folder) or {}
    source = record.get("source") or {}
    echo(f"llama-runtime: {v.archive}: {v.size} bytes, {'downloaded' if how == 'download' else 'found in cache'}"
         f" from {source.get('endpoint') or source.get('path') or folder} in {time.perf_counter() - start:.1f} s,"
         f" sha256 {v.sha256[:16]}... verified against the lock")
    report = _report(settings, profile, selection, selected=name, variant=v.to_dict(), cross=cross,
                     files={n: {k: e[k] for k in ("sha256", "size")} for n, e in (record.get("files") or {}).items()},
                     source=source, lock={"repo": lock.repo,
                     "revision": lock.revision, "commit": lock.commit})
    if lock.trust == "hub":  # no lock in this tree: the release travels with the wheel
        from .fetch.trust import release_record

        report["release"] = release_record(lock, settings.endpoint)
    if settings.target == name:
        # LLAMA_RUNTIME_TARGET=<variant> names the variant the target machine is to run, as
        # LLAMA_RUNTIME_VARIANT would: the loader there keeps it instead of re-selecting
        report["request"]["variant"] = name
    plan = WheelPlan(tag=f"py3-none-{platform_tag(v.os, v.arch, v.requires)}",
                     dependencies=list(v.python_requires), report=report)
    plan.force_include = {str(folder / f): f"{LIBS}/{f}" for f in v.files}
    return _finish(plan, staging, editable)


def _finish(plan: WheelPlan, staging: Path, editable: bool) -> WheelPlan:
    """Write the report; an editable wheel carries the files in a package of their own.

    The editable import reads ``llama_runtime`` from the source tree, so a library shipped as
    ``llama_runtime/_libs`` in the editable wheel would be shadowed. As ``llama_runtime_libs/``
    it lands in site-packages, is listed in the wheel's RECORD, is found by the loader, and is
    removed by ``pip uninstall`` like any installed file (nothing is written into the tree).
    """
    report_path = _write_report(staging, plan.report)
    plan.force_include[str(report_path)] = f"{LIBS}/selection.json"
    if editable:
        plan.force_include = {src: dest.replace(LIBS, EDITABLE_LIBS, 1)
                              for src, dest in plan.force_include.items()}
    return plan
