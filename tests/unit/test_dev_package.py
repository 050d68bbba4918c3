"""scripts/ and benchmarks/: development packages, imported from the repository root, never shipped;
the release matrix of ``build_variants --all-default`` and the README's table of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from scripts import build_variants, matrix, windows_build

REPO = Path(__file__).resolve().parents[2]
# the two sys.path edits left, and why: gpu_check's `run` half imports the package it staged on
# the GPU machine; qualify_variants.py is being reworked on another branch (qemu/Wine qualification)
ALLOWED_PATH_EDITS = {"scripts/gpu_check.py", "scripts/qualify_variants.py"}


def _readme_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- matrix-table:", 1)[1].split("<!-- /matrix-table -->", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| OS ")]
    return rows


def test_the_readme_table_is_the_matrix() -> None:
    rows = _readme_rows()
    names = [re.match(r"`([\w.-]+)`", r[3]) for r in rows]
    assert all(names), rows
    assert [n[1] for n in names if n] == [c.variant for c in matrix.MATRIX]
    for row, cell in zip(rows, matrix.MATRIX):
        assert row[0].split(" ")[0].lower() == cell.os, row
        assert row[1] == cell.arch, row
        assert row[2].replace(" ", "").lower() == cell.backend, row
        assert all(part in row[4] for part in re.findall(r"[\w.-]+@[\d.]+|[\w-]+", cell.dev)
                   if cell.kind != "npm"), row


def test_every_cell_names_a_real_job_that_makes_its_variant() -> None:
    flavors = set(build_variants.all_flavors())
    for cell in matrix.MATRIX:
        for what in {cell.dev, cell.full}:
            if cell.kind == "source":
                assert what in flavors, cell
                spec = build_variants.FLAVORS.get(what) or build_variants.cross_builds.CROSS_FLAVORS[what]
                assert spec.name == cell.variant, (what, spec.name)
            elif cell.kind == "windows":
                assert windows_build.WINDOWS_FLAVORS[what].name == cell.variant, what
            else:
                assert re.fullmatch(r"@node-llama-cpp/[\w-]+@\d+\.\d+\.\d+", what), what
    assert len({c.variant for c in matrix.MATRIX}) == len(matrix.MATRIX)
    assert {(c.os, c.backend) for c in matrix.MATRIX} >= {
        ("linux", "cpu"), ("linux", "vulkan"), ("linux", "cuda12"), ("linux", "cuda13"),
        ("windows", "cpu"), ("windows", "vulkan"), ("macos", "metal"), ("macos", "cpu")}
    # the release cuts the CUDA builds into one-target copies; --all-default does too
    assert matrix.cuda_target_variants() == {"linux-x86_64-cuda12", "linux-x86_64-cuda13"}


def test_scripts_import_from_the_root_without_path_edits() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys; before = list(sys.path); from scripts import build_variants, demo, devrelease;"
            " from benchmarks import run; assert sys.path == before, 'sys.path edited'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    help_ = subprocess.run([sys.executable, "-m", "scripts.build_variants", "--help"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--all-default" in help_.stdout, help_.stderr[-2000:]
    edits = sorted(str(p.relative_to(REPO)) for base in ("scripts", "benchmarks")
                   for p in (REPO / base).rglob("*.py")
                   if re.search(r"^\s*sys\.path(\.insert|\[)", p.read_text(), re.M))
    # benchmarks that import tests/'s fixture module (tests/ is no package) keep that one folder
    assert set(edits) - ALLOWED_PATH_EDITS <= {"benchmarks/b_binding_overhead.py",
                                              "benchmarks/b_windows_wine.py",
                                              "benchmarks/b_vocab_only.py"}, edits


@pytest.mark.slow
def test_sdist_and_wheel_of_the_checkout_ship_no_development_package(tmp_path: Path) -> None:
    tree = tmp_path / "clone"
    tree.mkdir()
    keep = ("llama_runtime", "hatch_llama", "scripts", "benchmarks", "tests", "pyproject.toml",
            "README.md")
    ignore = shutil.ignore_patterns("__pycache__", "_libs", "binaries.lock.json", "data")
    for item in keep:
        src = REPO / item
        (shutil.copytree(src, tree / item, ignore=ignore) if src.is_dir()
         else shutil.copy2(src, tree / item))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")},
           "LLAMA_RUNTIME_SKIP_DOWNLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation",
                           "--outdir", str(tmp_path / "dist"), str(tree)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz"))) as tf:
        top = {n.split("/")[1] for n in tf.getnames() if n.count("/") >= 1}
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))) as zf:
        wheel_top = {n.split("/")[0] for n in zf.namelist()}
    assert "llama_runtime" in top and "llama_runtime" in wheel_top
    for dev in ("scripts", "benchmarks", "tests"):
        assert dev not in top and dev not in wheel_top, (top, wheel_top)


def test_a_job_is_current_only_while_its_inputs_code_and_files_hold(tmp_path: Path) -> None:
    from scripts import uptodate

    out, tarball = tmp_path / "out", tmp_path / "pkg.tgz"
    tarball.write_bytes(b"one")
    folder = out / "linux-x86_64-cpu"
    folder.mkdir(parents=True)
    (folder / "variant.json").write_text("{}")
    (folder / "libllama.so").write_bytes(b"\x7fELF")
    key = uptodate.job_key("npm", "@x/y@1.0.0", [tarball])
    assert uptodate.current(out, "npm", "@x/y@1.0.0", key) is None  # never made
    uptodate.remember(out, "npm", "@x/y@1.0.0", key, [folder])
    assert uptodate.current(out, "npm", "@x/y@1.0.0", key) == [folder]
    (folder / "variant.json").write_text('{"qualification": {}}')  # written after: still current
    assert uptodate.current(out, "npm", "@x/y@1.0.0", key) == [folder]
    assert uptodate.current(out, "npm", "@x/y@2.0.0", key) is None  # another job
    tarball.write_bytes(b"two, longer")  # a new tarball: another key
    assert uptodate.job_key("npm", "@x/y@1.0.0", [tarball]) != key
    (folder / "libllama.so").write_bytes(b"\x7fELF changed")  # a file changed under it
    assert uptodate.current(out, "npm", "@x/y@1.0.0", key) is None
