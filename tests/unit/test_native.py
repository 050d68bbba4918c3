"""The ctypes binding against the pinned llama.h and a real libllama."""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from ._native_fixture import REPO, NativeLibs
except ImportError:
    from _native_fixture import REPO, NativeLibs

from llama_runtime.errors import LibraryLoadError
from llama_runtime.native import LLAMA_CPP_GENERATION, Native, structs
from llama_runtime.native.functions import CPU_PROCS, FUNCTIONS

INCLUDE = REPO / "llama_runtime" / "native" / "include"


def _layout_program() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"', "int main(void) {"]
    for struct, c_name in structs.C_NAMES.items():
        lines.append(f'  printf("{struct.__name__} sizeof %zu\\n", sizeof({c_name}));')
        for field in structs.field_names(struct):
            lines.append(
                f'  printf("{struct.__name__} {field} %zu\\n", offsetof({c_name}, {field}));'
            )
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], int]:
    """sizeof and offsetof of every declared struct and field, as gcc sees the pinned header."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc/cc) to check struct layouts against llama.h")
    folder = tmp_path_factory.mktemp("layout")
    (folder / "layout.c").write_text(_layout_program())
    exe = folder / "layout"
    subprocess.run([gcc, "-std=c11", "-I", str(INCLUDE), str(folder / "layout.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout = {}
    for line in out.splitlines():
        struct_name, field, value = line.split()
        layout[(struct_name, field)] = int(value)
    return layout


@pytest.mark.parametrize("struct", list(structs.C_NAMES), ids=lambda s: s.__name__)
def test_struct_layout_matches_pinned_header(struct: type[ctypes.Structure],
                                             c_layout: dict[tuple[str, str], int]) -> None:
    name = struct.__name__
    assert ctypes.sizeof(struct) == c_layout[(name, "sizeof")], f"sizeof({name})"
    for field in structs.field_names(struct):
        assert getattr(struct, field).offset == c_layout[(name, field)], f"{name}.{field}"


def test_pinned_header_is_the_declared_generation() -> None:
    header = (INCLUDE / "llama.h").read_text()
    # Fields that only this generation has: a header of another generation fails here first.
    assert "enum llama_lazy_mode lazy_mode;" in header
    assert "uint32_t n_outputs_max_per_seq;" in header
    assert LLAMA_CPP_GENERATION == "0.5.0"


def _squeeze(c_text: str) -> str:
    for noise in ("LLAMA_API", "GGML_API"):
        c_text = c_text.replace(noise, "")
    c_text = re.sub(r"//[^\n]*", "", c_text)  # comments between parameters (penalties)
    return re.sub(r"\s+", "", c_text)


def test_every_table_entry_is_copied_from_the_pinned_headers() -> None:
    # the prototype beside each entry is the header's text, up to whitespace
    headers = _squeeze("".join(p.read_text() for p in INCLUDE.glob("*.h")))
    for fn in FUNCTIONS:
        assert fn.name in fn.prototype
        assert _squeeze(fn.prototype) in headers, fn.prototype


def test_every_cpu_proc_is_copied_from_the_pinned_headers() -> None:
    # functions of the CPU backend reached through ggml_backend_reg_get_proc_address
    headers = _squeeze("".join(p.read_text() for p in INCLUDE.glob("*.h")))
    for name, fn in CPU_PROCS.items():
        assert name == fn.name and fn.name in fn.prototype
        assert _squeeze(fn.prototype) in headers, fn.prototype


def test_cpu_procs_resolve_in_the_real_library(native_lib: Native) -> None:
    for name in CPU_PROCS:
        assert callable(native_lib.cpu_proc(name)), name


def test_open_binds_every_function(native_lib: Native) -> None:
    for fn in FUNCTIONS:
        assert callable(getattr(native_lib, fn.name))
    with pytest.raises(AttributeError, match="no attribute or bound function"):
        native_lib.llama_not_a_function  # noqa: B018


def test_open_twice_gives_the_same_native(native_libs: NativeLibs, native_lib: Native) -> None:
    # ggml's backend registry is process-wide: loading the backends twice would register twice
    assert native_libs.open() is native_lib


def test_system_info_names_the_cpu(native_lib: Native) -> None:
    info = native_lib.system_info()
    assert "CPU" in info
    assert native_lib.ggml_backend_dev_count() >= 1


def test_default_params_come_back_by_value_intact(native_lib: Native) -> None:
    # Structs returned by value land in our layout: wrong offsets show as absurd defaults.
    cparams = native_lib.llama_context_default_params()
    assert 0 < cparams.n_ubatch <= cparams.n_batch
    assert cparams.n_seq_max == 1
    assert cparams.type_k == cparams.type_v == 1  # GGML_TYPE_F16
    assert cparams.flash_attn_type == -1  # LLAMA_FLASH_ATTN_TYPE_AUTO
    assert cparams.n_samplers == 0 and not cparams.ctx_other
    mparams = native_lib.llama_model_default_params()
    assert mparams.load_mode == -1  # LLAMA_LOAD_MODE_AUTO
    assert not mparams.vocab_only and not mparams.no_alloc
    assert native_lib.llama_sampler_chain_default_params().no_perf is True
    qparams = native_lib.llama_model_quantize_default_params()
    assert qparams.ftype == 7 and qparams.nthread == 0  # LLAMA_FTYPE_MOSTLY_Q8_0, all cores
    assert qparams.output_tensor_type == qparams.token_embedding_type == 43  # GGML_TYPE_COUNT: unset
    assert qparams.quantize_output_tensor and not qparams.allow_requantize and not qparams.dry_run
    assert not qparams.imatrix and not qparams.kv_overrides and not qparams.prune_layers
    assert qparams.max_buf_size == 8 << 30  # the last field: llama.h says "0 = default (8 GiB)"


def test_llama_log_goes_to_python_logging(native_lib: Native, tiny_gguf: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llama_runtime.native")
    params = native_lib.llama_model_default_params()
    params.n_gpu_layers = 0
    model = native_lib.llama_model_load_from_file(str(tiny_gguf).encode(), params)
    assert model
    native_lib.llama_model_free(model)
    messages = [r.getMessage() for r in caplog.records if r.name == "llama_runtime.native"]
    assert any("llama" in m for m in messages)
    # chatty INFO lines are DEBUG records, never above
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "print_info" in r.getMessage())


def test_missing_library_raises_library_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "libllama.so"
    with pytest.raises(LibraryLoadError) as info:
        Native.open([missing], backend_dir=None)
    assert str(missing) in str(info.value)
    assert "No such file" in str(info.value) or "cannot open" in str(info.value)
    assert isinstance(info.value, OSError)


def test_not_a_library_raises_library_load_error(tmp_path: Path) -> None:
    fake = tmp_path / "libllama.so"
    fake.write_bytes(b"not an ELF file")
    with pytest.raises(LibraryLoadError, match="libllama.so"):
        Native.open([fake], backend_dir=None)


def test_library_without_the_symbols_is_refused(native_libs: NativeLibs) -> None:
    # libggml-base is a real shared library, but no libllama: every llama_* symbol is missing
    with pytest.raises(LibraryLoadError) as info:
        Native.open([native_libs.libraries[0]], backend_dir=None)
    message = str(info.value)
    assert "llama_model_load_from_file" in message and LLAMA_CPP_GENERATION in message


def test_import_loads_no_library() -> None:
    code = (
        "import llama_runtime.native, llama_runtime.llama\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'libllama' not in maps and 'libggml' not in maps, 'loaded at import'\n"
        "print('ok')\n"
    )
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
