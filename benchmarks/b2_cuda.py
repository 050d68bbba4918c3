"""B2 for CUDA machines: bytes the hub serves while `pip install` builds the wheel for a captured
NVIDIA machine (``LLAMA_RUNTIME_TARGET=<profile.json>``), against the full archive of the same
CUDA major (what a release with one archive per major would serve).

The release holds the npm CPU build, ``linux-x86_64-cuda12``, ``linux-x86_64-cuda13`` and their
one-target copies (scripts/build_variants.py --cuda-targets). The install runs with ``--no-deps``:
NVIDIA's runtime wheels come from PyPI, not from our hub, and are reported from the wheel's
metadata instead of downloaded (cuBLAS alone is ~400 MB). Heavy: packing the 15 CUDA archives
(gzip -9 of ~4 GB) takes minutes, so it runs only when asked (`--only B2C`).

    .venv/bin/python -m benchmarks.b2_cuda [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
from benchmarks.common import Row  # noqa: E402

from scripts import devrelease  # noqa: E402
from scripts.hubserver import HubServer  # noqa: E402

NPM = ("@node-llama-cpp/linux-x64@3.22.1", "@node-llama-cpp/linux-x64-cuda@3.22.1",
       "@node-llama-cpp/linux-x64-cuda-ext@3.22.1")
MACHINES = ("nvidia-550-ampere-rtx3090", "nvidia-580-blackwell-rtx5090", "nvidia-590-hopper-h100",
            "nvidia-580-hopper-h100", "nvidia-550-a100-and-rtx3090")
CAPTURES = HERE.parent / "tests" / "data"


def _profile_file(machine: str, dest: Path) -> Path:
    from llama_runtime.probe.capture import profile_from_captures

    data = json.loads((CAPTURES / "machines" / f"{machine}.json").read_text())
    if "cpuinfo_file" in data:
        data["cpuinfo"] = (CAPTURES / "cpuinfo" / data["cpuinfo_file"]).read_text()
    dest.write_text(json.dumps({"profile": profile_from_captures(data).to_dict()}))
    return dest


def _install(python: Path, sdist: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    proc = devrelease.pip_install(python, str(sdist), env, "--no-deps")
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    site = next(python.parent.parent.glob("lib/python*/site-packages"))
    selection = json.loads(next(site.glob("llama_runtime/**/selection.json")).read_text())
    meta = next(site.glob("llama_runtime-*.dist-info")) / "METADATA"
    requires = [line.split(":", 1)[1].strip() for line in meta.read_text().splitlines()
                if line.startswith("Requires-Dist:") and "nvidia" in line]
    return str(selection["selected"]), requires


def run(work: Path, machines: tuple[str, ...] = MACHINES) -> list[Row]:
    flags = [x for spec in NPM for x in ("--npm", spec)] + ["--cuda-targets", "--no-check"]
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-cuda", *flags)
    rows = []
    with HubServer(work / "hub-cuda") as hub:
        assert hub.httpd is not None
        tree = devrelease.stage_source(work / "src-cuda")
        lock = devrelease.publish_release(tree, variants, hub.url)
        sdist = devrelease.build_sdist(tree, work / "dist-cuda")
        manifest = json.loads(lock.read_text())["manifest"]["variants"]
        for machine in machines:
            python = devrelease.make_venv(work / "venv-b2c")
            env = {"LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": str(work / f"cache-{machine}"),
                   "LLAMA_RUNTIME_TARGET": str(_profile_file(machine, work / f"{machine}.profile.json"))}
            hub.httpd.reset_stats()
            selected, requires = _install(python, sdist, env)
            served = int(hub.httpd.stats()["bytes_served"])
            chosen = manifest[selected]
            full = manifest.get(chosen.get("cuda_full") or selected, chosen)
            rows.append(Row(
                "B2-CUDA", f"bytes served installing for {machine} (selected {selected})", served / 1e6,
                "MB", int(full["size"]) / 1e6, f"full archive of its CUDA major ({chosen.get('cuda_full') or selected})",
                served / int(full["size"]), "<= selected archive x1.01", served <= 1.01 * int(chosen["size"]),
                f"selected archive {int(chosen['size']) / 1e6:.1f} MB holds {', '.join(chosen.get('cuda_architectures') or [])};"
                f" the wheel requires {', '.join(requires) or 'nothing from NVIDIA'} (from PyPI, not counted)"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="llama-b2c-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for row in run(work):
        print(f"{row.what}: {row.value:.1f} {row.unit}; {row.baseline_what} {row.baseline:.1f} MB;"
              f" ratio {row.ratio:.3f}; met {row.met}; {row.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
