"""The release matrix as data: every cell (OS x arch x backend), where its variant comes from.

``build_variants.py OUT --all-default`` produces every row; ``--full`` takes each row's release
build instead of its development stand-in (the ``-lite`` source builds hold only the CPU plugins
that matter on x86-64-v3 machines: same variant name and flags, about 40 % of the cold build).
The README's matrix table lists these variant names and how each one is verified here; a test
(tests/unit/test_build_variants.py) keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

LINUX_NPM = "3.22.1"  # llama.cpp 0.5.0, the version the source builds pin
APPLE_NPM = "3.21.1"  # the only version served for macOS/Windows (llama.cpp 0.4.0)


@dataclass(frozen=True)
class Cell:
    """One variant of the matrix.

    ``kind``: ``npm`` (a node-llama-cpp prebuilt), ``source`` (build_variants/cross_builds
    flavor) or ``windows`` (windows_build flavor). ``dev``/``full``: what to produce (the same
    for npm rows). ``cuda_targets``: also cut the one-target copies (how the release is made).
    """

    os: str
    arch: str
    backend: str
    variant: str
    kind: str
    dev: str
    full: str
    cuda_targets: bool = False

    def what(self, full: bool) -> str:
        return self.full if full else self.dev


def _npm(os: str, arch: str, backend: str, variant: str, package: str, version: str,
         cuda_targets: bool = False) -> Cell:
    spec = f"@node-llama-cpp/{package}@{version}"
    return Cell(os, arch, backend, variant, "npm", spec, spec, cuda_targets)


MATRIX: tuple[Cell, ...] = (
    _npm("linux", "x86_64", "cpu", "linux-x86_64-cpu", "linux-x64", LINUX_NPM),
    Cell("linux", "x86_64", "cpu", "linux-x86_64-cpu-v3", "source", "v3", "v3"),
    Cell("linux", "x86_64", "cpu", "linux-x86_64-cpu-omp", "source", "omp-lite", "omp"),
    Cell("linux", "x86_64", "cpu", "linux-x86_64-cpu-glibc228", "source", "glibc228-lite",
         "glibc228"),
    _npm("linux", "x86_64", "vulkan", "linux-x86_64-vulkan", "linux-x64-vulkan", LINUX_NPM),
    _npm("linux", "x86_64", "cuda13", "linux-x86_64-cuda13", "linux-x64-cuda", LINUX_NPM,
         cuda_targets=True),
    _npm("linux", "x86_64", "cuda12", "linux-x86_64-cuda12", "linux-x64-cuda-ext", LINUX_NPM,
         cuda_targets=True),
    _npm("linux", "aarch64", "cpu", "linux-aarch64-cpu", "linux-arm64", LINUX_NPM),
    Cell("linux", "aarch64", "cpu", "linux-aarch64-cpu-omp", "source", "aarch64-omp",
         "aarch64-omp"),
    Cell("linux", "aarch64", "cpu", "linux-aarch64-cpu-glibc228", "source", "aarch64-glibc228",
         "aarch64-glibc228"),
    Cell("windows", "x86_64", "cpu", "windows-x86_64-cpu", "windows", "windows-cpu-lite",
         "windows-cpu"),
    Cell("windows", "x86_64", "vulkan", "windows-x86_64-vulkan", "windows", "windows-vulkan-lite",
         "windows-vulkan"),
    _npm("macos", "arm64", "metal", "macos-arm64-metal", "mac-arm64-metal", APPLE_NPM),
    _npm("macos", "x86_64", "cpu", "macos-x86_64-cpu", "mac-x64", APPLE_NPM),
)


def jobs(full: bool = False) -> list[tuple[str, str]]:
    """``(kind, what)`` for every cell, in matrix order."""
    return [(cell.kind, cell.what(full)) for cell in MATRIX]


def cuda_target_variants() -> frozenset[str]:
    """The variants whose one-target copies the release holds."""
    return frozenset(cell.variant for cell in MATRIX if cell.cuda_targets)
