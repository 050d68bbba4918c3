"""Vulkan headers new enough for the pinned llama.cpp's Vulkan backend, for the Windows build.

ggml-vulkan.cpp (llama.cpp v0.5.0) uses ``VK_EXT_layer_settings`` through vulkan.hpp, which
Debian 12's ``libvulkan-dev`` (1.3.239) does not have. The system's headers are used when they
have it; otherwise Debian 13's ``libvulkan-dev`` package (pinned below) is fetched with apt's
own client, into a private apt state under the cache (the system's apt configuration is not
touched; apt checks the archive signature and the package hash), and only its headers are
unpacked. Headers are plain text and the same for every target, so the Linux package's are
the Windows build's too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import build_variants as bv

SYSTEM = Path("/usr/include")
NEEDED = "VK_EXT_layer_settings"
SUITE = "trixie"
PACKAGE = "libvulkan-dev=1.4.309.0-1"
SOURCES = (f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
           f"http://deb.debian.org/debian {SUITE} main\n")


def usable(include: Path) -> bool:
    core = include / "vulkan" / "vulkan_core.h"
    return core.is_file() and NEEDED in core.read_text() and (include / "vulkan" /
                                                              "vulkan.hpp").is_file()


def _apt(state: Path, *args: str) -> None:
    opts = [f"-o=Dir::Etc::SourceList={state / 'sources.list'}", "-o=Dir::Etc::SourceParts=-",
            f"-o=Dir::State::Lists={state / 'lists'}", f"-o=Dir::Cache={state / 'cache'}",
            "-o=APT::Sandbox::User=root", "-q"]
    bv._run([bv._tool("apt-get", "Debian's apt is needed to fetch the Vulkan headers"),
             *opts, *args], f"apt-get {args[0]}", cwd=state / "debs")


def fetch(cache: Path) -> Path:
    """``include/`` holding ``vulkan/`` and ``vk_video/`` from Debian's package, made once."""
    name, version = PACKAGE.split("=")
    final = cache / "vulkan-headers" / version
    if usable(final / "include"):
        return final / "include"
    final.parent.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(dir=final.parent, prefix=".apt-"))
    try:
        for sub in ("lists/partial", "cache/archives/partial", "debs", "root"):
            (state / sub).mkdir(parents=True)
        (state / "sources.list").write_text(SOURCES)
        _apt(state, "update")
        _apt(state, "download", PACKAGE)
        deb = next((state / "debs").glob(f"{name}_*.deb"))
        bv._run([bv._tool("dpkg-deb", "install dpkg"), "-x", str(deb), str(state / "root")],
                "dpkg-deb -x")
        staged = state / "out"
        for sub in ("vulkan", "vk_video"):
            shutil.copytree(state / "root" / "usr" / "include" / sub, staged / "include" / sub)
        if not usable(staged / "include"):
            raise bv.BuildVariantError(f"{deb.name} lacks {NEEDED}: pin a newer package")
        try:
            os.replace(staged, final)
        except OSError:
            pass  # another process made it first
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return final / "include"


def include_dir(cache: Path) -> Path:
    """The system's Vulkan headers if they suffice, else Debian 13's (fetched once)."""
    return SYSTEM if usable(SYSTEM) else fetch(cache)
