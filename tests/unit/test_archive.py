"""Variant archives: reproducible packing, and an unpacker that refuses anything unsafe."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from llama_runtime.fetch.archive import safe_extract
from llama_runtime.release.pack import pack_variant
from llama_runtime.errors import PublishError, UnsafeArchiveError
from llama_runtime.fetch.hashing import sha256_file


def make_tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"payload") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.fixture
def variant_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "linux-x86_64-cpu"
    folder.mkdir()
    (folder / "libllama.so").write_bytes(os.urandom(4096))
    (folder / "libggml.so").write_bytes(os.urandom(2048))
    (folder / "variant.json").write_text('{"os": "linux"}\n')
    return folder


def test_pack_is_reproducible_and_normalised(variant_dir: Path, tmp_path: Path) -> None:
    first = pack_variant(variant_dir, tmp_path / "a.tar.gz")
    os.utime(variant_dir / "libllama.so", (1_000_000, 1_000_000))  # mtimes must not matter
    (variant_dir / "variant.json").chmod(0o600)
    second = pack_variant(variant_dir, tmp_path / "b.tar.gz")
    assert first == second
    assert first == (sha256_file(tmp_path / "a.tar.gz"), (tmp_path / "a.tar.gz").stat().st_size)
    assert (tmp_path / "a.tar.gz").read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["libggml.so", "libllama.so", "variant.json"]
    assert all(
        i.isreg() and i.mtime == 0 and i.uid == i.gid == 0 and i.uname == i.gname == ""
        for i in infos
    )
    assert [i.mode for i in infos] == [0o755, 0o755, 0o644]


def test_pack_stores_inside_symlink_as_file(variant_dir: Path, tmp_path: Path) -> None:
    (variant_dir / "libllama.so.0").symlink_to("libllama.so")
    pack_variant(variant_dir, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        info = tar.getmember("libllama.so.0")
        assert info.isreg()
        assert tar.extractfile(info).read() == (variant_dir / "libllama.so").read_bytes()  # type: ignore[union-attr]


def test_pack_refuses_symlink_out_and_subfolders(variant_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("x")
    (variant_dir / "libevil.so").symlink_to(outside)
    with pytest.raises(PublishError, match="outside"):
        pack_variant(variant_dir, tmp_path / "a.tar.gz")
    (variant_dir / "libevil.so").unlink()
    (variant_dir / "sub").mkdir()
    with pytest.raises(PublishError, match="folder"):
        pack_variant(variant_dir, tmp_path / "a.tar.gz")


def test_safe_extract_round_trip(variant_dir: Path, tmp_path: Path) -> None:
    pack_variant(variant_dir, tmp_path / "a.tar.gz")
    out = tmp_path / "out"
    written = safe_extract(tmp_path / "a.tar.gz", out, ["libllama.so", "libggml.so"])
    assert sorted(p.name for p in written) == ["libggml.so", "libllama.so", "variant.json"]
    for name in ("libggml.so", "libllama.so", "variant.json"):
        assert (out / name).read_bytes() == (variant_dir / name).read_bytes()
    assert os.access(out / "libllama.so", os.X_OK)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (member("../escape.so"), "climbs out"),
        (member("lib/../../escape.so"), "climbs out"),
        (member("/etc/evil.so"), "absolute"),
        (member("link.so", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (member("hard.so", tarfile.LNKTYPE, "libok.so"), "hard link"),
        (member("dev", tarfile.CHRTYPE), "not a regular file"),
        (member("fifo", tarfile.FIFOTYPE), "not a regular file"),
        (member("folder", tarfile.DIRTYPE), "not a regular file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "dir"],
)
def test_safe_extract_refuses(bad: tarfile.TarInfo, reason: str, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", [member("libok.so"), bad])
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=reason) as info:
        safe_extract(archive, out)
    assert repr(bad.name) in str(info.value)  # the message names the member
    assert not (out / "libok.so").exists()  # nothing is written before every member passed
    assert not (tmp_path / "escape.so").exists()


def test_safe_extract_requires_expected_members(variant_dir: Path, tmp_path: Path) -> None:
    pack_variant(variant_dir, tmp_path / "a.tar.gz")
    with pytest.raises(UnsafeArchiveError, match="lacks libggml-base.so"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "out", ["libllama.so", "libggml-base.so"])


def test_safe_extract_refuses_duplicates_and_garbage(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "dup.tar.gz", [member("libok.so"), member("libok.so")])
    with pytest.raises(UnsafeArchiveError, match="more than once"):
        safe_extract(archive, tmp_path / "out")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(512))
    with pytest.raises(UnsafeArchiveError, match="not a readable tar"):
        safe_extract(junk, tmp_path / "out")


def test_safe_extract_refuses_truncated_archive(variant_dir: Path, tmp_path: Path) -> None:
    whole = tmp_path / "a.tar.gz"
    pack_variant(variant_dir, whole)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UnsafeArchiveError, match="truncated or corrupt"):
        safe_extract(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()
