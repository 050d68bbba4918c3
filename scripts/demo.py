"""The whole product path on one machine, for real (run it with `scripts/dev demo`).

1. real llama.cpp variants: node-llama-cpp's prebuilt for this machine from the npm registry
   (with --source-builds also our own builds of llama-cpp-python's vendored llama.cpp: minutes
   of compiling the first time, then cached; the tests build them on their first run)
2. a Hugging Face-protocol hub on 127.0.0.1, and `llama-runtime publish` to it
3. the sdist, installed with pip into a fresh virtual environment (the hook picks one variant)
4. a tiny GGUF model, and text generated from it with the installed package
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devrelease  # noqa: E402
from hubserver import HubServer  # noqa: E402
from tiny_model import write_tiny_llama  # noqa: E402


# node-llama-cpp's Linux prebuilts (llama.cpp 0.5.0, GGML_BACKEND_DL, every CPU plugin)
NPM_PREBUILT = {"x86_64": "@node-llama-cpp/linux-x64@3.22.1", "aarch64": "@node-llama-cpp/linux-arm64@3.22.1"}
_last = [time.perf_counter()]


def step(text: str) -> None:
    now = time.perf_counter()
    print(f"    ({now - _last[0]:.1f} s)\n\n==> {text}", flush=True)
    _last[0] = now


def variant_folders(source_builds: bool) -> Path:
    """The variants to publish: the npm prebuilt, plus our source builds when asked for."""
    import platform

    if source_builds:  # the tests' set: npm + v3 + omp-lite (scripts/build_variants.py defaults)
        return devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if machine not in NPM_PREBUILT:
        raise SystemExit(f"no npm prebuilt of llama.cpp for {machine}; try --source-builds")
    return devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-demo", "--npm", NPM_PREBUILT[machine])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=devrelease.ROOT / ".demo", help="scratch folder")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--source-builds", action="store_true",
                    help="also build (cold: minutes on 2 cores) and publish our own llama.cpp builds")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _last[0] = start

    what = "npm prebuilt + our source builds" if args.source_builds else "the npm prebuilt for this machine"
    print(f"==> real llama.cpp variants ({what}, cached under {devrelease.dev_cache()})", flush=True)
    variants = variant_folders(args.source_builds)
    for vj in sorted(variants.glob("*/variant.json")):
        print(f"    {vj.parent.name}")

    with HubServer(work / "hub") as hub:
        step(f"hub on {hub.url}; publishing with `llama-runtime publish`")
        tree = devrelease.stage_source(work / "src")
        lock = devrelease.publish_release(tree, variants, hub.url)
        print(f"    lock written: {lock}")
        sdist = devrelease.build_sdist(tree, work / "dist")
        print(f"    sdist: {sdist.name}")

        step("a fresh virtual environment (python -m venv, with pip)")
        python = devrelease.make_venv(work / "venv")
        step("pip install -v --no-cache-dir of the sdist into it (the hook probes and fetches)")
        env = {"LLAMA_RUNTIME_ENDPOINT": hub.url, "LLAMA_RUNTIME_CACHE": str(work / "cache")}
        proc = devrelease.pip_install(python, str(sdist), env)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return 1
        for line in (proc.stdout + proc.stderr).splitlines():
            if "llama-runtime:" in line:
                print("    " + line.strip())
        served = hub.httpd.stats()["bytes_served"] if hub.httpd else "?"
        print(f"    bytes served by the hub during the install: {served}")

    step("a tiny GGUF model (gguf package), and generation with the installed package (hub stopped)")
    model = write_tiny_llama(work / "tiny-llama.gguf")
    bin_dir = python.parent
    run_env = {"LLAMA_RUNTIME_CACHE": str(work / "cache"), "LLAMA_RUNTIME_OFFLINE": "1", "PATH": str(bin_dir)}
    subprocess.run([str(bin_dir / "llama-runtime"), "doctor"], env=run_env, check=True)
    print()
    out = subprocess.run([str(bin_dir / "llama-runtime"), "generate", str(model), args.prompt, "-n", "24",
                          "--temp", "0"], env=run_env, check=True, capture_output=True, text=True)
    print(f"    prompt:    {args.prompt!r}\n    generated: {out.stdout.strip()!r}")
    step("done")
    print(f"demo done in {time.perf_counter() - start:.0f} s")
    if not args.source_builds:
        print("not done: our own source builds of llama.cpp (`scripts/dev demo --source-builds`"
              " publishes them too; the tests build them on their first run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
