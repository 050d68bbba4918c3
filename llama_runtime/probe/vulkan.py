"""Vulkan: every device and its type, from ``vulkaninfo --summary``.

The type matters: a software rasterizer (llvmpipe, lavapipe, SwiftShader: type CPU) is slower
than the CPU build and must never be picked automatically, and an integrated GPU ranks below a
discrete one.
"""

from __future__ import annotations

import re
from typing import Any

from ._run import run_tool

_TYPES = {"PHYSICAL_DEVICE_TYPE_DISCRETE_GPU": "discrete", "PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU": "integrated",
          "PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU": "virtual", "PHYSICAL_DEVICE_TYPE_CPU": "cpu",
          "PHYSICAL_DEVICE_TYPE_OTHER": "other"}


def parse_vulkaninfo_summary(text: str) -> list[dict[str, Any]]:
    """``vulkaninfo --summary`` -> ``[{"name", "type", "api_version"}]``, one per ``GPUn:`` block."""
    devices: list[dict[str, Any]] = []
    for block in re.split(r"^GPU\d+:\s*$", text, flags=re.M)[1:]:
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(.+?)\s*$", block, re.M))
        if "deviceName" not in fields:
            continue
        devices.append({"name": fields["deviceName"],
                        "type": _TYPES.get(fields.get("deviceType", ""), "other"),
                        "api_version": fields.get("apiVersion")})
    return devices


def read_vulkan() -> dict[str, Any]:
    """Vulkan devices. Never raises: a failure is recorded in ``error``."""
    text, why = run_tool(["vulkaninfo", "--summary"])
    if text is None:
        return {"devices": [], "error": f"unknown, because {why}"}
    devices = parse_vulkaninfo_summary(text)
    return {"devices": devices, "error": None if devices else "vulkaninfo lists no device"}
