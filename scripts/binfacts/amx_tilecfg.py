"""Prove, from a built ggml CPU plugin, the 64 bytes each ``ldtilecfg`` loads (issue 14).

ggml's AMX kernels need the tile configuration of ``ggml_tile_config_init()`` (mmq.cpp): palette
1, rows/colsb of tiles 0-7. GCC 12 built it on the stack and dropped the rows/colsb stores, so
the tiles ran unconfigured and the first tile instruction raised SIGILL on Sapphire Rapids.
That cannot execute on a machine without AMX, but it can be read from the binary:

* operand RIP-relative (our patch: a constant in .rodata): the bytes are read from the ELF file;
* operand on the stack (upstream): the straight-line code right before the instruction is
  replayed (immediates, zero idioms, loads from read-only data, stores relative to the same base
  register); any store or register change it cannot follow leaves those bytes unknown.

Either way the 64 bytes must be known and equal the intended configuration, else the site is a
defect. ``intended_config`` reads the intent from mmq.cpp itself; ``check_plugin`` does the I/O.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

Bytes = list["int | None"]  # one entry per byte; None: not known from the code
SITE = re.compile(r"^\s*([0-9a-f]+):\t(\S+)\s*(.*?)(?:\s+# ([0-9a-f]+) <[^>]*>)?\s*$")
FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")
MEM = re.compile(r"^(-?0x[0-9a-f]+|-?\d+)?\((%\w+)\)$")
OPERAND = re.compile(r"(?:[^,(]|\([^)]*\))+")
BRANCH = re.compile(r"^(j\w+|call\w*|ret\w*|loop\w*|jmp\w*|ud2|hlt|(notrack|bnd)\b.*)$")
# mnemonics whose last operand is memory but which do not write it
NO_WRITE = re.compile(r"^(cmp|test|bt\b|prefetch|v?u?comis|v?ptest|ldtilecfg|nop)")
_GPR_BASES = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")


@dataclass(frozen=True)
class Insn:
    address: int
    mnemonic: str
    text: str  # the operands as objdump prints them
    target: int | None  # the address objdump resolved for a RIP-relative operand or a branch

    @cached_property
    def operands(self) -> tuple[str, ...]:  # split only where a block is replayed
        return split_operands(self.text)


@dataclass(frozen=True)
class Site:
    """One ``ldtilecfg``: where, its operand, the bytes it loads as far as known, the verdict."""

    function: str
    address: int
    operand: str
    source: str  # "read-only data (.rodata)", "the stack, rebuilt from N stores", ...
    loaded: tuple[int | None, ...]
    ok: bool

    def describe(self, intended: bytes) -> str:
        state = "loads the intended configuration" if self.ok else "DEFECT"
        return (f"ldtilecfg {self.operand} at {self.address:#x} in {self.function}, from "
                f"{self.source}: "
                f"{state}; loads {describe_config(self.loaded)}"
                + ("" if self.ok else f"; mmq.cpp intends {describe_config(tuple(intended))}"))


def intended_config(mmq_cpp: str) -> bytes:
    """The 64-byte tile_config_t that ``ggml_tile_config_init`` in mmq.cpp describes."""
    cfg = bytearray(64)
    palette = re.search(r"\btc\.palette_id\s*=\s*(\d+)\s*;", mmq_cpp)
    pairs = re.findall(r"\btc\.rows\[(\d+)\]\s*=\s*(\d+)\s*;\s*tc\.colsb\[\1\]\s*=\s*(\d+)\s*;",
                       mmq_cpp)
    if palette is None or not pairs:
        raise ValueError("mmq.cpp has no `tc.palette_id = ...; tc.rows[i] = ...; tc.colsb[i] = ...`"
                         " lines: the AMX tile configuration code changed; update amx_tilecfg")
    cfg[0] = int(palette[1])
    for tile, rows, colsb in pairs:
        cfg[48 + int(tile)] = int(rows)
        struct.pack_into("<H", cfg, 16 + 2 * int(tile), int(colsb))
    return bytes(cfg)


def describe_config(cfg: Sequence[int | None]) -> str:
    """``palette 1, start_row 0, rows [8, ...], colsb [64, ...]`` (tiles 0-7; ? = unknown)."""
    def num(lo: int, width: int) -> str:
        part = cfg[lo:lo + width]
        return "?" if any(b is None for b in part) else str(
            int.from_bytes(bytes(b for b in part if b is not None), "little"))

    rows = ", ".join(num(48 + t, 1) for t in range(8))
    colsb = ", ".join(num(16 + 2 * t, 2) for t in range(8))
    rest = [b for i, b in enumerate(cfg) if 2 <= i < 16 or 32 <= i < 48 or i >= 56]
    tail = "" if all(b == 0 for b in rest) else ", other bytes " + (
        "unknown" if None in rest else "non-zero")
    return f"palette {num(0, 1)}, start_row {num(1, 1)}, rows [{rows}], colsb [{colsb}]{tail}"


# --------------------------------------------------------------------------- ELF and objdump
@dataclass(frozen=True)
class Section:
    name: str
    address: int
    offset: int
    size: int
    writable: bool
    nobits: bool


def elf_sections(data: bytes) -> list[Section]:
    """The sections of a little-endian ELF64 file (pure Python: offsets from the header)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]

    def name(at: int) -> str:
        end = data.index(b"\0", strtab_off + at)
        return data[strtab_off + at:end].decode()

    return [Section(name(n), addr, off, size, bool(flags & 1), kind == 8)  # SHF_WRITE, SHT_NOBITS
            for n, kind, flags, addr, off, size in raw]


def read_vaddr(data: bytes, sections: Sequence[Section], address: int,
               size: int) -> tuple[bytes, Section]:
    """``size`` bytes at virtual address ``address`` and the section that holds them."""
    for s in sections:
        if s.address and s.address <= address and address + size <= s.address + s.size:
            if s.nobits:
                return bytes(size), s  # .bss: zero at load time
            start = s.offset + address - s.address
            return data[start:start + size], s
    raise ValueError(f"no section holds {size} bytes at {address:#x}")


def split_operands(text: str) -> tuple[str, ...]:
    """AT&T operands, split at commas outside parentheses."""
    return tuple(p.strip() for p in OPERAND.findall(text) if p.strip())


def parse_objdump(text: str) -> dict[str, list[Insn]]:
    """``objdump -d -w --no-show-raw-insn`` output: each function's instructions, in order."""
    functions: dict[str, list[Insn]] = {}
    current: list[Insn] = []
    for line in text.splitlines():
        head = FUNC.match(line)
        if head:
            current = functions.setdefault(head[1], [])
            continue
        m = SITE.match(line)
        if m and not m[2].startswith("("):  # "(bad)" lines are data
            branch_to = re.fullmatch(r"([0-9a-f]+) <.*>", m[3]) if BRANCH.match(m[2]) else None
            target = int(m[4], 16) if m[4] else int(branch_to[1], 16) if branch_to else None
            current.append(Insn(int(m[1], 16), m[2], m[3], target))
    return functions


def disassemble(path: Path) -> str:
    objdump = shutil.which("objdump")
    if objdump is None:
        raise RuntimeError("objdump not found: install binutils (apt-get install binutils)")
    proc = subprocess.run([objdump, "-d", "-w", "--no-show-raw-insn", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"objdump -d {path} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


# --------------------------------------------------------------------------- replaying stores
VEC = re.compile(r"^%([xyz])mm(\d+)$")
VEC_MOV = re.compile(r"^v?mov(dqa|dqu|aps|ups|apd|upd)(8|16|32|64)?$|^v?mov[qd]$")
GPR_MOV = re.compile(r"^mov[bwlq]?$|^movabs$")
ZERO_VEC = re.compile(r"^v?p?xor(p[sd]|d|q)?$")
IMPLICIT_AX_DX = re.compile(r"^(cltd|cqto|cltq|cwtl|c[wdq]t[dqo]|i?div\w?|i?mul\w?|rdtscp?|cpuid)$")
MEMORY_OPS = re.compile(r"^(rep|stos|movs|cmpxchg|xchg|lock|scas|lods|push|pop|leave|enter)")


def _gpr(operand: str) -> tuple[str, int] | None:
    """(64-bit register family, width) of a general-purpose register operand."""
    name = operand.removeprefix("%")
    numbered = re.fullmatch(r"r(\d+)([dwb]?)", name)
    if numbered:
        return f"r{numbered[1]}", {"": 8, "d": 4, "w": 2, "b": 1}[numbered[2]]
    for base in _GPR_BASES:
        widths = {"r" + base: 8, "e" + base: 4, base: 2, base[0] + "l": 1,
                  (base + "l") if base in ("si", "di", "bp", "sp") else "": 1}
        if name in widths:
            return base, widths[name]
    return None


def _vec(operand: str) -> tuple[str, int] | None:
    m = VEC.match(operand)
    return (f"v{m[2]}", {"x": 16, "y": 32, "z": 64}[m[1]]) if m else None


def _register(operand: str) -> tuple[str, int] | None:
    return _vec(operand) or _gpr(operand)


def _immediate(operand: str, width: int) -> Bytes | None:
    if not operand.startswith("$"):
        return None
    value = int(operand[1:], 0) & ((1 << (8 * width)) - 1)
    return list(value.to_bytes(width, "little"))


class _Replay:
    """The bytes a straight-line block stores at ``disp(%base)``, as far as they can be followed."""

    def __init__(self, base: str, read_only: "ReadOnly") -> None:
        self.base, self.read_only = base, read_only
        self.memory: dict[int, int | None] = {}
        self.regs: dict[str, Bytes] = {}

    def value(self, operand: str, width: int, insn: Insn) -> Bytes | None:
        """What a source operand holds: an immediate, a followed register, read-only data."""
        imm = _immediate(operand, width)
        if imm is not None:
            return imm
        reg = _register(operand)
        if reg is not None:
            return list(self.regs.get(reg[0], [None] * 64)[:width])
        if operand.endswith("(%rip)") and insn.target is not None:
            data = self.read_only(insn.target, width)
            return None if data is None else list(data)
        return None

    def set_reg(self, operand: str, value: Bytes | None, vex: bool) -> None:
        family, width = _register(operand) or ("", 0)
        old = self.regs.get(family, [None] * 64)
        if value is None:
            self.regs[family] = [None] * 64
        elif family.startswith("v"):  # VEX/EVEX writes zero the upper bits, legacy SSE keeps them
            self.regs[family] = value + ([0] * (64 - width) if vex else old[width:])
        else:  # a 32-bit write zero-extends; 8/16-bit writes keep the rest
            self.regs[family] = value + ([0] * (8 - width) if width == 4 else old[width:8])

    def store(self, operand: str, value: Bytes | None, width: int) -> bool:
        m = MEM.match(operand)
        if m is None or m[2] != "%" + self.base:
            return False  # a store through another pointer may alias the frame: give up
        disp = int(m[1] or "0", 0)
        for i in range(width):
            self.memory[disp + i] = None if value is None else value[i]
        return True

    def step(self, insn: Insn) -> bool:
        """Follow one instruction; False when it is beyond what can be followed soundly."""
        ops, mn = insn.operands, insn.mnemonic
        if MEMORY_OPS.match(mn) or any(_gpr(o) == (self.base, 8) for o in ops[-1:]):
            return False
        if IMPLICIT_AX_DX.match(mn):
            self.regs.pop("ax", None)
            self.regs.pop("dx", None)
        if not ops:
            return True
        dest = ops[-1]
        vectors = {v for v in map(_vec, ops) if v is not None}
        vec_dest = _vec(dest)
        if ZERO_VEC.match(mn) and vec_dest and len({name for name, _ in vectors}) == 1:
            self.set_reg(dest, [0] * vec_dest[1], mn.startswith("v"))  # x ^ x: the zero idiom
            return True
        if mn.startswith("xor") and len(ops) == 2 and _gpr(ops[0]) == _gpr(dest) and _gpr(dest):
            self.set_reg(dest, [0] * 8, False)
            return True
        return self.move(insn, dest) if VEC_MOV.match(mn) or GPR_MOV.match(mn) else \
            self.other(insn, dest)

    def move(self, insn: Insn, dest: str) -> bool:
        src = insn.operands[0]
        width = _move_width(insn.mnemonic, src, dest)
        if width is None:
            return False
        value = self.value(src, width, insn)
        if _register(dest):
            self.set_reg(dest, value, insn.mnemonic.startswith("v") or width < 16)
            return True
        return self.store(dest, value, width)

    def other(self, insn: Insn, dest: str) -> bool:
        if _register(dest):
            self.set_reg(dest, None, True)
            return True
        if not MEM.match(dest) and "(" not in dest:
            return True  # no destination operand (an immediate or a label)
        return bool(NO_WRITE.match(insn.mnemonic))  # any other memory write: give up


def _move_width(mnemonic: str, src: str, dest: str) -> int | None:
    if mnemonic in ("movq", "vmovq") and (_vec(src) or _vec(dest)):
        return 8
    if mnemonic in ("movd", "vmovd"):
        return 4
    reg = _register(dest) or _register(src)
    if reg is not None:
        return reg[1]
    suffix = {"b": 1, "w": 2, "l": 4, "q": 8}
    return suffix.get(mnemonic[-1]) if mnemonic.startswith("mov") else None


class ReadOnly:
    """Reads ``size`` bytes at a virtual address of a plugin, only from read-only sections."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sections = data, elf_sections(data)

    def __call__(self, address: int, size: int) -> bytes | None:
        found, section = read_vaddr(self.data, self.sections, address, size)
        return None if section.writable else found

    def section(self, address: int) -> Section:
        return read_vaddr(self.data, self.sections, address, 1)[1]


# --------------------------------------------------------------------------- verdicts
def _block(insns: Sequence[Insn], index: int, targets: set[int]) -> Sequence[Insn]:
    """The straight-line instructions that run right before ``insns[index]`` on every path."""
    start = index
    while (start > 0 and insns[start].address not in targets
           and not BRANCH.match(insns[start - 1].mnemonic)):
        start -= 1
    return insns[start:index]


def _site(function: str, insns: Sequence[Insn], index: int, targets: set[int],
          read_only: ReadOnly, intended: bytes) -> Site:
    insn = insns[index]
    operand = insn.operands[0] if insn.operands else ""
    if operand.endswith("(%rip)") and insn.target is not None:
        section = read_only.section(insn.target)
        raw = read_only(insn.target, 64)
        loaded: tuple[int | None, ...] = tuple(raw) if raw else (None,) * 64
        where = f"{'writable' if section.writable else 'read-only'} data ({section.name})"
        return Site(function, insn.address, operand, where, loaded, _known(loaded) == intended)
    mem = MEM.match(operand)
    block = _block(insns, index, targets)
    replay = _Replay(mem[2].lstrip("%"), read_only) if mem else None
    followed = replay is not None and all(replay.step(i) for i in block)
    disp = int(mem[1] or "0", 0) if mem else 0
    loaded = tuple(replay.memory.get(disp + i) for i in range(64)) if followed and replay \
        else (None,) * 64
    where = (f"memory built at run time, replayed from the {len(block)} straight-line "
             "instructions before it" if followed else "memory built by code it cannot follow")
    return Site(function, insn.address, operand, where, loaded, _known(loaded) == intended)


def _known(loaded: Sequence[int | None]) -> bytes | None:
    """The bytes, when every one of them is known."""
    return None if None in loaded else bytes(b for b in loaded if b is not None)


def find_sites(disassembly: str, elf: bytes, intended: bytes) -> list[Site]:
    """Every ``ldtilecfg`` of a disassembled plugin, with the bytes it loads and the verdict."""
    functions = parse_objdump(disassembly)
    targets = {i.target for insns in functions.values() for i in insns
               if i.target is not None and BRANCH.match(i.mnemonic)}
    read_only = ReadOnly(elf)
    return [_site(name, insns, n, targets, read_only, intended)
            for name, insns in functions.items()
            for n, insn in enumerate(insns) if insn.mnemonic == "ldtilecfg"]


def check_plugin(path: Path, mmq_cpp: Path) -> list[Site]:
    """The ``ldtilecfg`` sites of one built plugin, judged against ``mmq_cpp``'s configuration."""
    return find_sites(disassemble(path), Path(path).read_bytes(),
                      intended_config(Path(mmq_cpp).read_text()))


def defects(sites: Sequence[Site], intended: bytes, plugin: str) -> list[str]:
    """One message per site that does not provably load ``intended`` (none found is one too)."""
    if not sites:
        return [f"{plugin}: no ldtilecfg instruction found: not an AMX build of ggml's CPU backend"]
    return [f"{plugin}: {s.describe(intended)}" for s in sites if not s.ok]
