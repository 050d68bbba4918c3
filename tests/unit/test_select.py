"""Variants: manifest and lock parsing, and the explained, best-first selection."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from llama_runtime.config import BACKENDS
from llama_runtime.errors import ManifestError, NoCompatibleVariantError
from llama_runtime.probe import MachineProfile
from llama_runtime.variants import Lock, Manifest, read_lock, select
from llama_runtime.variants.select import hardware

SHA = "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
V3 = ["avx", "avx2", "bmi2", "f16c", "fma"]
V4 = ["avx512bw", "avx512f", "avx512vl"]


def _variant(os: str, arch: str, backend: str, **requires: Any) -> dict[str, Any]:
    name_ext = "dylib" if os == "macos" else "so"
    return {
        "archive": "PLACEHOLDER.tar.gz", "sha256": SHA, "size": 1000, "os": os, "arch": arch,
        "backend": backend,
        "requires": {"glibc": "2.31" if os == "linux" else None, "x86_64_level": None,
                     "cpu_features": [], "cuda_driver": None, "compute_capability": None,
                     "macos": None, **requires},
        "libraries": [f"libggml-base.{name_ext}", f"libggml.{name_ext}", f"libllama.{name_ext}"],
        "backend_dl": True, "python_requires": [],
    }


def manifest_dict(*names: str) -> dict[str, Any]:
    """A valid schema-1 manifest; ``names`` picks a subset of the variants."""
    variants = {
        "linux-x86_64-cpu": _variant("linux", "x86_64", "cpu", x86_64_level=1),
        "linux-x86_64-cpu-v3": _variant("linux", "x86_64", "cpu", x86_64_level=3, cpu_features=V3),
        "linux-x86_64-cpu-v4": _variant("linux", "x86_64", "cpu", x86_64_level=4,
                                        cpu_features=V3 + V4),
        "linux-x86_64-cuda12": _variant("linux", "x86_64", "cuda", x86_64_level=1,
                                        cuda_driver="12.4"),
        "linux-aarch64-cpu": _variant("linux", "aarch64", "cpu"),
        "macos-arm64-metal": _variant("macos", "aarch64", "metal", macos="13.0"),
    }
    for name, v in variants.items():
        v["archive"] = f"{name}.tar.gz"
    if names:
        variants = {n: variants[n] for n in names}
    return {"schema": 1, "llama_cpp": "b6000", "variants": variants}


MANIFEST = Manifest.parse(manifest_dict())
NO_GPU = {"driver": None, "cuda_driver": None, "gpus": [],
          "error": "no NVIDIA driver found (no /proc/driver/nvidia/version, no libcuda)"}


def profile(*, level: int = 3, features: list[str] | None = None, arch: str = "x86_64",
            os: str = "linux", libc: tuple[str | None, str | None] = ("glibc", "2.36"),
            driver: str | None = None, cuda: str | None = None) -> MachineProfile:
    if features is None:
        features = {1: [], 2: ["sse4_2"], 3: ["sse4_2", *V3], 4: ["sse4_2", *V3, *V4]}[level]
    nvidia = (NO_GPU if driver is None else
              {"driver": driver, "cuda_driver": cuda, "gpus": [], "error": None})
    return MachineProfile(
        os=os, arch=arch,
        libc={"name": libc[0], "version": libc[1], "error": None},
        cpu={"arch": arch, "vendor": "GenuineIntel", "microarchitecture": "x",
             "x86_64_level": level if arch == "x86_64" else None, "features": features,
             "error": None},
        nvidia=dict(nvidia),
    )


def reasons(selection: Any, name: str) -> str:
    return "; ".join(selection.candidate(name).reasons)


# --- ranking and rejections --------------------------------------------------------------------

@pytest.mark.parametrize(("level", "ranked"),
                         [(1, ["linux-x86_64-cpu"]),
                          (2, ["linux-x86_64-cpu"]),
                          (3, ["linux-x86_64-cpu-v3", "linux-x86_64-cpu"]),
                          (4, ["linux-x86_64-cpu-v4", "linux-x86_64-cpu-v3", "linux-x86_64-cpu"])],
                         ids=["v1-cpu", "v2-cpu", "v3-cpu", "v4-cpu"])
def test_best_first_cpu_ranking(level: int, ranked: list[str]) -> None:
    s = select(MANIFEST, profile(level=level), backend="auto")
    assert s.ranked == ranked
    assert s.selected == ranked[0]
    assert s.require() == ranked[0]
    assert s.warnings == []


def test_v4_refused_on_v3_cpu_names_missing_features() -> None:
    s = select(MANIFEST, profile(level=3))
    c = s.candidate("linux-x86_64-cpu-v4")
    assert not c.compatible
    text = reasons(s, "linux-x86_64-cpu-v4")
    assert "needs x86-64-v4, this CPU is x86-64-v3" in text
    for feature in V4:
        assert feature in text
    assert "Illegal instruction" in text
    assert "avx2" not in text  # only what is missing is named


@pytest.mark.parametrize(("prof", "name", "words"),
                         [(profile(), "linux-aarch64-cpu", "built for aarch64, this CPU is x86_64"),
                          (profile(), "macos-arm64-metal",
                           "built for macos, this machine runs linux"),
                          (profile(arch="aarch64", features=["asimd"]), "linux-x86_64-cpu",
                           "built for x86_64, this CPU is aarch64")],
                         ids=["aarch64-on-x86_64", "macos-on-linux", "x86_64-on-aarch64"])
def test_wrong_platform_refused(prof: MachineProfile, name: str, words: str) -> None:
    s = select(MANIFEST, prof)
    assert not s.candidate(name).compatible
    assert words in reasons(s, name)


def test_aarch64_machine_gets_the_aarch64_build() -> None:
    s = select(MANIFEST, profile(arch="aarch64", features=["asimd", "asimddp"]))
    assert s.ranked == ["linux-aarch64-cpu"]


@pytest.mark.parametrize(("libc", "compatible", "words"),
                         [(("glibc", "2.31"), True, "fits"),
                          (("glibc", "2.39"), True, "fits"),
                          (("glibc", "2.28"), False, "needs glibc >= 2.31, this machine has 2.28"),
                          (("glibc", "2.4"), False, "needs glibc >= 2.31, this machine has 2.4"),
                          (("musl", "1.2.4"), False, "needs glibc 2.31, this machine uses musl"),
                          ((None, None), False, "this machine uses an unknown libc")],
                         ids=["equal-floor", "newer", "older", "two-digit-minor-compare", "musl",
                              "unknown"])
def test_glibc_floor(libc: tuple[str | None, str | None], compatible: bool, words: str) -> None:
    s = select(MANIFEST, profile(libc=libc))
    assert s.candidate("linux-x86_64-cpu").compatible is compatible
    assert words in reasons(s, "linux-x86_64-cpu")


def test_auto_picks_cuda_when_the_driver_supports_it() -> None:
    s = select(MANIFEST, profile(driver="550.54.15", cuda="12.4"))
    assert s.selected == "linux-x86_64-cuda12"
    assert s.ranked[:2] == ["linux-x86_64-cuda12", "linux-x86_64-cpu-v3"]  # CPU is the fallback
    assert s.warnings == []


def test_auto_refuses_cuda_on_an_old_driver_and_says_which() -> None:
    s = select(MANIFEST, profile(driver="520.61.05", cuda="11.8"))
    assert s.selected == "linux-x86_64-cpu-v3"
    assert not s.candidate("linux-x86_64-cuda12").compatible
    text = reasons(s, "linux-x86_64-cuda12")
    assert "520.61.05" in text and "CUDA 11.8" in text and "12.4" in text
    assert s.candidate("linux-x86_64-cuda12").no_device is False  # a driver is there, too old


def test_auto_without_gpu_refuses_cuda() -> None:
    s = select(MANIFEST, profile())
    assert not s.candidate("linux-x86_64-cuda12").compatible
    assert "no NVIDIA driver detected" in reasons(s, "linux-x86_64-cuda12")
    # the facts the selection decides by are fields, not words of the reason
    cuda = s.candidate("linux-x86_64-cuda12")
    assert (cuda.no_device, cuda.forced) == (True, False)


def test_cuda12_on_a_cuda_11_8_driver_raises_with_the_driver_and_candidates() -> None:
    s = select(MANIFEST, profile(driver="520.61.05", cuda="11.8"), backend="cuda12")
    assert not s.candidate("linux-x86_64-cuda12").compatible
    assert s.selected is None
    with pytest.raises(NoCompatibleVariantError) as info:
        s.require()
    message = str(info.value)
    assert "LLAMA_BACKEND=cuda12" in message
    assert "520.61.05" in message and "11.8" in message
    for name in MANIFEST.variants:
        assert f"- {name}:" in message
    assert isinstance(info.value, LookupError)


def test_cuda11_request_refuses_a_cuda12_build() -> None:
    s = select(MANIFEST, profile(driver="550.54.15", cuda="12.4"), backend="cuda11")
    assert "built for CUDA 12.4, not CUDA 11" in reasons(s, "linux-x86_64-cuda12")
    assert s.candidate("linux-x86_64-cuda12").requested is False
    with pytest.raises(NoCompatibleVariantError):
        s.require()


@pytest.mark.parametrize("backend", ["cuda", "cuda12"], ids=["cuda", "cuda12"])
def test_forced_cuda_without_a_driver_is_kept_with_a_warning(backend: str) -> None:
    s = select(MANIFEST, profile(), backend=backend)
    assert s.selected == "linux-x86_64-cuda12"
    text = reasons(s, "linux-x86_64-cuda12")
    assert "no NVIDIA driver detected" in text
    assert f"kept: LLAMA_BACKEND={backend} asked for it" in text
    assert len(s.warnings) == 1 and "linux-x86_64-cuda12" in s.warnings[0]
    cuda = s.candidate("linux-x86_64-cuda12")
    assert (cuda.compatible, cuda.forced, cuda.no_device) == (True, True, False)
    assert cuda.to_dict()["forced"] is True
    assert not any(s.candidate(n).forced for n in s.ranked[1:])


@pytest.mark.parametrize("prof", [profile(driver="550.54.15", cuda="12.4"), profile()],
                         ids=["with-gpu", "without-gpu"])
def test_backend_cpu_never_picks_a_gpu(prof: MachineProfile) -> None:
    s = select(MANIFEST, prof, backend="cpu")
    assert s.selected == "linux-x86_64-cpu-v3"
    cuda = s.candidate("linux-x86_64-cuda12")
    assert not cuda.requested
    assert all(s.candidate(n).requested is False for n in s.ranked if "cuda" in n)


def test_backend_cpu_with_no_cpu_build_that_fits_refuses_the_gpu() -> None:
    manifest = Manifest.parse(manifest_dict("linux-x86_64-cpu-v4", "linux-x86_64-cuda12"))
    s = select(manifest, profile(level=3, driver="550.54.15", cuda="12.4"), backend="cpu")
    assert s.ranked == ["linux-x86_64-cuda12"]  # offered as a fallback only
    assert s.selected is None
    assert "fallback only" in reasons(s, "linux-x86_64-cuda12")
    with pytest.raises(NoCompatibleVariantError):
        s.require()


def test_metal_is_picked_on_apple_silicon() -> None:
    mac = MachineProfile(os="macos", arch="aarch64", libc={}, nvidia=dict(NO_GPU),
                         cpu={"arch": "aarch64", "features": ["asimd", "asimddp", "i8mm"]})
    s = select(MANIFEST, mac)
    assert s.selected == "macos-arm64-metal"
    assert s.warnings == []


def test_exact_variant_wins_over_a_better_score() -> None:
    s = select(MANIFEST, profile(level=4), variant="linux-x86_64-cpu")
    assert s.selected == "linux-x86_64-cpu"
    assert s.ranked[0] == "linux-x86_64-cpu"
    assert "LLAMA_RUNTIME_VARIANT=linux-x86_64-cpu" in reasons(s, "linux-x86_64-cpu-v4")


def test_exact_variant_that_does_not_fit_is_an_error() -> None:
    s = select(MANIFEST, profile(level=3), variant="linux-x86_64-cpu-v4")
    assert s.selected is None
    with pytest.raises(NoCompatibleVariantError, match="Illegal instruction"):
        s.require()


def test_unknown_variant_lists_known_names() -> None:
    with pytest.raises(ManifestError) as info:
        select(MANIFEST, profile(), variant="linux-x86_64-cpu-v9")
    message = str(info.value)
    assert "'linux-x86_64-cpu-v9' is not in the manifest" in message
    for name in MANIFEST.variants:
        assert name in message


PROFILES = {
    "v1": profile(level=1),
    "v3": profile(level=3),
    "v4-cuda": profile(level=4, driver="550.54.15", cuda="12.4"),
    "old-driver": profile(driver="470.256.02", cuda="11.4"),
    "musl": profile(libc=("musl", "1.2.4")),
    "aarch64": profile(arch="aarch64", features=["asimd"]),
}


@pytest.mark.parametrize("backend", BACKENDS, ids=list(BACKENDS))
@pytest.mark.parametrize("prof", list(PROFILES.values()), ids=list(PROFILES))
def test_every_candidate_is_explained(prof: MachineProfile, backend: str) -> None:
    s = select(MANIFEST, prof, backend=backend)
    assert sorted(c.name for c in s.candidates) == sorted(MANIFEST.variants)
    for c in s.candidates:
        assert c.reasons and all(r.strip() for r in c.reasons), c.name
        json.dumps(c.to_dict())
    if s.selected is not None:
        assert s.candidate(s.selected).compatible
        assert s.candidate(s.selected).requested


# --- manifest parsing --------------------------------------------------------------------------

def test_valid_manifest_round_trips() -> None:
    data = manifest_dict()
    m = Manifest.parse(data)
    assert m.llama_cpp == "b6000"
    v = m.get("linux-x86_64-cuda12")
    assert v.libraries == ("libggml-base.so", "libggml.so", "libllama.so")
    assert v.requires["cuda_driver"] == "12.4"
    assert v.to_dict() == data["variants"]["linux-x86_64-cuda12"]


def test_future_keys_are_kept() -> None:
    data = manifest_dict("linux-x86_64-cpu")
    data["variants"]["linux-x86_64-cpu"]["plugins"] = ["libggml-cpu-haswell.so"]
    data["variants"]["linux-x86_64-cpu"]["requires"]["rocm"] = "6.0"
    v = Manifest.parse(data).get("linux-x86_64-cpu")
    assert v.files == ("libggml-base.so", "libggml.so", "libllama.so", "libggml-cpu-haswell.so")
    assert v.requires["rocm"] == "6.0"


def _broken(path: str, value: Any) -> dict[str, Any]:
    """The valid manifest with one value replaced (``None`` deletes the key)."""
    data = copy.deepcopy(manifest_dict("linux-x86_64-cpu"))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


V = "variants.linux-x86_64-cpu"
BAD_MANIFESTS = [
    ("schema", 2, "manifest schema 2 is not supported.*upgrade llama-runtime"),
    ("schema", None, "manifest schema None is not supported"),
    ("schema", "1", "manifest schema '1' is not supported"),
    ("variants", {}, "has no variants"),
    (f"{V}.sha256", None, "lacks sha256"),
    (f"{V}.archive", None, "lacks archive"),
    (f"{V}.libraries", None, "lacks libraries"),
    (f"{V}.sha256", "AB" * 32, "is not 64 lowercase hex"),
    (f"{V}.sha256", "ab" * 31, "is not 64 lowercase hex"),
    (f"{V}.sha256", "ab" * 32 + "\n", "is not 64 lowercase hex"),
    (f"{V}.size", 0, "size 0 is not a positive integer"),
    (f"{V}.size", "1000", "is not a positive integer"),
    (f"{V}.size", True, "is not a positive integer"),
    (f"{V}.libraries", [], "non-empty list"),
    (f"{V}.libraries", "libllama.so", "non-empty list"),
    (f"{V}.requires", ["glibc"], "requires must be an object"),
    (f"{V}.libraries", ["../x.so"], "library '../x.so' is not a plain file name"),
    (f"{V}.libraries", ["/abs.so"], "library '/abs.so' is not a plain file name"),
    (f"{V}.libraries", ["a/b.so"], "library 'a/b.so' is not a plain file name"),
    (f"{V}.libraries", ["a\\b.so"], "is not a plain file name"),
    (f"{V}.libraries", ["libllama.so\n"], "is not a plain file name"),
    (f"{V}.libraries", [""], "is not a plain file name"),
    (f"{V}.libraries", [7], "library 7 is not a plain file name"),
    (f"{V}.archive", "../x.tar.gz", "archive '../x.tar.gz' is not a plain file name"),
    (f"{V}.archive", "/abs.tar.gz", "is not a plain file name"),
    (f"{V}.archive", "..", "is not a plain file name"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_MANIFESTS,
                         ids=["future-schema-2", "no-schema", "string-schema", "no-variants",
                              "no-sha256", "no-archive", "no-libraries", "uppercase-sha",
                              "short-sha", "sha-trailing-newline", "size-zero", "size-string",
                              "size-bool", "empty-libraries", "libraries-string",
                              "requires-list", "lib-dotdot", "lib-absolute", "lib-subfolder",
                              "lib-backslash", "lib-trailing-newline", "lib-empty", "lib-int",
                              "archive-dotdot", "archive-absolute", "archive-is-dotdot"])
def test_bad_manifest(path: str, value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(_broken(path, value))


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x\n"],
                         ids=["dotdot", "subfolder", "leading-dot", "trailing-newline"])
def test_bad_variant_name(name: str) -> None:
    data = manifest_dict("linux-x86_64-cpu")
    data["variants"] = {name: data["variants"]["linux-x86_64-cpu"]}
    with pytest.raises(ManifestError, match="variant name .* is not a plain file name"):
        Manifest.parse(data)


@pytest.mark.parametrize("data", [[], "manifest", None], ids=["list", "string", "null"])
def test_manifest_not_an_object(data: Any) -> None:
    with pytest.raises(ManifestError, match="not a JSON object"):
        Manifest.parse(data)


def test_variant_not_an_object() -> None:
    data = manifest_dict("linux-x86_64-cpu")
    data["variants"]["linux-x86_64-cpu"] = ["linux"]
    with pytest.raises(ManifestError, match="variant 'linux-x86_64-cpu' is not an object"):
        Manifest.parse(data)


# --- lock --------------------------------------------------------------------------------------

def lock_dict() -> dict[str, Any]:
    return {"repo": "org/llama-bins", "revision": "v0.1.0", "commit": COMMIT,
            "manifest": manifest_dict()}


def test_lock_parses_and_read_lock_records_the_path(tmp_path: Path) -> None:
    path = tmp_path / "binaries.lock.json"
    path.write_text(json.dumps(lock_dict()), encoding="utf-8")
    lock = read_lock(path)
    assert (lock.repo, lock.revision, lock.commit, lock.path) == (
        "org/llama-bins", "v0.1.0", COMMIT, path)
    assert set(lock.manifest.variants) == set(MANIFEST.variants)


BAD_LOCKS = [
    ("commit", "abc123", "commit 'abc123' is not a 40-hex commit sha"),
    ("commit", COMMIT.upper(), "is not a 40-hex commit sha"),
    ("commit", COMMIT + "\n", "is not a 40-hex commit sha"),
    ("commit", 12345, "is not a 40-hex commit sha"),
    ("repo", None, "lacks repo"),
    ("commit", None, "lacks commit"),
    ("manifest", None, "lacks manifest"),
    ("manifest", {"schema": 2, "variants": {}}, "manifest schema 2 is not supported"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_LOCKS,
                         ids=["short-commit", "uppercase-commit", "commit-trailing-newline",
                              "int-commit", "no-repo", "no-commit", "no-manifest",
                              "future-manifest"])
def test_bad_lock(key: str, value: Any, message: str) -> None:
    data = lock_dict()
    if value is None:
        del data[key]
    else:
        data[key] = value
    with pytest.raises(ManifestError, match=message):
        Lock.parse(data)


def test_lock_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binaries.lock.json"
    data = lock_dict()
    del data["revision"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ManifestError, match=f"the lock {path} lacks revision"):
        read_lock(path)


def test_read_lock_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "binaries.lock.json"
    with pytest.raises(ManifestError, match="no binary lock at .*binaries.lock.json.*publish"):
        read_lock(path)


@pytest.mark.parametrize("text", ["{not json", "", '{"repo": "a",'],
                         ids=["garbage", "empty", "truncated"])
def test_read_lock_invalid_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "binaries.lock.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_lock(path)


# --- hardware.json -----------------------------------------------------------------------------

def test_hardware_json_schema() -> None:
    data = hardware()
    assert data["schema"] == 1
    backends, requests = data["backends"], data["requests"]
    for name, info in backends.items():
        assert isinstance(info["rank"], int) and not isinstance(info["rank"], bool), name
        assert isinstance(info["gpu"], bool), name
        assert isinstance(info["requires"], list), name
    order = ["cuda", "rocm", "vulkan", "metal", "cpu"]
    assert set(backends) == set(order)
    ranks = [backends[b]["rank"] for b in order]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)
    assert backends["cpu"]["gpu"] is False
    for name, request in requests.items():
        assert request["backend"] is None or request["backend"] in backends, name
        major = request["cuda_major"]
        assert major is None or (isinstance(major, int) and request["backend"] == "cuda"), name
    assert set(BACKENDS) <= set(requests)
    assert requests["auto"]["backend"] is None


def test_hardware_requires_name_manifest_keys() -> None:
    from llama_runtime.variants.manifest import OPTIONAL_REQUIRE_KEYS, REQUIRE_KEYS

    for name, info in hardware()["backends"].items():
        assert set(info["requires"]) <= {*REQUIRE_KEYS, *OPTIONAL_REQUIRE_KEYS}, name


def test_hardware_vulkan_device_ranks() -> None:
    ranks = hardware()["vulkan_device_rank"]
    backends = hardware()["backends"]
    assert set(ranks) == {"discrete", "virtual", "integrated", "other", "cpu"}
    # a discrete GPU ranks where Vulkan sits; an integrated one or a software renderer below the CPU
    assert ranks["discrete"] == backends["vulkan"]["rank"]
    assert ranks["cpu"] < ranks["integrated"] < backends["cpu"]["rank"] < ranks["virtual"] <= ranks["discrete"]


def test_driver_known_but_cuda_unknown_is_explained() -> None:
    prof = profile(driver="550.54.15", cuda=None)
    s = select(MANIFEST, prof)
    assert "no CUDA version known for NVIDIA driver 550.54.15" in reasons(s, "linux-x86_64-cuda12")
    assert select(MANIFEST, prof, backend="cuda").selected == "linux-x86_64-cuda12"  # kept, with a warning


# --- an exact variant is honoured at least as much as a backend (issue 15, point 7) ----------

def test_named_cuda_variant_without_a_driver_is_kept_like_a_forced_backend() -> None:
    forced = select(MANIFEST, profile(), backend="cuda12")
    named = select(MANIFEST, profile(), variant="linux-x86_64-cuda12")
    assert forced.selected == named.selected == "linux-x86_64-cuda12"
    text = reasons(named, "linux-x86_64-cuda12")
    assert "no NVIDIA driver detected" in text
    assert "kept: LLAMA_RUNTIME_VARIANT=linux-x86_64-cuda12 asked for it" in text
    assert named.ranked[0] == "linux-x86_64-cuda12"  # the CPU builds stay fallbacks
    assert len(named.warnings) == 1 and "no NVIDIA driver detected" in named.warnings[0]


def test_named_cuda_variant_on_a_too_old_driver_is_refused_as_the_backend_is() -> None:
    old = profile(driver="520.61.05", cuda="11.8")
    for s in (select(MANIFEST, old, backend="cuda12"), select(MANIFEST, old, variant="linux-x86_64-cuda12")):
        assert s.selected is None
        with pytest.raises(NoCompatibleVariantError) as info:
            s.require()
        assert "520.61.05" in str(info.value) and "CUDA 11.8" in str(info.value)


def test_named_variant_conflicting_with_the_backend_is_refused_naming_both() -> None:
    s = select(MANIFEST, profile(driver="550.54.15", cuda="12.4"), backend="cpu", variant="linux-x86_64-cuda12")
    assert s.selected is None
    with pytest.raises(NoCompatibleVariantError) as info:
        s.require()
    assert "LLAMA_RUNTIME_VARIANT=linux-x86_64-cuda12" in str(info.value)
    assert "LLAMA_BACKEND=cpu" in str(info.value)


NO_FIT = [
    (profile(driver="520.61.05", cuda="11.8"), "cuda12", None),
    (profile(driver="550.54.15", cuda="12.4"), "cuda11", None),
    (profile(level=3), "auto", "linux-x86_64-cpu-v4"),
    (profile(libc=("musl", "1.2.4")), "auto", None),
    (profile(arch="riscv64", features=[]), "auto", None),
    (profile(), "metal", None),
]


@pytest.mark.parametrize(("prof", "backend", "variant"), NO_FIT,
                         ids=["old-driver", "cuda11-request", "v4-on-v3", "musl", "riscv", "metal-on-linux"])
def test_every_no_variant_fits_message_names_the_target_setting(prof: MachineProfile, backend: str,
                                                                variant: str | None) -> None:
    with pytest.raises(NoCompatibleVariantError) as info:
        select(MANIFEST, prof, backend=backend, variant=variant).require()
    message = str(info.value)
    assert message.startswith("no variant fits")
    assert "LLAMA_RUNTIME_TARGET=" in message and "doctor --json" in message
    if variant:
        assert f"LLAMA_RUNTIME_VARIANT={variant}" in message
