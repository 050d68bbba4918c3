"""The persistent ggml thread pool a context gets when its llama.cpp runs without OpenMP."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

try:
    from ._native_fixture import REPO, NativeLibs
except ImportError:
    from _native_fixture import REPO, NativeLibs

import llama_runtime.llama as llama_module
from llama_runtime.llama import Llama
from llama_runtime.native import Native, binding
from llama_runtime.native.context import Context, needs_threadpool
from llama_runtime.native.functions import FUNCTIONS, Fn

# What the CPU backends of our variant folders report (captured with Native.cpu_features()).
NPM_FEATURES = {"SSE3": "1", "SSSE3": "1", "AVX": "1", "AVX2": "1", "F16C": "1", "FMA": "1",
                "BMI2": "1", "AVX512": "1", "AVX512_VBMI": "1", "AVX512_VNNI": "1",
                "AVX512_BF16": "1", "AMX_INT8": "1", "LLAMAFILE": "1", "REPACK": "1"}
OMP_FEATURES = {**NPM_FEATURES, "OPENMP": "1"}
V3_FEATURES = {"SSE3": "1", "SSSE3": "1", "AVX": "1", "AVX2": "1", "F16C": "1", "FMA": "1",
               "BMI2": "1", "LLAMAFILE": "1", "OPENMP": "1", "REPACK": "1"}


@pytest.mark.parametrize(("features", "expected"), [
    (NPM_FEATURES, True),
    (OMP_FEATURES, False),
    (V3_FEATURES, False),
    ({**NPM_FEATURES, "OPENMP": "0"}, True),
    (None, False),  # the library cannot say: keep ggml's default
], ids=["npm-no-openmp", "omp-lite", "source-v3", "openmp-0", "unknown"])
def test_needs_threadpool(features: dict[str, str] | None, expected: bool) -> None:
    assert needs_threadpool(features) is expected


def test_cpu_features_agree_with_system_info(native_lib: Native) -> None:
    features = native_lib.cpu_features()
    assert features is not None
    cpu_line = native_lib.system_info().split("CPU :", 1)[1]
    for name, value in features.items():
        assert f"{name} = {value}" in cpu_line
    assert ("OPENMP" in features) == ("OPENMP = 1" in cpu_line)


def _greedy(native: Native, model: Path, threadpool: bool = True,
            n: int = 48) -> tuple[int, list[int]]:
    """The attached pool and ``n`` greedy ids of a Llama whose Context gets ``threadpool``."""
    with mock.patch.object(llama_module, "Context", functools.partial(Context, threadpool=threadpool)), \
            Llama(model, n_ctx=256, n_threads=2, native=native) as llm:
        prompt = "hello world the llama runtime " * 4
        return llm._live_context().threadpool, llm.generate_tokens(prompt, n, temperature=0)


# SmolLM2 Q4_1 too: its quantized kernels split rows across the pool's workers their own way.
# Fewer tokens: two threads that spin for each other are what this test is about, and on a busy
# 2-CPU box (load 15) they ran SmolLM2 at ~1 token/s. The pool and fork lifecycle per variant
# (below) stays on the toy model: it is about threads, and its 30 s fork alarm would trip there.
@pytest.mark.parametrize(("model", "n"), [("tiny_gguf", 48), ("smollm2_gguf", 16)],
                         ids=["tiny-f32", "smollm2-q4_1"])
def test_pool_only_without_openmp_and_same_ids(native_lib: Native, model: str, n: int,
                                               request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    pool, ids = _greedy(native_lib, path, n=n)
    assert bool(pool) == needs_threadpool(native_lib.cpu_features())
    no_pool, default_ids = _greedy(native_lib, path, threadpool=False, n=n)
    assert no_pool == 0
    assert ids == default_ids and len(ids) > 10


def test_missing_pool_functions_leave_the_default(native_lib: Native, tiny_gguf: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    if not needs_threadpool(native_lib.cpu_features()):
        pytest.skip(f"{native_lib} runs OpenMP: it gets no pool anyway")
    caplog.set_level(logging.DEBUG, logger="llama_runtime.native")
    monkeypatch.setitem(native_lib._cpu_procs, "ggml_threadpool_new", None)  # as if not exported
    pool, ids = _greedy(native_lib, tiny_gguf)
    assert pool == 0 and ids
    assert any("no persistent thread pool" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(native_lib, "threadpool_new", lambda n_threads: 0)  # NULL from ggml
    assert _greedy(native_lib, tiny_gguf)[0] == 0


def test_missing_optional_symbol_does_not_refuse_the_library(native_libs: NativeLibs,
                                                             native_lib: Native,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = Fn("llama_no_such_function", [], None, "void llama_no_such_function(void);",
               optional=True)
    monkeypatch.setattr(binding, "FUNCTIONS", [*FUNCTIONS, ghost])
    # no backend_dir: the process already holds this library and its backends
    native = Native._open_new(list(native_libs.libraries), None)
    assert native.llama_no_such_function is None
    assert native.llama_decode is not None


# Run in a fresh process per library: one process holds one llama.cpp (one ggml registry).
_CYCLES = r"""
import functools, json, os, signal, sys
from pathlib import Path
from _native_fixture import find_native_libs
import llama_runtime.llama as llama_module
from llama_runtime.llama import Llama
from llama_runtime.native.context import Context

native = find_native_libs().open()  # LLAMA_RUNTIME_TEST_LIBDIR
model, cycles = Path(sys.argv[1]), int(sys.argv[2])
prompt = "hello world the llama runtime " * 4

def run(**kw):
    llama_module.Context = functools.partial(Context, **kw)
    with Llama(model, n_ctx=256, n_threads=2, native=native) as llm:
        return llm._context.threadpool, llm.generate_tokens(prompt, 32, temperature=0)

pool, ids = run()
default_pool, default_ids = run(threadpool=False)
threads_before = len(os.listdir("/proc/self/task"))
pools = [bool(run()[0]) for _ in range(cycles)]
threads_after = len(os.listdir("/proc/self/task"))

# A forked child has none of the parent's threads: neither a pool's workers nor libgomp's
# (which hang any parallel region in the child once one ran in the parent). The child must
# still decode, in the inherited context and in a new one, with the same greedy ids.
llama_module.Context = Context
with Llama(model, n_ctx=256, n_threads=2, native=native) as llm:
    llm.generate_tokens(prompt, 4, temperature=0)  # the pool's / libgomp's workers exist now
    child = os.fork()
    if child == 0:
        signal.alarm(30)
        ok = llm.generate_tokens(prompt, 32, temperature=0) == ids
        with Llama(model, n_ctx=256, n_threads=2, native=native) as fresh:
            ok = ok and fresh.generate_tokens(prompt, 32, temperature=0) == ids
            threads = (llm._live_context().n_threads, fresh._live_context().n_threads)
        os._exit(0 if ok and threads == ((1, 1) if native.has_openmp() else (2, 2)) else 3)
    fork_status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    after_fork = llm.generate_tokens(prompt, 32, temperature=0)
    parent_threads = llm._live_context().n_threads
print(json.dumps({"features": native.cpu_features(), "pool": bool(pool), "ids": ids,
                  "default_pool": bool(default_pool), "default_ids": default_ids, "pools": pools,
                  "threads_before": threads_before, "threads_after": threads_after,
                  "fork_status": fork_status, "parent_after_fork_ok": after_fork == ids,
                  "parent_threads": parent_threads}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize(("variant", "openmp"), [
    ("linux-x86_64-cpu", False),  # npm build (node-llama-cpp): no OpenMP
    ("linux-x86_64-cpu-omp", True),
    ("linux-x86_64-cpu-v3", True),
])
def test_variant_pool_lifecycle(variant: str, openmp: bool, tiny_gguf: Path, variants_dir: Path) -> None:
    folder = variants_dir / variant
    env = {**os.environ, "LLAMA_RUNTIME_TEST_LIBDIR": str(folder),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    out = subprocess.run([sys.executable, "-c", _CYCLES, str(tiny_gguf), "30"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert ("OPENMP" in report["features"]) is openmp
    assert report["pool"] is (not openmp) and report["pools"] == [not openmp] * 30
    assert report["default_pool"] is False
    assert report["ids"] == report["default_ids"] and len(report["ids"]) > 10
    # every pool's workers were joined when its context closed: no thread left behind
    assert report["threads_after"] <= report["threads_before"]
    # the child decoded (1 thread with OpenMP, with a warning; 2 without), the parent keeps 2
    assert report["fork_status"] == 0, "a forked child could not decode (-14: hung, SIGALRM; 3: wrong)"
    assert report["parent_after_fork_ok"] and report["parent_threads"] == 2
    assert ("uses 1 thread here" in out.stderr) is openmp
