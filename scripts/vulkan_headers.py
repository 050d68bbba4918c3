"""Vulkan and SPIR-V headers new enough for the pinned llama.cpp's Vulkan backend (Windows build).

ggml-vulkan.cpp (llama.cpp v0.5.0) uses ``VK_EXT_layer_settings`` through vulkan.hpp, which
Debian 12's ``libvulkan-dev`` (1.3.239) does not have, and ``spirv/unified1/spirv.hpp`` (found
in the Vulkan include folder, as the LunarG SDK has it). The system's headers are used when
they suffice; otherwise Debian 13's ``libvulkan-dev`` and ``spirv-headers`` (pinned below) are
fetched with apt's own client into a private apt state under the cache (the system's apt
configuration is not touched; apt checks the archive signature and each package's hash), and
only their headers and SPIRV-Headers' CMake config are unpacked. Headers are plain text, the
same for every target, so the Linux packages' are the Windows build's too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scripts import tools

SYSTEM = Path("/usr")
NEEDED = "VK_EXT_layer_settings"
SUITE = "trixie"
PACKAGES = ("libvulkan-dev=1.4.309.0-1", "spirv-headers=1.6.1+1.4.309.0-1")
# what a prefix must hold, relative to it
PARTS = ("include/vulkan", "include/vk_video", "include/spirv", "share/cmake/SPIRV-Headers")
SOURCES = (f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
           f"http://deb.debian.org/debian {SUITE} main\n")


def usable(prefix: Path) -> bool:
    core = prefix / "include" / "vulkan" / "vulkan_core.h"
    return (core.is_file() and NEEDED in core.read_text()
            and (prefix / "include" / "vulkan" / "vulkan.hpp").is_file()
            and (prefix / "include" / "spirv" / "unified1" / "spirv.hpp").is_file()
            and (prefix / "share" / "cmake" / "SPIRV-Headers").is_dir())


def _apt(state: Path, *args: str) -> None:
    opts = [f"-o=Dir::Etc::SourceList={state / 'sources.list'}", "-o=Dir::Etc::SourceParts=-",
            f"-o=Dir::State::Lists={state / 'lists'}", f"-o=Dir::Cache={state / 'cache'}",
            "-o=APT::Sandbox::User=root", "-q"]
    tools.run([tools.tool("apt-get", "Debian's apt is needed to fetch the Vulkan headers"),
             *opts, *args], f"apt-get {args[0]}", cwd=state / "debs")


def fetch(cache: Path) -> Path:
    """A prefix holding :data:`PARTS` from Debian's packages, made once."""
    final = cache / "vulkan-headers" / PACKAGES[0].split("=")[1]
    if usable(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(dir=final.parent, prefix=".apt-"))
    try:
        for sub in ("lists/partial", "cache/archives/partial", "debs", "root"):
            (state / sub).mkdir(parents=True)
        (state / "sources.list").write_text(SOURCES)
        _apt(state, "update")
        _apt(state, "download", *PACKAGES)
        for deb in sorted((state / "debs").glob("*.deb")):
            tools.run([tools.tool("dpkg-deb", "install dpkg"), "-x", str(deb), str(state / "root")],
                    "dpkg-deb -x")
        for part in PARTS:
            shutil.copytree(state / "root" / "usr" / part, state / "out" / part)
        if not usable(state / "out"):
            raise tools.BuildVariantError(f"{PACKAGES} lack {NEEDED} or spirv.hpp: pin newer ones")
        try:
            os.replace(state / "out", final)
        except OSError:
            pass  # another process made it first
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return final


def prefix(cache: Path) -> Path:
    """``/usr`` if the system's Vulkan and SPIR-V headers suffice, else Debian 13's (fetched
    once into the cache)."""
    return SYSTEM if usable(SYSTEM) else fetch(cache)
