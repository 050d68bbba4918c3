"""x86: what the CPU reports (CPUID) and what the OS has enabled (XCR0, Linux's AMX permission).

An instruction set is usable only when the CPU has it *and* the OS saves its registers: AVX
needs XCR0 bits 1-2, AVX-512 bits 5-7, AMX bits 17-18 and, on Linux, a per-process permission
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``). ggml scores its CPU plugins from CPUID alone ("FIXME: this
does not check for OS support"), so a CPU whose OS disables a state gets a plugin that dies with
"Illegal instruction". :func:`x86_facts` is pure (tests feed captured register values);
:func:`read_x86` reads them: CPUID and XGETBV by running a few bytes of machine code from an
executable mapping (Python has neither instruction; py-cpuinfo does the same for CPUID), the
AMX permission through ``syscall(SYS_arch_prctl, ...)``. The probe only *reads* the permission:
requesting it changes the process (larger signal frames) and is ggml's own business when it
initialises AMX; "grantable" is what the kernel offers (``ARCH_GET_XCOMP_SUPP``).
Every failure becomes "unknown, because ...", never an exception.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

_REGS = ("eax", "ebx", "ecx", "edx")


@lru_cache(maxsize=1)
def x86_data() -> dict[str, Any]:
    """The CPUID bits, XCR0 components and state groups shipped as data (``x86.json``)."""
    data: dict[str, Any] = json.loads((Path(__file__).parent / "x86.json").read_text(encoding="utf-8"))
    return data


def leaf_key(leaf: int, subleaf: int) -> str:
    return f"{leaf:x}.{subleaf}"


def _regs(values: Sequence[Any]) -> list[int]:
    return [int(v, 16) if isinstance(v, str) else int(v) for v in values]


def parse_cpuid(leaves: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Captured CPUID leaves (``{"7.0": [eax, ebx, ecx, edx]}``, ints or hex) -> vendor and flags.

    Leaves above the CPU's maximum are ignored: CPUID then returns another leaf's data.
    """
    regs = {k: _regs(v) for k, v in leaves.items()}
    zero = regs.get("0.0")
    vendor = None
    if zero:
        vendor = b"".join(r.to_bytes(4, "little") for r in (zero[1], zero[3], zero[2])).decode("ascii", "replace")
    max_basic = zero[0] if zero else 0
    max_ext = regs.get("80000000.0", [0])[0]
    max_sub7 = regs.get("7.0", [0])[0]

    def valid(key: str) -> bool:
        leaf, _, sub = key.partition(".")
        n = int(leaf, 16)
        if n >= 0x80000000:
            return n <= max_ext
        return n <= max_basic and (n != 7 or int(sub) <= max_sub7)

    flags = [name for name, (key, reg, bit) in x86_data()["cpuid_bits"].items()
             if key in regs and valid(key) and regs[key][_REGS.index(reg)] >> bit & 1]
    return {"vendor": vendor, "flags": flags}


def xcr0_components(xcr0: int) -> list[str]:
    return [name for name, bit in x86_data()["xcr0_bits"].items() if xcr0 >> bit & 1]


def _amx_permission(xcomp: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """Linux only: may this process use AMX tile data? (allowed, words)."""
    bit = x86_data()["xcr0_bits"]["tiledata"]
    if xcomp is None:
        return None, "unknown, because arch_prctl was not asked"
    if xcomp.get("error"):
        if "EINVAL" in str(xcomp["error"]):
            return False, "this kernel predates AMX support (arch_prctl ARCH_GET_XCOMP_SUPP: EINVAL; Linux 5.16+)"
        return None, f"unknown, because arch_prctl failed ({xcomp['error']})"
    supp, perm = xcomp.get("supp"), xcomp.get("perm")
    if supp is None:
        return None, "unknown, because ARCH_GET_XCOMP_SUPP gave no answer"
    if not int(supp) >> bit & 1:
        return False, "the kernel does not offer AMX tile data (ARCH_GET_XCOMP_SUPP lacks bit 18)"
    if perm is not None and int(perm) >> bit & 1:
        return True, "granted to this process"
    return True, "grantable: ggml requests it (ARCH_REQ_XCOMP_PERM) when it initialises AMX"


def _group_state(name: str, group: Mapping[str, Any], components: list[str] | None, osxsave: bool | None,
                 os_name: str, xcomp: Mapping[str, Any] | None) -> dict[str, Any]:
    what = group["what"]
    if osxsave is False:
        return {"enabled": False, "why": f"the OS has not enabled XSAVE (CPUID.1:ECX.OSXSAVE = 0): no {what}"}
    if name in x86_data()["lazy_groups"].get(os_name, ()):
        return {"enabled": True, "why": f"{os_name} enables {what} on first use"}
    if components is None:
        return {"enabled": None, "why": "unknown, because XCR0 could not be read"}
    missing = [c for c in group["xcr0"] if c not in components]
    if missing:
        bits = ", ".join(str(x86_data()["xcr0_bits"][c]) for c in missing)
        return {"enabled": False, "why": f"the OS does not enable {what} (XCR0 lacks bit(s) {bits})"}
    if group.get("linux_permission") and os_name == "linux":
        allowed, words = _amx_permission(xcomp)
        return {"enabled": allowed, "why": f"{what} enabled in XCR0; permission: {words}"}
    return {"enabled": True, "why": f"{what} enabled (XCR0)"}


def os_state(cpuid_flags: Iterable[str] | None, xcr0: int | None, xcomp: Mapping[str, Any] | None,
             os_name: str) -> dict[str, Any]:
    """Which register states the OS enables, each with its reason, and the CPUID features it disables.

    ``cpuid_flags`` None: CPUID unknown. ``xcr0`` None: unknown; on Linux the kernel's
    ``ARCH_GET_XCOMP_SUPP`` (its XCR0 user features) stands in for it.
    """
    flags = None if cpuid_flags is None else set(cpuid_flags)
    source = "xgetbv"
    if xcr0 is None and xcomp and xcomp.get("supp") is not None:
        xcr0, source = int(xcomp["supp"]), "arch_prctl ARCH_GET_XCOMP_SUPP"
    components = None if xcr0 is None else xcr0_components(xcr0)
    osxsave = None if flags is None else "osxsave" in flags
    groups = {name: _group_state(name, g, components, osxsave, os_name, xcomp)
              for name, g in x86_data()["state_groups"].items()}
    for name, g in x86_data()["state_groups"].items():
        if flags is not None and not flags & set(g["features"]):
            groups[name]["why"] = f"this CPU has no {name.upper()} (CPUID); " + groups[name]["why"]
    off = disabled_features({"groups": groups})
    return {"xcr0": None if xcr0 is None else f"{xcr0:#x}", "xcr0_source": source if xcr0 is not None else None,
            "xcr0_components": components, "groups": groups,
            "disabled": sorted(f for f in flags or () if f in off),
            "xcomp_supp": _hex((xcomp or {}).get("supp")), "xcomp_perm": _hex((xcomp or {}).get("perm"))}


def _hex(value: Any) -> str | None:
    return None if value is None else f"{int(value):#x}"


def disabled_features(state: Mapping[str, Any] | None) -> set[str]:
    """Flags whose register state the OS does not enable (an unknown state disables nothing)."""
    groups = (state or {}).get("groups") or {}
    spec = x86_data()["state_groups"]
    return {f for name, g in groups.items() if g.get("enabled") is False for f in spec[name]["features"]}


def x86_facts(leaves: Mapping[str, Sequence[Any]] | None, xcr0: int | None,
              xcomp: Mapping[str, Any] | None, os_name: str, error: str | None = None) -> dict[str, Any]:
    """Captured values -> ``{"cpuid": {...}, "os": {...}}`` as the profile holds them (pure)."""
    parsed = parse_cpuid(leaves) if leaves else None
    cpuid = {"vendor": parsed["vendor"] if parsed else None, "features": parsed["flags"] if parsed else [],
             "leaves": {k: [f"{r:08x}" for r in _regs(v)] for k, v in (leaves or {}).items()},
             "error": None if parsed else (error or "unknown, because CPUID was not read")}
    state = os_state(parsed["flags"] if parsed else None, xcr0, xcomp, os_name)
    if error and parsed:
        state["error"] = error
    return {"cpuid": cpuid, "os": state}


# --- readers -----------------------------------------------------------------------------------

# x86-64 machine code. cpuid(leaf, subleaf, uint32_t out[4]); xgetbv(index) -> uint64.
# SysV passes arguments in rdi, rsi, rdx; Windows in rcx, rdx, r8. rbx is callee-saved in both.
_CPUID_SYSV = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
_CPUID_WIN = bytes.fromhex("53" "89c8" "89d1" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
_XGETBV_SYSV = bytes.fromhex("89f9" "0f01d0" "48c1e220" "4809d0" "c3")
_XGETBV_WIN = bytes.fromhex("0f01d0" "48c1e220" "4809d0" "c3")


class _Code:
    """Machine code in an executable page: ``with _Code(a, b) as (addr_a, addr_b): ...``."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts
        self._map: Any = None
        self._buf: Any = None
        self._win_addr = 0

    def __enter__(self) -> list[int]:
        import ctypes

        blob = b"".join(self.parts)
        if sys.platform == "win32":
            base = self._win_alloc(ctypes, blob)
        else:
            import mmap

            # PROT_EXEC on an anonymous mapping: refused by SELinux execmem and hardened kernels
            # (PermissionError), which the caller turns into "unknown, because ..."
            self._map = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            self._map.write(blob)
            self._buf = ctypes.c_char.from_buffer(self._map)
            base = ctypes.addressof(self._buf)
        offsets, at = [], 0
        for part in self.parts:
            offsets.append(base + at)
            at += len(part)
        return offsets

    def _win_alloc(self, ctypes: Any, blob: bytes) -> int:
        k32 = ctypes.windll.kernel32
        k32.VirtualAlloc.restype = ctypes.c_void_p
        k32.VirtualAlloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint32]
        addr = k32.VirtualAlloc(None, 4096, 0x3000, 0x40)  # MEM_COMMIT|MEM_RESERVE, PAGE_EXECUTE_READWRITE
        if not addr:
            raise OSError(f"VirtualAlloc failed ({ctypes.GetLastError()})")
        ctypes.memmove(addr, blob, len(blob))
        self._win_addr = addr
        return int(addr)

    def __exit__(self, *exc: object) -> None:
        if self._win_addr:
            import ctypes

            ctypes.windll.kernel32.VirtualFree(ctypes.c_void_p(self._win_addr), 0, 0x8000)  # type: ignore[attr-defined,unused-ignore]
        self._buf = None  # the exported buffer must go before the mapping can close
        if self._map is not None:
            self._map.close()


def _read_registers() -> tuple[dict[str, list[int]], int | None, str | None]:
    """CPUID leaves and XCR0 of this CPU; raises on any failure (the caller words it)."""
    import ctypes

    win = sys.platform == "win32"
    with _Code(_CPUID_WIN if win else _CPUID_SYSV, _XGETBV_WIN if win else _XGETBV_SYSV) as (c_addr, x_addr):
        cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(c_addr)
        out = (ctypes.c_uint32 * 4)()
        leaves: dict[str, list[int]] = {}
        for leaf, sub in x86_data()["leaves"]:
            cpuid(leaf, sub, out)
            leaves[leaf_key(leaf, sub)] = list(out)
        # XGETBV faults (#UD, SIGILL) unless the OS set CR4.OSXSAVE: check the CPUID bit first
        if not leaves["1.0"][2] >> 27 & 1:
            return leaves, None, "XCR0 not read: the OS has not enabled XSAVE (OSXSAVE = 0)"
        xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(x_addr)
        return leaves, int(xgetbv(0)), None


def read_xcomp() -> dict[str, Any]:
    """Linux: ``arch_prctl(ARCH_GET_XCOMP_SUPP / _PERM)``; ``{"supp", "perm", "error"}``."""
    import ctypes
    import errno
    import os

    spec = x86_data()["arch_prctl"]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        out: dict[str, Any] = {"supp": None, "perm": None, "error": None}
        for key, op in (("supp", "ARCH_GET_XCOMP_SUPP"), ("perm", "ARCH_GET_XCOMP_PERM")):
            value = ctypes.c_uint64(0)
            if libc.syscall(ctypes.c_long(spec["syscall"]), ctypes.c_long(spec[op]), ctypes.byref(value)) != 0:
                code = ctypes.get_errno()
                out["error"] = f"{op}: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
                return out
            out[key] = int(value.value)
        return out
    except Exception as exc:  # no libc symbol, a sandbox: never break the probe
        return {"supp": None, "perm": None, "error": f"{type(exc).__name__}: {exc}"}


def read_x86(os_name: str) -> dict[str, Any]:
    """This machine's CPUID and OS state (see :func:`x86_facts`). Never raises."""
    leaves: dict[str, list[int]] | None = None
    xcr0, error = None, None
    try:
        leaves, xcr0, error = _read_registers()
    except Exception as exc:  # executable memory refused, no ctypes: the probe carries on without
        error = f"unknown, because CPUID/XGETBV could not run ({type(exc).__name__}: {exc})"
    xcomp = read_xcomp() if os_name == "linux" else None
    return x86_facts(leaves, xcr0, xcomp, os_name, error)
