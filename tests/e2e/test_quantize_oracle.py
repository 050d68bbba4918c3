"""Quantized models on every development variant: greedy ids equal a C program's on the same library.

For each variant this machine can run (npm's prebuilt, our v3 and our release omp build), a
fresh Python (one libllama per process) quantizes the tiny llama to each type of issue 14 with
that variant's library and generates greedily; ``tests/data/oracle/greedy.c``, linked to the
same libraries, generates from the same files. Same model, threads, context and batch sizes:
the ids must be equal token for token. The files' tensor types are checked too, so each case
is known to have run the quantized kernels it names. A variant whose CPU plugin crashes on
quantized weights (the AMX SIGILL of issue 14 on Sapphire Rapids) fails here with the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    from ._native_fixture import DEV_VARIANTS, REPO, NativeLibs, build_oracle, dev_variant, run_oracle
    from ._quant_fixture import (N_GEN, PROMPT, REQUIRED, expected_types, file_type,
                                 tensor_types, write_quantizable)
except ImportError:
    from _native_fixture import DEV_VARIANTS, REPO, NativeLibs, build_oracle, dev_variant, run_oracle
    from _quant_fixture import (N_GEN, PROMPT, REQUIRED, expected_types, file_type, tensor_types,
                                write_quantizable)

from llama_runtime.quant import QUANT_TYPES

# In the child: open the variant's libraries, quantize to every type, generate twice per file
# (the second time on the same context: the KV reuse path must not change the ids).
_CHILD = """
import json, sys
from pathlib import Path
from llama_runtime.llama import Llama
from llama_runtime.native import Native
from llama_runtime.quant import quantize
job = json.loads(sys.argv[1])
native = Native.open([Path(p) for p in job["libraries"]], backend_dir=job["backend_dir"])
out = {"system_info": native.system_info(), "runs": {}}
for quant in job["types"]:
    done = quantize(job["source"], Path(job["folder"]) / f"{quant}.gguf", quant, native=native)
    with Llama(done.path, n_ctx=256, n_threads=1, native=native) as llm:
        ids = [llm.generate_tokens(job["prompt"], job["n_gen"], temperature=0) for _ in range(2)]
    out["runs"][quant] = {"path": str(done.path), "ids": ids, "seconds": done.seconds}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class VariantRun:
    libs: NativeLibs
    oracle: Path
    system_info: str
    runs: dict[str, Any]  # type -> {"path", "ids": [first, again], "seconds"}


_RUNS: dict[str, VariantRun] = {}


def _signal_name(returncode: int) -> str:
    return signal.Signals(-returncode).name if returncode < 0 else f"exit status {returncode}"


def _run_variant(name: str, folder: Path) -> VariantRun:
    libs = dev_variant(name)
    try:
        oracle = build_oracle(libs, folder)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    job = {"libraries": [str(p) for p in libs.libraries], "source": str(write_quantizable(folder)),
           "backend_dir": str(libs.folder) if libs.backend_dl else None, "folder": str(folder),
           "types": list(REQUIRED), "prompt": PROMPT, "n_gen": N_GEN}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (f"{name}: quantize + generate died ({_signal_name(proc.returncode)})"
                                  f":\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.splitlines()[-1])
    return VariantRun(libs, oracle, report["system_info"], report["runs"])


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], VariantRun]:
    def get(name: str) -> VariantRun:
        if name not in _RUNS:
            _RUNS[name] = _run_variant(name, tmp_path_factory.mktemp(f"quant-{name}"))
        return _RUNS[name]

    return get


@pytest.mark.parametrize("quant", REQUIRED)
@pytest.mark.parametrize("variant", DEV_VARIANTS)
def test_quantized_greedy_ids_equal_the_c_program(variant: str, quant: str,
                                                  variant_run: Callable[[str], VariantRun]) -> None:
    run = variant_run(variant)
    model = Path(run.runs[quant]["path"])
    # what ran: the types llama.cpp's rules give, written by this variant's own library
    source_names = tensor_types(model.parent / "tiny-q.gguf")
    assert tensor_types(model) == expected_types(quant, source_names)
    assert file_type(model) == QUANT_TYPES[quant].ftype
    try:
        (expected,), _ = run_oracle(run.oracle, run.libs, model, PROMPT, N_GEN)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{variant}: the C program died on {quant} ({_signal_name(exc.returncode)}):"
                    f"\n{exc.stderr[-2000:]}")
    assert len(expected) > 8 and len(set(expected)) > 4  # a real comparison, not a degenerate one
    first, again = run.runs[quant]["ids"]
    assert first == expected, f"{variant} {quant}: Python and C disagree ({run.system_info})"
    assert again == expected
