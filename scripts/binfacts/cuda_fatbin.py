"""The GPU code inside a CUDA shared library: which images it holds, and one-target copies.

nvcc puts one *fatbin* per translation unit into the ``.nv_fatbin`` section (ggml-cuda: 143).
Each is a container (magic ``0xBA55ED50``, u16 version, u16 header size, u64 size of what
follows) of entries laid end to end, each an entry header plus its payload:

=======  ====  ==================================================================
offset   type  field
=======  ====  ==================================================================
0        u16   kind: 1 PTX (``compute_XY``, JIT-compiled by the driver), 2 ELF cubin (``sm_XY``)
4        u32   entry header size (64, 72, 80, 88, 104 seen)
8        u64   payload size (8-byte aligned): the next entry starts at +header+payload
24, 26   u16   minor, major: the PTX ISA version for PTX (8.4 = CUDA 12.4, 9.1 = CUDA 13.1)
28       u32   architecture (86 = sm_86)
40       u64   flags: 0x2000 / 0x8000 compressed payload; 0x01000000 arch-specific (``sm_120a``)
56       u64   uncompressed size (compressed entries)
=======  ====  ==================================================================

(As cuobjdump and the CUDA runtime read it; tests check every name against NVIDIA's
``cuobjdump --list-elf --list-ptx``.) The host code points at each container's first byte
(``__fatbinwrap`` in ``.nvFatBinSegment``) and the runtime walks the entries from the header's
size, so a container that lists fewer entries is exactly what nvcc writes for fewer
``-gencode`` targets. :func:`keep_only` writes such a copy *in place of the original bytes*: each
container keeps its address, lists only the kept entries, and the bytes it no longer covers are
zero. No code, symbol, relocation or section moves; the file keeps its size, and the archive
(gzip) shrinks by what was dropped.
"""

from __future__ import annotations

import mmap
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xBA55ED50
_MAGIC = struct.pack("<I", MAGIC)
COMPRESSED = 0x2000 | 0x8000
ARCH_SPECIFIC = 0x01000000
# The CUDA release whose driver first JIT-compiles each PTX ISA (PTX ISA notes, "Release History").
PTX_ISA_CUDA = {(8, 0): "12.0", (8, 1): "12.1", (8, 2): "12.2", (8, 3): "12.3", (8, 4): "12.4",
                (8, 5): "12.5", (8, 6): "12.7", (8, 7): "12.8", (8, 8): "12.9", (9, 0): "13.0",
                (9, 1): "13.1", (9, 2): "13.2"}


class FatbinError(ValueError):
    """The file's fatbin containers are not what this reader knows."""


@dataclass(frozen=True)
class Image:
    """One entry of one fatbin container."""

    container: int  # file offset of the container header
    offset: int  # file offset of the entry header
    header: int  # entry header size
    payload: int  # payload size (aligned)
    kind: int  # 1 PTX, 2 cubin
    arch: int
    isa: tuple[int, int]
    flags: int
    uncompressed: int

    @property
    def target(self) -> str:
        """``sm_86``, ``sm_120a`` (a cubin), ``compute_75`` (PTX), as nvcc and cuobjdump say."""
        if self.kind == 1:
            return f"compute_{self.arch}"
        return f"sm_{self.arch}{'a' if self.flags & ARCH_SPECIFIC else ''}"

    @property
    def stored(self) -> int:
        return self.header + self.payload


def _containers(data: mmap.mmap) -> Iterator[tuple[int, int, int]]:
    """(start, entries start, end) of every container, in file order."""
    start = data.find(_MAGIC)
    while start != -1:
        _version, header, size = struct.unpack_from("<HHQ", data, start + 4)
        end = start + header + size
        if header < 16 or end > len(data):
            raise FatbinError(f"fatbin container at {start:#x} runs past the end of the file")
        yield start, start + header, end
        start = data.find(_MAGIC, end)


def _entries(data: mmap.mmap, container: int, pos: int, end: int) -> Iterator[Image]:
    while pos + 64 <= end:
        kind, _, header, payload = struct.unpack_from("<HHIQ", data, pos)
        minor, major, arch = struct.unpack_from("<HHI", data, pos + 24)
        flags, _, uncompressed = struct.unpack_from("<QQQ", data, pos + 40)
        if kind not in (1, 2) or header < 64 or pos + header + payload > end:
            raise FatbinError(f"unknown fatbin entry at {pos:#x} (kind {kind}, header {header})")
        yield Image(container, pos, header, payload, kind, arch, (major, minor), flags, uncompressed)
        pos += header + payload


def images(path: Path) -> list[Image]:
    """Every fatbin entry of ``path`` (an ELF shared library or object), in file order."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return [image for start, first, end in _containers(data)
                for image in _entries(data, start, first, end)]


def ptx_driver_cuda(found: list[Image]) -> str | None:
    """The CUDA version a driver must support to JIT-compile the PTX of ``found`` (None: no PTX)."""
    from llama_runtime.versions import version_tuple

    isas = {i.isa for i in found if i.kind == 1}
    unknown = isas - set(PTX_ISA_CUDA)
    if unknown:
        raise FatbinError(f"PTX ISA {sorted(unknown)} is not in PTX_ISA_CUDA: add it")
    return max((PTX_ISA_CUDA[isa] for isa in isas), key=version_tuple, default=None)


def targets(found: list[Image]) -> list[str]:
    """The distinct targets, cubins first, each by architecture."""
    names = {i.target: (i.kind, i.arch) for i in found}
    return sorted(names, key=lambda n: (-names[n][0], names[n][1], n))


def target_bytes(found: list[Image]) -> dict[str, int]:
    """Bytes each target takes in the file (entry headers and payloads)."""
    sizes: dict[str, int] = {}
    for image in found:
        sizes[image.target] = sizes.get(image.target, 0) + image.stored
    return sizes


def keep_only(src: Path, dest: Path, keep: Callable[[Image], bool]) -> list[Image]:
    """Copy ``src`` to ``dest`` with every container listing only the entries ``keep`` accepts.

    Each container stays where it is (the host code points at it); its kept entries move up
    to follow its header, its size shrinks, and the rest of its old span becomes zeros. A
    container that would be left empty is refused: its kernels would have no code at all.
    Returns the kept images at their new offsets.
    """
    found = images(src)
    by_container: dict[int, list[Image]] = {}
    for image in found:
        by_container.setdefault(image.container, []).append(image)
    shutil.copyfile(src, dest)
    kept_all: list[Image] = []
    with open(dest, "r+b") as f, mmap.mmap(f.fileno(), 0) as data:
        for start, entries in by_container.items():
            kept = [i for i in entries if keep(i)]
            if not kept:
                raise FatbinError(f"{src.name}: the container at {start:#x} would keep no image "
                                  f"(it holds {', '.join(i.target for i in entries)})")
            kept_all += _rewrite(data, start, entries, kept)
        data.flush()
    return kept_all


def _rewrite(data: mmap.mmap, start: int, entries: list[Image], kept: list[Image]) -> list[Image]:
    header = struct.unpack_from("<H", data, start + 6)[0]
    old_end = entries[-1].offset + entries[-1].stored
    blobs = [bytes(data[i.offset:i.offset + i.stored]) for i in kept]
    pos, moved = start + header, []
    for image, blob in zip(kept, blobs):
        data[pos:pos + len(blob)] = blob
        moved.append(Image(image.container, pos, image.header, image.payload, image.kind,
                           image.arch, image.isa, image.flags, image.uncompressed))
        pos += len(blob)
    data[pos:old_end] = bytes(old_end - pos)
    struct.pack_into("<Q", data, start + 8, pos - start - header)
    return moved
