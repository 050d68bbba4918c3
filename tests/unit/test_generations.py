"""The llama.cpp generations the binding accepts, each checked against its real header and run.

``tests/data/llama.cpp-v0.4.0/include`` holds the headers of llama.cpp v0.4.0, taken from the
git bundle inside the ``node-llama-cpp@3.21.1`` npm package (the release its macOS, Windows and
Linux 3.21.1 prebuilts were built from; see the README there). Every struct the binding declares
is compiled against each generation's header (gcc ``sizeof``/``offsetof``), every prototype is
found in its text, and a real v0.4.0 libllama (``@node-llama-cpp/linux-x64@3.21.1``: the same
llama.cpp as the macOS prebuilts, and one this machine can run) generates, token for token, what
a C program built on the v0.4.0 header generates on the same library: an f32 and an f16 tiny
model and the real quantized SmolLM2 (Q4_1).
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from ._native_fixture import REPO, NativeLibs, build_oracle, run_oracle
except ImportError:
    from _native_fixture import REPO, NativeLibs, build_oracle, run_oracle

from scripts.tiny_model import write_tiny_llama

from llama_runtime.config import Settings
from llama_runtime.errors import LibraryLoadError
from llama_runtime.runtime.loader import check_generation
from llama_runtime.native import generations, structs
from llama_runtime.native.functions import CPU_PROCS, FUNCTIONS

HEADERS = {
    "0.5.0": REPO / "llama_runtime" / "native" / "include",
    "0.4.0": REPO / "tests" / "data" / "llama.cpp-v0.4.0" / "include",
}
V040_NPM = "@node-llama-cpp/linux-x64@3.21.1"
N_GEN = 32


def _layout_program() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', "int main(void) {"]
    for struct, c_name in structs.C_NAMES.items():
        lines.append(f'  printf("{struct.__name__} sizeof %zu\\n", sizeof({c_name}));')
        for field in structs.field_names(struct):
            lines.append(f'  printf("{struct.__name__} {field} %zu\\n", '
                         f'offsetof({c_name}, {field}));')
    return "\n".join([*lines, "  return 0;", "}"])


def c_layout(include: Path, work: Path) -> dict[tuple[str, str], int]:
    """sizeof and offsetof of every declared struct and field, as gcc sees ``include``."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc/cc) to check struct layouts")
    (work / "layout.c").write_text(_layout_program())
    build = subprocess.run([gcc, "-std=c11", "-I", str(include), str(work / "layout.c"),
                            "-o", str(work / "layout")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True)
    return {(s, f): int(v) for s, f, v in (line.split() for line in out.stdout.splitlines())}


def layout_mismatches(layout: dict[tuple[str, str], int]) -> list[str]:
    bad = []
    for struct in structs.C_NAMES:
        name = struct.__name__
        if ctypes.sizeof(struct) != layout[(name, "sizeof")]:
            bad.append(f"sizeof({name})")
        bad += [f"{name}.{f}" for f in structs.field_names(struct)
                if getattr(struct, f).offset != layout[(name, f)]]
    return bad


def _squeeze(c_text: str) -> str:
    for noise in ("LLAMA_API", "GGML_API"):
        c_text = c_text.replace(noise, "")
    return re.sub(r"\s+", "", re.sub(r"//[^\n]*", "", c_text))


def test_every_compatible_generation_has_a_header_here() -> None:
    assert set(HEADERS) == set(generations.COMPATIBLE)
    assert generations.BINDING_GENERATION in generations.COMPATIBLE
    for generation, include in HEADERS.items():
        cmake_version = re.search(r"LLAMA_VERSION_(MAJOR|MINOR)", (include / "llama.h").read_text())
        assert cmake_version is None  # the version lives in CMakeLists.txt: see the README
        assert (include / "llama.h").is_file() and (include / "ggml.h").is_file(), generation


@pytest.mark.parametrize("generation", sorted(HEADERS))
def test_struct_layouts_match_the_generations_header(generation: str, tmp_path: Path) -> None:
    assert layout_mismatches(c_layout(HEADERS[generation], tmp_path)) == []


def test_the_layout_check_catches_a_changed_struct(tmp_path: Path) -> None:
    # A header whose llama_model_params grew a field, as it did between v0.1.0 and v0.4.0
    # (load_mode, lazy_mode): the comparison must see it.
    include = tmp_path / "include"
    shutil.copytree(HEADERS["0.4.0"], include)
    header = (include / "llama.h").read_text()
    field = "        int32_t main_gpu;\n"
    assert header.count(field) == 1
    (include / "llama.h").write_text(header.replace(field, "        int32_t added;\n" + field))
    bad = layout_mismatches(c_layout(include, tmp_path))
    assert bad == ["llama_model_params.main_gpu"]  # the next pointer's padding hides the rest


@pytest.mark.parametrize("generation", sorted(HEADERS))
def test_every_prototype_is_in_the_generations_header(generation: str) -> None:
    text = _squeeze("".join(p.read_text() for p in HEADERS[generation].glob("*.h")))
    missing = [fn.prototype for fn in [*FUNCTIONS, *CPU_PROCS.values()]
               if _squeeze(fn.prototype) not in text]
    assert missing == []


@pytest.mark.parametrize(("name", "found"), [
    ("libllama.v0.5.0.so", "0.5.0"), ("libllama.metal.v0.4.0.dylib", "0.4.0"),
    ("llama.v0.4.0.dll", "0.4.0"), ("libllama.so", None), ("libllama.v0.4.0.so.bak", None),
])
def test_generation_from_a_library_name(name: str, found: str | None) -> None:
    assert generations.from_filename(name) == found


@pytest.mark.parametrize("found", ["0.4.0", "v0.4.0", "0.5.0", None])
def test_checked_generations_pass_the_abi_guard(found: str | None) -> None:
    check_generation(found, "variant x", Settings())


@pytest.mark.parametrize("found", ["0.1.0", "v0.6.0", "b6000"])
def test_an_unknown_generation_is_refused_clearly(found: str) -> None:
    with pytest.raises(LibraryLoadError) as info:
        check_generation(found, "variant macos-arm64-metal", Settings())
    message = str(info.value)
    assert f"variant macos-arm64-metal is llama.cpp {found.lstrip('v')}" in message
    assert "0.4.0, 0.5.0" in message and "LLAMA_RUNTIME_ABI_CHECK=0" in message
    check_generation(found, "variant x", Settings(abi_check=False))  # the escape hatch


# --------------------------------------------------------------------------- a real v0.4.0 run
@pytest.fixture(scope="module")
def v040(tmp_path_factory: pytest.TempPathFactory) -> NativeLibs:
    from scripts import build_variants as bv

    try:
        folder = bv.npm_variant(V040_NPM, tmp_path_factory.mktemp("v040"))
    except bv.BuildVariantError as exc:  # not cached and no registry
        pytest.skip(f"cannot pack {V040_NPM}: {exc}")
    meta = json.loads((folder / "variant.json").read_text())
    assert meta["llama_cpp"] == "0.4.0" and meta["libraries"][-1] == "libllama.v0.4.0.so"
    return NativeLibs(folder, tuple(folder / n for n in meta["libraries"]), meta["backend_dl"])


GENERATE = """
import json, sys
import llama_runtime
from llama_runtime.llama import Llama
model, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Llama(model, n_ctx=256, n_threads=1) as llm:  # through the chain: LLAMA_RUNTIME_LIB
    ids = llm.generate_tokens(prompt, n, temperature=0)
lib = llama_runtime.load()
print(json.dumps({"ids": ids, "path": str(lib.path), "source": lib.source}))
"""


def _generate_in_a_fresh_process(libs: NativeLibs, model: Path, prompt: str) -> dict[str, object]:
    # A fresh process: a second libggml-base.so (another generation's) in a process that has one
    # would be bound to the first by its soname.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "LLAMA_RUNTIME_LIB": str(libs.libraries[-1]), "LLAMA_RUNTIME_AUTO_DOWNLOAD": "0"}
    proc = subprocess.run([sys.executable, "-c", GENERATE, str(model), prompt, str(N_GEN)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return out


@pytest.mark.parametrize("model", ["tiny-f32", "tiny-f16", "smollm2-q4_1"])
def test_a_real_v040_library_generates_what_c_generates(v040: NativeLibs, model: str,
                                                        tmp_path: Path) -> None:
    from scripts.devrelease import smollm2

    path = smollm2() if model.startswith("smollm2") else write_tiny_llama(
        tmp_path / "m.gguf", seed=3, f16=model.endswith("f16"))
    prompt = "The capital of France is" if model.startswith("smollm2") else "hello"
    oracle = build_oracle(v040, tmp_path, include=HEADERS["0.4.0"])
    (expected,), _ = run_oracle(oracle, v040, path, prompt, N_GEN)
    assert len(expected) > 8
    got = _generate_in_a_fresh_process(v040, path, prompt)
    assert got["source"] == "explicit" and str(got["path"]).endswith("libllama.v0.4.0.so")
    assert got["ids"] == expected
