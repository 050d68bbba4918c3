"""`publish`: pack, upload to the loopback hub, tag, write the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from scripts.hubserver import HubServer
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

from llama_runtime.errors import ManifestError, PublishError
from llama_runtime.fetch.hashing import sha256_file
from llama_runtime.release.publish import build_release, publish
from llama_runtime.variants.manifest import read_lock

REPO = "llama-runtime/binaries"
LIBS = ["libggml-base.so", "libggml.so", "libllama.so"]


def variant_json(backend: str, **extra: Any) -> dict[str, Any]:
    return {
        "os": "linux",
        "arch": "x86_64",
        "backend": backend,
        "requires": {
            "glibc": "2.34",
            "x86_64_level": 1,
            "cpu_features": [],
            "cuda_driver": None,
            "compute_capability": None,
            "macos": None,
        },
        "libraries": LIBS,
        "backend_dl": True,
        "python_requires": [],
        "llama_cpp": "0.5.0",  # a generation the binding drives (publish refuses others)
        **extra,
    }


def make_variant(src: Path, name: str, data: dict[str, Any] | str, libs: list[str] = LIBS) -> Path:
    folder = src / name
    folder.mkdir(parents=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / "variant.json").write_text(text)
    for lib in libs:
        (folder / lib).write_bytes(os.urandom(3000))
    return folder


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_variant(root, "linux-x86_64-cpu", variant_json("cpu"))
    make_variant(
        root,
        "linux-x86_64-cuda12",
        variant_json(
            "cuda12", python_requires=["nvidia-cuda-runtime-cu12"], plugins=["libggml-cuda.so"]
        ),
        [*LIBS, "libggml-cuda.so"],
    )
    return root


def run(src: Path, hub: HubServer, lock: Path, tag: str = "v0.1.0") -> dict[str, Any]:
    # packing and uploading alone: these variants hold random bytes, which the qualification
    # (every variant is loaded first) refuses; tests/e2e/test_qualify_publish.py runs it on real ones
    return publish(src, repo=REPO, revision=tag, endpoint=hub.url, lock_path=lock, qualify=False)


def test_publish_writes_lock_matching_the_hub(src: Path, hub: HubServer, tmp_path: Path) -> None:
    lock_path = tmp_path / "out" / "binaries.lock.json"
    lock = run(src, hub, lock_path)
    text = lock_path.read_text()
    assert text.endswith("}\n") and json.loads(text) == lock
    assert text == json.dumps(lock, indent=2, sort_keys=True) + "\n"
    assert lock["repo"] == REPO and lock["revision"] == "v0.1.0"
    manifest = lock["manifest"]
    assert manifest["schema"] == 1 and manifest["llama_cpp"] == "0.5.0"
    assert set(manifest["variants"]) == {"linux-x86_64-cpu", "linux-x86_64-cuda12"}
    cuda = manifest["variants"]["linux-x86_64-cuda12"]
    assert (
        cuda["python_requires"] == ["nvidia-cuda-runtime-cu12"]
        and cuda["archive"] == "linux-x86_64-cuda12.tar.gz"
    )
    parsed = read_lock(lock_path)  # the runtime's own reader accepts it
    assert parsed.commit == lock["commit"]
    for entry in manifest["variants"].values():
        path = hf_hub_download(
            REPO,
            entry["archive"],
            revision=lock["commit"],
            endpoint=hub.url,
            cache_dir=tmp_path / "dl",
        )
        assert sha256_file(path) == entry["sha256"]
        assert os.path.getsize(path) == entry["size"]
    remote = hf_hub_download(
        REPO, "manifest.json", revision="v0.1.0", endpoint=hub.url, cache_dir=tmp_path / "dl"
    )
    assert json.loads(Path(remote).read_text()) == manifest


def test_tag_resolves_to_the_locked_commit(src: Path, hub: HubServer, tmp_path: Path) -> None:
    lock = run(src, hub, tmp_path / "lock.json")
    api = HfApi(endpoint=hub.url)
    assert api.model_info(REPO, revision="v0.1.0").sha == lock["commit"]
    assert {(t.name, t.target_commit) for t in api.list_repo_refs(REPO).tags} == {
        ("v0.1.0", lock["commit"])
    }
    assert sorted(api.list_repo_files(REPO, revision=lock["commit"])) == [
        "linux-x86_64-cpu.tar.gz",
        "linux-x86_64-cuda12.tar.gz",
        "manifest.json",
    ]


def test_release_is_reproducible(src: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = build_release(src, tmp_path / "a")
    os.utime(src / "linux-x86_64-cpu" / "libllama.so", (12345, 12345))
    second = build_release(src, tmp_path / "b")
    assert first == second
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()
    for entry in first["variants"].values():
        assert sha256_file(tmp_path / "b" / entry["archive"]) == entry["sha256"]


def test_republishing_the_same_release_is_a_no_op(
    src: Path, hub: HubServer, tmp_path: Path
) -> None:
    first = run(src, hub, tmp_path / "one.json")
    again = run(src, hub, tmp_path / "two.json")
    assert again == first
    assert len(HfApi(endpoint=hub.url).list_repo_refs(REPO).tags) == 1


def test_existing_tag_with_different_content_is_refused(
    src: Path, hub: HubServer, tmp_path: Path
) -> None:
    first = run(src, hub, tmp_path / "lock.json")
    (src / "linux-x86_64-cpu" / "libllama.so").write_bytes(b"rebuilt")
    with pytest.raises(PublishError, match="already exists"):
        run(src, hub, tmp_path / "lock.json")
    assert json.loads((tmp_path / "lock.json").read_text()) == first  # the old lock is untouched
    assert HfApi(endpoint=hub.url).model_info(REPO, revision="main").sha == first["commit"]


def test_a_later_release_drops_archives_of_removed_variants(
    src: Path, hub: HubServer, tmp_path: Path
) -> None:
    first = run(src, hub, tmp_path / "lock.json")
    for path in (src / "linux-x86_64-cuda12").iterdir():
        path.unlink()
    (src / "linux-x86_64-cuda12").rmdir()
    second = run(src, hub, tmp_path / "lock.json", tag="v0.2.0")
    api = HfApi(endpoint=hub.url)
    assert "linux-x86_64-cuda12.tar.gz" not in api.list_repo_files(REPO, revision="v0.2.0")
    assert "linux-x86_64-cuda12.tar.gz" in api.list_repo_files(REPO, revision="v0.1.0")
    assert second["commit"] != first["commit"]


def test_missing_variant_json(src: Path, hub: HubServer, tmp_path: Path) -> None:
    (src / "linux-x86_64-cpu" / "variant.json").unlink()
    with pytest.raises(ManifestError, match="has no variant.json"):
        run(src, hub, tmp_path / "lock.json")
    assert not (tmp_path / "lock.json").exists()


def test_listed_library_absent(src: Path, hub: HubServer, tmp_path: Path) -> None:
    (src / "linux-x86_64-cpu" / "libggml.so").unlink()
    with pytest.raises(PublishError, match="lists libggml.so, not found"):
        run(src, hub, tmp_path / "lock.json")
    with pytest.raises(RepositoryNotFoundError):  # nothing was uploaded, not even the repo
        HfApi(endpoint=hub.url).model_info(REPO)


def test_bad_json(tmp_path: Path, hub: HubServer) -> None:
    make_variant(tmp_path / "src", "linux-x86_64-cpu", '{"os": "linux",')
    with pytest.raises(ManifestError, match="not valid JSON"):
        run(tmp_path / "src", hub, tmp_path / "lock.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"libraries": []}, "non-empty list"),
        ({"sha256": "0" * 64}, "publish computes"),
        ({"libraries": ["../libllama.so"]}, "not a plain file name"),
    ],
    ids=["no-libraries", "computed-key", "path-in-library"],
)
def test_invalid_variant_json(
    tmp_path: Path, hub: HubServer, change: dict[str, Any], message: str
) -> None:
    make_variant(tmp_path / "src", "linux-x86_64-cpu", {**variant_json("cpu"), **change})
    with pytest.raises(ManifestError, match=message):
        run(tmp_path / "src", hub, tmp_path / "lock.json")


def test_a_variant_folder_name_that_is_no_plain_name_is_refused(tmp_path: Path, hub: HubServer) -> None:
    make_variant(tmp_path / "src", "linux x86_64 cpu", variant_json("cpu"))  # the name becomes a hub path
    with pytest.raises(ManifestError, match="variant folder name 'linux x86_64 cpu'"):
        run(tmp_path / "src", hub, tmp_path / "lock.json")
    with pytest.raises(RepositoryNotFoundError):  # refused before anything was uploaded
        HfApi(endpoint=hub.url).model_info(REPO)


def test_missing_required_key(tmp_path: Path, hub: HubServer) -> None:
    data = variant_json("cpu")
    del data["arch"]
    make_variant(tmp_path / "src", "linux-x86_64-cpu", data)
    with pytest.raises(ManifestError, match="lacks arch"):
        run(tmp_path / "src", hub, tmp_path / "lock.json")


def test_unreachable_hub_is_a_publish_error(src: Path, tmp_path: Path) -> None:
    with HubServer(tmp_path / "gone") as server:
        url = server.url
    with pytest.raises(PublishError, match="failed"):
        publish(src, repo=REPO, revision="v1", endpoint=url, lock_path=tmp_path / "lock.json", qualify=False)


def test_a_release_may_hold_both_checked_generations(tmp_path: Path) -> None:
    # the macOS/Windows npm builds exist only at llama.cpp 0.4.0, Linux's at 0.5.0
    src = tmp_path / "src"
    make_variant(src, "linux-x86_64-cpu", variant_json("cpu"))
    make_variant(src, "linux-x86_64-cpu-old", variant_json("cpu", llama_cpp="0.4.0"))
    (tmp_path / "out").mkdir()
    manifest = build_release(src, tmp_path / "out")
    assert manifest["llama_cpp"] == "0.4.0, 0.5.0"
    assert manifest["variants"]["linux-x86_64-cpu-old"]["llama_cpp"] == "0.4.0"


def test_a_variant_of_an_unchecked_generation_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_variant(src, "linux-x86_64-cpu", variant_json("cpu"))
    make_variant(src, "linux-x86_64-cpu-v010", variant_json("cpu", llama_cpp="0.1.0"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ManifestError) as info:
        build_release(src, tmp_path / "out")
    message = str(info.value)
    assert message.startswith("linux-x86_64-cpu-v010 (llama.cpp 0.1.0)")
    assert "checked only against llama.cpp 0.4.0, 0.5.0" in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_files_the_variant_json_does_not_list_are_refused_by_name(tmp_path: Path, hub: HubServer) -> None:
    # the bug report: variant.json lists only the libraries; the CPU plugins sit beside them
    plugins = ["libggml-cpu-haswell.so", "libggml-cpu-x64.so"]
    make_variant(tmp_path / "src", "linux-x86_64-cpu", variant_json("cpu"), [*LIBS, *plugins])
    with pytest.raises(PublishError) as info:
        run(tmp_path / "src", hub, tmp_path / "lock.json")
    message = str(info.value)
    assert f"holds {', '.join(plugins)}, which " in message and "does not list" in message
    assert "Add each to `plugins`" in message and "no usable backend" in message
    assert not (tmp_path / "lock.json").exists()
    with pytest.raises(RepositoryNotFoundError):  # nothing was uploaded, not even the repo
        HfApi(endpoint=hub.url).model_info(REPO)


def test_listed_plugins_are_published_and_named_by_the_manifest(tmp_path: Path, hub: HubServer) -> None:
    plugins = ["libggml-cpu-haswell.so", "libggml-cpu-x64.so"]
    make_variant(tmp_path / "src", "linux-x86_64-cpu", variant_json("cpu", plugins=plugins), [*LIBS, *plugins])
    lock = run(tmp_path / "src", hub, tmp_path / "lock.json")
    entry = lock["manifest"]["variants"]["linux-x86_64-cpu"]
    assert entry["plugins"] == plugins
    parsed = read_lock(tmp_path / "lock.json").manifest.variants["linux-x86_64-cpu"]
    assert parsed.files == (*LIBS, *plugins)  # what the wheel and the cache keep: every file


@pytest.mark.parametrize(("change", "message"), [
    ({"plugins": ["../libggml-cpu.so"]}, "plugin '../libggml-cpu.so' is not a plain file name"),
    ({"plugins": "libggml-cpu.so"}, "plugins must be a list of file names"),
    ({"libraries": ["libllama.so", "libggml.so"]}, "the last library must be libllama"),
], ids=["plugin-path", "plugins-not-a-list", "libllama-not-last"])
def test_invalid_plugins_and_load_order(tmp_path: Path, hub: HubServer, change: dict[str, Any],
                                        message: str) -> None:
    make_variant(tmp_path / "src", "linux-x86_64-cpu", {**variant_json("cpu"), **change})
    with pytest.raises(ManifestError, match=message):
        run(tmp_path / "src", hub, tmp_path / "lock.json")
