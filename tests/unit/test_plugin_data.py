"""The hardware knowledge behind the plugin ranking, as data: its schema, its agreement with the pinned
llama.cpp source it was copied from, and with the real plugins' own ggml_backend_score() here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import devrelease
from _ggml_source import pinned_ggml
from llama_runtime.plugins.rank import cpu_plugins, ggml_cpu, plugin_variant, predicted_score, rank
from llama_runtime.probe.xsave import read_x86, x86_data

REGS = ("eax", "ebx", "ecx", "edx")
# ggml's cpuid_x86 accessor -> the flag name the probe uses for the same bit
GGML_ACCESSORS = {"SSE42": "sse4_2", "FMA": "fma", "F16C": "f16c", "AVX": "avx", "AVX2": "avx2", "BMI2": "bmi2",
                  "AVX_VNNI": "avx_vnni", "AVX512F": "avx512f", "AVX512CD": "avx512cd", "AVX512VL": "avx512vl",
                  "AVX512DQ": "avx512dq", "AVX512BW": "avx512bw", "AVX512_VBMI": "avx512vbmi",
                  "AVX512_BF16": "avx512_bf16", "AVX512_VNNI": "avx512_vnni", "AMX_INT8": "amx_int8",
                  "AMX_TILE": "amx_tile", "OSXSAVE": "osxsave", "SSE41": "sse4_1", "SSSE3": "ssse3",
                  "MOVBE": "movbe", "POPCNT": "popcnt", "XSAVE": "xsave", "BMI1": "bmi1", "CMPXCHG16B": "cx16",
                  "SSE3": "pni", "AMX_BF16": "amx_bf16", "AVX512_FP16": "avx512_fp16", "LAHF": "lahf_lm"}
# ggml's bitset names -> (leaf key, register)
GGML_WORDS = {"f_1_ecx": ("1.0", "ecx"), "f_1_edx": ("1.0", "edx"), "f_7_ebx": ("7.0", "ebx"),
              "f_7_ecx": ("7.0", "ecx"), "f_7_edx": ("7.0", "edx"), "f_7_1_eax": ("7.1", "eax"),
              "f_81_ecx": ("80000001.0", "ecx")}


def test_x86_data_schema() -> None:
    data = x86_data()
    assert data["schema"] == 1
    leaf_keys = {f"{leaf:x}.{sub}" for leaf, sub in data["leaves"]}
    for flag, (key, reg, bit) in data["cpuid_bits"].items():
        assert key in leaf_keys and reg in REGS and 0 <= bit < 32, flag
    assert len({tuple(v) for v in data["cpuid_bits"].values()}) == len(data["cpuid_bits"]), "two flags, one bit"
    for name, group in data["state_groups"].items():
        assert set(group["xcr0"]) <= set(data["xcr0_bits"]), name
        assert set(group["features"]) <= set(data["cpuid_bits"]), name
        assert group["what"]
    for groups in data["lazy_groups"].values():
        assert set(groups) <= set(data["state_groups"])
    assert data["xcr0_bits"] == {"x87": 0, "sse": 1, "avx": 2, "opmask": 5, "zmm_hi256": 6, "hi16_zmm": 7,
                                 "pkru": 9, "tilecfg": 17, "tiledata": 18}  # SDM vol. 1, 13.1


def test_ggml_cpu_data_schema() -> None:
    data = ggml_cpu()
    assert data["schema"] == 1 and data["backend_order"][-1] == "cpu"
    x86 = data["x86"]
    bits = x86_data()["cpuid_bits"]
    scores = [f["score"] for f in x86["features"].values() if f["score"] is not None]
    assert len(set(scores)) == len(scores) and all(s & (s - 1) == 0 for s in scores), "one bit per feature"
    for name, feat in x86["features"].items():
        assert feat["flags"] and set(feat["flags"]) <= set(bits), name
    for variant, feats in x86["variants"].items():
        assert re.fullmatch(r"[a-z0-9_.]+", variant) and set(feats) <= set(x86["features"]), variant
    # a state the OS may disable is modelled for every flag a variant needs that lives in one
    stateful = {f for g in x86_data()["state_groups"].values() for f in g["features"]}
    for feat in ("AVX", "AVX2", "FMA", "F16C", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                 "AVX512_BF16", "AMX_TILE", "AMX_INT8"):
        assert set(x86["features"][feat]["flags"]) <= stateful, feat


def test_file_names() -> None:
    assert plugin_variant("libggml-cpu-zen4.so", "linux") == "zen4"
    assert plugin_variant("ggml-cpu-zen4.dll", "windows") == "zen4"
    assert plugin_variant("libggml-cuda.so", "linux") is None
    assert plugin_variant("libggml-cuda-sm90.so", "linux", "cuda") == "sm90"
    assert cpu_plugins(["libggml-base.so", "libggml-cpu-x64.so", "libggml-vulkan.so", "libggml-cpu-zen4.so"],
                       "linux") == ["libggml-cpu-x64.so", "libggml-cpu-zen4.so"]
    assert cpu_plugins(["libggml-base.so", "libggml-cpu.so"], "linux") == ["libggml-cpu.so"]


# --- against the pinned llama.cpp source ---------------------------------------------------------

@pytest.fixture(scope="module")
def ggml_src() -> Path:
    return pinned_ggml()


def _x86_cmake_variants(cmake: str) -> dict[str, list[str]]:
    block = cmake[cmake.index('if (GGML_SYSTEM_ARCH STREQUAL "x86")'):cmake.index('elseif(GGML_SYSTEM_ARCH STREQUAL "ARM")')]
    calls = re.findall(r"ggml_add_cpu_backend_variant\((\w+)([^)]*)\)", block)
    return {name: rest.split() for name, rest in calls}


def test_variants_equal_cmake(ggml_src: Path) -> None:
    cmake = (ggml_src / "src" / "CMakeLists.txt").read_text()
    assert _x86_cmake_variants(cmake) == ggml_cpu()["x86"]["variants"]


def test_scores_and_bits_equal_cpu_feats(ggml_src: Path) -> None:
    text = (ggml_src / "src" / "ggml-cpu" / "arch" / "x86" / "cpu-feats.cpp").read_text()
    score_fn = text[text.index("static int ggml_backend_cpu_x86_score"):]
    checks = re.findall(r"#ifdef GGML_(\w+)\n((?:.*\n)*?)#endif", score_fn)
    features = ggml_cpu()["x86"]["features"]
    seen = set()
    for feat, body in checks:
        accessors = re.findall(r"is\.(\w+)\(\)", body)
        shift = re.search(r"score \+= 1(?:<<(\d+))?;", body)  # FMA's is a plain "score += 1;"
        assert shift and features[feat]["score"] == 1 << int(shift.group(1) or 0), feat
        assert sorted(GGML_ACCESSORS[a] for a in accessors) == sorted(features[feat]["flags"]), feat
        seen.add(feat)
    assert seen == {f for f, v in features.items() if v["score"] is not None}
    bits, compared = x86_data()["cpuid_bits"], set()
    for accessor, word, bit in re.findall(r"bool (\w+)\(void\) \{ return (?:is_\w+ && )?(f_\w+)\[(\d+)\]; \}", text):
        if accessor in GGML_ACCESSORS and word in GGML_WORDS:
            assert bits[GGML_ACCESSORS[accessor]] == [*GGML_WORDS[word], int(bit)], accessor
            compared.add(accessor)
    assert compared == set(GGML_ACCESSORS), set(GGML_ACCESSORS) - compared


def test_backend_order_equals_ggml(ggml_src: Path) -> None:
    text = (ggml_src / "src" / "ggml-backend-reg.cpp").read_text()
    body = text[text.index("void ggml_backend_load_all_from_path"):]
    assert re.findall(r'ggml_backend_load_best\("(\w+)"', body) == ggml_cpu()["backend_order"]


# --- against the real plugins on this machine ------------------------------------------------------

_SCORE = """
import ctypes, json, sys
out = {}
for path in sys.argv[1:]:
    fn = ctypes.CDLL(path).ggml_backend_score
    fn.restype = ctypes.c_int
    out[path.rsplit("/", 1)[-1]] = fn()
print(json.dumps(out))
"""


@pytest.mark.slow  # the dev variants (a build)
@pytest.mark.parametrize("variant", ["linux-x86_64-cpu", "linux-x86_64-cpu-omp"])
def test_predicted_scores_equal_the_plugins_own(variant: str) -> None:
    folder = devrelease.dev_cache() / "variants" / variant
    if not folder.is_dir():
        pytest.skip(f"{folder} not built (scripts/build_variants.py)")
    files = cpu_plugins([p.name for p in folder.iterdir()], "linux")
    real = json.loads(subprocess.run([sys.executable, "-c", _SCORE, *[str(folder / f) for f in files]],
                                     capture_output=True, text=True, check=True).stdout)
    flags = read_x86("linux")["cpuid"]["features"]
    predicted = {f: predicted_score(plugin_variant(f, "linux") or "", flags)[0] for f in files}
    assert predicted == real
    cpu = {"cpuid": {"features": flags}, "os": read_x86("linux")["os"]}
    assert rank(files, cpu, "linux", scores=real).ggml_pick == rank(files, cpu, "linux").ggml_pick
