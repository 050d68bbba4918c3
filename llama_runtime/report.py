"""Human-readable renderings of doctor results and build reports."""

from __future__ import annotations

from typing import Any


def _profile_line(profile: dict[str, Any]) -> str:
    from .probe import MachineProfile

    return MachineProfile.from_dict(profile).summary()


def format_doctor(result: dict[str, Any]) -> str:
    lines = [f"machine:  {_profile_line(result['profile'])}"]
    for name, part in (("cpu", result["profile"].get("cpu")), ("nvidia", result["profile"].get("nvidia")),
                       ("libc", result["profile"].get("libc"))):
        if part and part.get("error"):
            lines.append(f"          {name}: {part['error']}")
    lines.append("candidates:")
    width = max([len(c["name"]) for c in result["candidates"]] + [4])
    for c in result["candidates"]:
        mark = "ok " if c["compatible"] else "no "
        lines.append(f"  {mark} {c['name']:<{width}}  score {c['score']:>6g}  {'; '.join(c['reasons'])}")
    lines.append(f"selected: {result['selected'] or 'none'}")
    for w in result.get("warnings") or []:
        lines.append(f"warning:  {w}")
    for name, deps in (result.get("native_dependencies") or {}).items():
        lines.append(f"needs:    {name}:")
        for d in deps:
            where = d["where"] if d["found"] else f"MISSING (from {d['provider'] or '?'})"
            lines.append(f"            {d['name']:<20} {where}")
    lines += _library_lines(result)
    for note in result.get("notes") or []:
        lines.append(f"note:     {note}")
    if result.get("error"):
        lines.append(f"error:    {result['error']}")
    return "\n".join(lines)


def _library_lines(result: dict[str, Any]) -> list[str]:
    lib = result.get("library")
    if lib is None:
        return ["library:  none loads"]
    if lib.get("path") is None:
        return [f"library:  {lib['variant']} would be downloaded on first use"]
    out = [f"library:  {lib['path']}", f"          source {lib['source']}, variant {lib.get('variant')},"
           f" sha256 {lib.get('sha256')}"]
    if lib.get("system_info"):
        out.append(f"          {lib['system_info']}")
    return out
