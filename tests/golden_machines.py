"""Loading a captured machine (``tests/data/machines/<name>.json``) into a profile, through the
same pure parsers the live probe uses: shared by the unit tests of the selection and the macOS
end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama_runtime.probe import MachineProfile
from llama_runtime.probe.capture import profile_from_captures

DATA = Path(__file__).parent / "data"


def load(path: Path) -> tuple[dict[str, Any], MachineProfile]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if "cpuinfo_file" in data:
        data["cpuinfo"] = (DATA / "cpuinfo" / data["cpuinfo_file"]).read_text(encoding="utf-8")
    if "sysctl_file" in data:  # the text `sysctl` printed on a real Mac (tests/data/sysctl)
        data["sysctl"] = (DATA / "sysctl" / data["sysctl_file"]).read_text(encoding="utf-8")
    return data, profile_from_captures(data)
