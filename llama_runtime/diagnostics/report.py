"""Human-readable renderings of doctor results and build reports."""

from __future__ import annotations

from typing import Any


def _profile_line(profile: dict[str, Any]) -> str:
    from ..probe import MachineProfile

    return MachineProfile.from_dict(profile).summary()


def format_doctor(result: dict[str, Any]) -> str:
    lines = [f"machine:  {_profile_line(result['profile'])}"]
    lines += _cpu_lines(result["profile"].get("cpu") or {})
    lines += _gpu_lines(result["profile"])
    for name in ("cpu", "libc", "nvidia", "rocm", "vulkan", "apple"):
        part = result["profile"].get(name)
        # a machine without AMD or Vulkan is normal; only an unanswered probe is worth a line
        quiet = name in ("rocm", "vulkan") and not str((part or {}).get("error")).startswith("unknown")
        if part and part.get("error") and not quiet:
            lines.append(f"          {name}: {part['error']}")
    lines.append("candidates:")
    width = max([len(c["name"]) for c in result["candidates"]] + [4])
    for c in result["candidates"]:
        mark = "ok " if c["compatible"] else "no "
        lines.append(f"  {mark} {c['name']:<{width}}  score {c['score']:>6g}  {'; '.join(c['reasons'])}")
    lines.append(f"selected: {result['selected'] or 'none'}")
    lines += _plugin_lines(result.get("plugins"))
    if result.get("qualification"):
        q = result["qualification"]
        lines.append(f"qualified: {q['variant']}: {q['summary']}")
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


def _cpu_lines(cpu: dict[str, Any]) -> list[str]:
    """x86: what CPUID reports next to what the OS enables (XCR0, Linux's AMX permission)."""
    cpuid, state = cpu.get("cpuid"), cpu.get("os")
    if not cpuid and not state:
        return []
    lines = [f"cpuid:    {' '.join(cpuid.get('features') or []) or cpuid.get('error')}" if cpuid else
             "cpuid:    not read"]
    if state:
        xcomp = f", arch_prctl supp {state['xcomp_supp']} perm {state['xcomp_perm']}" if state.get("xcomp_supp") else ""
        lines.append(f"os:       XCR0 {state.get('xcr0') or 'unknown'} ({state.get('xcr0_source') or 'not read'}){xcomp}")
        for name, group in (state.get("groups") or {}).items():
            mark = {True: "yes", False: "no ", None: "?  "}[group.get("enabled")]
            lines.append(f"          {mark} {name}: {group.get('why')}")
        if state.get("disabled"):
            lines.append(f"          CPUID reports, the OS disables: {' '.join(state['disabled'])}")
    return lines


def _plugin_lines(plugins: dict[str, Any] | None) -> list[str]:
    """The selected variant's CPU plugins, best first, as predicted from CPUID and the OS."""
    if not plugins or not plugins.get("candidates"):
        return []
    how = "measured in its test run" if plugins.get("measured") else "predicted from CPUID"
    lines = [f"plugins:  {plugins['variant']} ({how}): ggml would pick {plugins.get('ggml_pick') or 'none'};"
             f" usable here, best first: {', '.join(plugins.get('ranked') or []) or 'none'}"]
    for c in plugins["candidates"]:
        mark = "ok " if c["usable"] else "no "
        lines.append(f"  {mark} {c['file']}  {'; '.join(c['reasons'])}")
    return lines


def _gpu_lines(profile: dict[str, Any]) -> list[str]:
    """One line per GPU: NVIDIA with compute capability and memory, AMD gfx, Vulkan devices, Metal."""
    lines = []
    for g in (profile.get("nvidia") or {}).get("gpus") or []:
        mem = f", {g['memory_mib']} MiB" if g.get("memory_mib") else ""
        lines.append(f"gpu:      {g.get('name')} (CUDA, compute capability {g.get('compute_capability') or '?'}{mem})")
    for g in (profile.get("rocm") or {}).get("gpus") or []:
        lines.append(f"gpu:      {g.get('name') or 'AMD GPU'} (ROCm, {g.get('gfx')})")
    for d in (profile.get("vulkan") or {}).get("devices") or []:
        lines.append(f"gpu:      {d.get('name')} (Vulkan, {d.get('type')})")
    apple = profile.get("apple") or {}
    if apple.get("metal"):
        lines.append(f"gpu:      Metal on {apple.get('chip') or 'Apple Silicon'}, macOS {apple.get('macos') or '?'}")
    return lines


def _library_lines(result: dict[str, Any]) -> list[str]:
    lib = result.get("library")
    if lib is None:
        return ["library:  none loads"]
    if lib.get("path") is None:
        return [f"library:  {lib['variant']} would be downloaded on first use"]
    out = [f"library:  {lib['path']}", f"          source {lib['source']}, variant {lib.get('variant')},"
           f" sha256 {lib.get('sha256')}"]
    proof = lib.get("plugin") or {}
    if proof:
        crashed = "; ".join(f"{f} {w}" for f, w in sorted((proof.get("failed") or {}).items()))
        line = (f"          CPU plugin {proof.get('cpu_plugin') or '(linked in)'}, loaded {proof.get('mode')}"
                  f" (proof: {proof.get('source')}, {proof.get('record') or 'no record'})")
        out.append(line + (f"; crashed in its test run: {crashed}" if crashed else ""))
    for dev in lib.get("devices") or []:
        out.append(f"          device {dev['name']} ({dev['type']}): {dev['description']}")
    if lib.get("system_info"):
        out.append(f"          {lib['system_info']}")
    return out
