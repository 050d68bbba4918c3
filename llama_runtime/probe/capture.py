"""Build a :class:`MachineProfile` from captured tool output, through the same pure parsers the
live probe uses. Golden machine fixtures go through here; so can a support ticket's pasted output.

Keys (all optional except ``os`` and ``arch``): ``cpuinfo``, ``windows_pf`` (codes for which
``IsProcessorFeaturePresent`` returned true), ``libc`` (``"glibc 2.35"`` or the ``ld-musl`` banner),
``libstdcxx`` (the newest ``GLIBCXX_`` version ``strings libstdc++.so.6`` shows, e.g. ``"3.4.29"``),
``nvidia_proc_version``, ``nvidia_sys_module_version``, ``nvidia_smi`` (the csv query),
``nvidia_smi_header``, ``kfd_properties`` (list of node files), ``rocminfo``, ``vulkaninfo``,
``sysctl`` (``{"machdep.cpu.brand_string": ..., "hw.optional.arm64": ...}``, or the text
``sysctl hw.optional machdep.cpu sysctl.proc_translated`` printed), ``sw_vers``;
x86 register values: ``cpuid`` (``{"7.0": [eax, ebx, ecx, edx], ...}``, hex strings), ``xcr0``
(hex string) and ``xcomp`` (``{"supp": hex, "perm": hex}`` or ``{"error": "ARCH_GET_XCOMP_SUPP:
EINVAL ..."}``, Linux's arch_prctl answers).
"""

from __future__ import annotations

from typing import Any

from .apple import cpu_from_sysctl, merge_cpu, parse_apple, parse_sysctl
from .cpu import ggml_features, normalize_arch, parse_cpuinfo, usable_flags, x86_64_level
from .gpu import parse_nvidia_proc_version
from .libc import parse_glibc_version, parse_musl_version
from .nvidia import cuda_from_driver, parse_smi_csv, parse_smi_header, parse_sys_module_version
from .profile import MachineProfile
from .rocm import parse_kfd_properties, parse_rocminfo
from .vulkan import parse_vulkaninfo_summary
from .windows import features_from_pf


def _int(value: Any) -> int | None:
    return None if value is None else int(value, 16) if isinstance(value, str) else int(value)


def _x86(data: dict[str, Any]) -> dict[str, Any]:
    from .xsave import x86_facts

    xcomp = data.get("xcomp")
    if xcomp is not None:
        xcomp = {"supp": _int(xcomp.get("supp")), "perm": _int(xcomp.get("perm")), "error": xcomp.get("error")}
    return x86_facts(data.get("cpuid"), _int(data.get("xcr0")), xcomp, data["os"])


def _cpu(data: dict[str, Any], arch: str) -> dict[str, Any]:
    if "windows_pf" in data:
        info: dict[str, Any] = {"vendor": data.get("cpu_vendor"), "model_name": None,
                                "flags": features_from_pf(data["windows_pf"])}
    else:
        info = parse_cpuinfo(data.get("cpuinfo", ""))
    flags = info["flags"]
    out = {"arch": arch, "vendor": info["vendor"], "model_name": info["model_name"],
           "microarchitecture": data.get("microarchitecture")}
    if arch == "x86_64" and "cpuid" in data:  # the same rule as read_cpu: CPUID where the OS says less
        x86 = _x86(data)
        out.update(x86)
        flags, _ = usable_flags(flags, x86, data["os"])
        out["vendor"] = out["vendor"] or x86["cpuid"]["vendor"]
    out.update({"x86_64_level": x86_64_level(flags) if arch == "x86_64" and flags else None,
                "features": ggml_features(arch, flags), "error": None if flags else "unknown, because no CPU flags"})
    return out


def _libc(text: str | None, libstdcxx: str | None = None) -> dict[str, Any]:
    if not text:
        return {"name": None, "version": None, "error": None}
    glibc = parse_glibc_version(text)
    if glibc:
        cxx = {"version": libstdcxx, "path": None, "error": None} if libstdcxx else None
        return {"name": "glibc", "version": glibc, "error": None, **({"libstdcxx": cxx} if cxx else {})}
    return {"name": "musl", "version": parse_musl_version(text), "error": None}


def _nvidia(data: dict[str, Any]) -> dict[str, Any]:
    driver = (parse_nvidia_proc_version(data.get("nvidia_proc_version", ""))
              or parse_sys_module_version(data.get("nvidia_sys_module_version", "")))
    header = parse_smi_header(data.get("nvidia_smi_header", ""))
    gpus = parse_smi_csv(data.get("nvidia_smi", ""))
    driver = driver or header["driver"] or (gpus[0]["driver"] if gpus else None)
    found = bool(driver or header["cuda_driver"])
    cuda, source = header["cuda_driver"], "nvidia-smi" if found else None
    if driver and cuda is None:  # as the live probe does when libcuda and nvidia-smi are silent
        cuda = cuda_from_driver(driver)
        source = "driver version table" if cuda else source
    return {"driver": driver, "cuda_driver": cuda,
            "gpus": [{k: g[k] for k in ("name", "compute_capability", "memory_mib")} for g in gpus],
            "error": None if found else "none in the captured output", "source": source}


def _rocm(data: dict[str, Any]) -> dict[str, Any]:
    gfx = [t for t in (parse_kfd_properties(p) for p in data.get("kfd_properties") or []) if t]
    if gfx:
        return {"gpus": [{"name": None, "gfx": t} for t in gfx], "error": None, "source": "kfd"}
    gpus = parse_rocminfo(data.get("rocminfo", ""))
    return {"gpus": gpus, "error": None if gpus else "no AMD GPU driver found",
            "source": "rocminfo" if gpus else None}


def _apple(data: dict[str, Any], arch: str) -> dict[str, Any]:
    """The ``apple`` part: ``sysctl`` is a mapping of values, or the text ``sysctl`` printed."""
    sysctl = data.get("sysctl") or {}
    values = parse_sysctl(sysctl) if isinstance(sysctl, str) else dict(sysctl)
    apple = parse_apple(values.get("machdep.cpu.brand_string", ""), values.get("hw.optional.arm64", "0"),
                        data.get("sw_vers", ""), data.get("machine", data["arch"]),
                        values.get("sysctl.proc_translated"))
    apple["cpu"] = cpu_from_sysctl(values, arch)
    return apple


def profile_from_captures(data: dict[str, Any]) -> MachineProfile:
    """Captured outputs of one machine -> its profile (no I/O)."""
    os_name, arch = data["os"], normalize_arch(data["arch"])
    apple = _apple(data, arch) if os_name == "macos" else {}
    cpu = merge_cpu(_cpu(data, arch), apple) if apple else _cpu(data, arch)
    vulkan = parse_vulkaninfo_summary(data.get("vulkaninfo", ""))
    return MachineProfile(
        os=os_name, arch=arch, libc=_libc(data.get("libc"), data.get("libstdcxx")), cpu=cpu, nvidia=_nvidia(data),
        rocm=_rocm(data) if os_name == "linux" else {},
        vulkan={"devices": vulkan, "error": None if vulkan else "unknown, because vulkaninfo is not installed"},
        apple=apple,
    )
