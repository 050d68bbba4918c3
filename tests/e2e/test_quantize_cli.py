"""``llama-runtime quantize IN OUT TYPE`` end to end: a real process, the library through the
loader (``LLAMA_RUNTIME_LIB``), exit codes, messages, and no file left by a failure or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from ._native_fixture import REPO, NativeLibs
    from ._quant_fixture import expected_types, tensor_types
except ImportError:
    from _native_fixture import REPO, NativeLibs
    from _quant_fixture import expected_types, tensor_types

from scripts.tiny_model import write_tiny_llama

from llama_runtime.native import Native
from llama_runtime.quant import QUANT_TYPES, quantize


def _env(libs: NativeLibs) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "HF_"))}
    return {**base, "PYTHONPATH": str(REPO), "LLAMA_RUNTIME_LIB": str(libs.libraries[-1]),
            "LLAMA_RUNTIME_AUTO_DOWNLOAD": "0", "LLAMA_RUNTIME_OFFLINE": "1"}


def _cli(libs: NativeLibs, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llama_runtime", *args], env=_env(libs),
                          capture_output=True, text=True, timeout=120, check=False)


def test_quantize_writes_what_the_api_writes(source: Path, tmp_path: Path,
                                             native_libs: NativeLibs, native_lib: Native) -> None:
    out = tmp_path / "m-Q4_K_M.gguf"
    proc = _cli(native_libs, "quantize", str(source), str(out), "q4_k_m", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: Q4_K_M, 0.87 MiB from 5.60 MiB in "), proc.stdout
    assert proc.stderr == ""  # llama.cpp's chatter stays in the (quiet) log
    assert tensor_types(out) == expected_types("Q4_K_M", tensor_types(source))
    # same library, same type: the same bytes as the Python API
    api = quantize(source, tmp_path / "api.gguf", "Q4_K_M", native=native_lib)
    assert out.read_bytes() == api.path.read_bytes()


def test_help_lists_the_types(native_libs: NativeLibs) -> None:
    proc = _cli(native_libs, "quantize", "--help")
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in QUANT_TYPES)


@pytest.mark.parametrize(("args", "fragment"), [
    (["{src}", "{out}", "Q9_X"], "unknown quantization type 'Q9_X'; valid types: Q4_0, Q4_1,"),
    (["{src}", "{out}", "IQ2_XS"], "IQ2_XS needs an importance matrix"),
    (["{tmp}/missing.gguf", "{out}", "Q8_0"], "missing.gguf does not exist"),
    (["{trunc}", "{out}", "Q8_0"], "data is not within the file bounds"),
    (["{src}", "{src}", "Q8_0"], "is the input model itself"),
    (["{src}", "{tmp}", "Q8_0"], "is a folder"),
], ids=["unknown-type", "needs-imatrix", "missing", "truncated", "out-is-in", "out-is-folder"])
def test_errors_exit_2_with_one_paragraph(args: list[str], fragment: str, source: Path,
                                          tmp_path: Path, native_libs: NativeLibs) -> None:
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    before = sorted(tmp_path.iterdir())
    values = {"src": source, "out": tmp_path / "out.gguf", "tmp": tmp_path, "trunc": trunc}
    proc = _cli(native_libs, "quantize", *(a.format(**values) for a in args))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("llama-runtime: error: ") and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(tmp_path.iterdir()) == before  # nothing written, nothing half-written


def test_missing_arguments_are_a_usage_error(native_libs: NativeLibs, source: Path) -> None:
    proc = _cli(native_libs, "quantize", str(source))
    assert proc.returncode == 2 and "usage: llama-runtime quantize" in proc.stderr


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that IQ3_S (the slowest type) on one thread runs for about a second."""
    return write_tiny_llama(tmp_path_factory.mktemp("big") / "big.gguf", seed=1, n_embd=512,
                            n_ff=512)


def _start_and_interrupt(libs: NativeLibs, model: Path, out: Path) -> subprocess.Popen[str]:
    """Start quantizing ``model`` to ``out`` and send SIGINT once llama.cpp writes the partial."""
    proc = subprocess.Popen([sys.executable, "-m", "llama_runtime", "quantize", str(model),
                             str(out), "IQ3_S", "--threads", "1"], env=_env(libs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite started in the background may pass
                            # SIGINT on ignored, and Python then installs no Ctrl-C handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in out.parent.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # llama.cpp is inside llama_model_quantize now
    return proc


def test_ctrl_c_during_quantization_leaves_no_file(big: Path, tmp_path: Path,
                                                   native_libs: NativeLibs) -> None:
    # Before deferred_interrupt this wrote the whole file and exited 0: the KeyboardInterrupt
    # was raised inside llama.cpp's log callback, where ctypes drops exceptions.
    proc = _start_and_interrupt(native_libs, big, tmp_path / "out.gguf")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted: quantizing" in stderr and stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_second_ctrl_c_ends_the_process_at_once(big: Path, tmp_path: Path,
                                                  native_libs: NativeLibs) -> None:
    proc = _start_and_interrupt(native_libs, big, tmp_path / "out.gguf")
    assert proc.stderr is not None
    assert "interrupted: quantizing" in proc.stderr.readline()  # the first one was seen
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT  # killed by it: llama.cpp did not run to the end
    left = [p.name for p in tmp_path.iterdir()]
    assert "out.gguf" not in left and all(n.endswith(".partial") for n in left)
