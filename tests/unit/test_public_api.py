"""Every public name of ``llama_runtime`` stays what it is documented to be, whatever the process
imported or used before (issue 15, point 7: once ``llama_runtime.download`` the module was
imported, ``llama_runtime.download(backend="cpu")`` raised "'module' object is not callable").

Each check runs in a fresh process: import order is process-wide state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llama_runtime
from release_fixtures import Release, run_source_py

ROOT = Path(__file__).resolve().parents[2]

# where each public name is defined; a name added to __all__ must be added here (and is then
# checked against every submodule: fetch/download.py and diagnostics/doctor.py share a name)
HOME = {"configure": "api", "download": "api", "download_best": "api", "load": "api",
        "doctor": "diagnostics.doctor", "Llama": "llama", "quantize": "quant", "__version__": "_version"}
NAMES = list(llama_runtime.__all__)

# imports every submodule (not __main__: it runs the CLI), touching every public name first or last
CHECK = """
import importlib, json, pkgutil, sys
import llama_runtime as l
name, first, home = sys.argv[1], sys.argv[2] == "first", json.loads(sys.argv[3])
def touch_all():
    for other in l.__all__:
        getattr(l, other)
if first:
    touch_all()
for info in pkgutil.walk_packages(l.__path__, "llama_runtime."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
touch_all()
from llama_runtime import *  # noqa
got = getattr(l, name)
want = getattr(sys.modules["llama_runtime." + home[name]], name)
star = globals()[name]
print(json.dumps({"same": got is want, "star": star is want, "type": type(got).__name__,
                  "callable": callable(got)}))
"""


def _check(name: str, order: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHECK, name, order, json.dumps(HOME)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_every_public_name_has_a_home() -> None:
    assert set(NAMES) == set(HOME)


@pytest.mark.parametrize("order", ["touched-first", "touched-last"])
@pytest.mark.parametrize("name", NAMES)
def test_public_name_survives_every_submodule_import(name: str, order: str) -> None:
    got = _check(name, "first" if order == "touched-first" else "last")
    assert got["same"] and got["star"], got
    if name != "__version__":
        assert got["callable"] and got["type"] != "module", got


def test_module_stays_importable_by_its_dotted_name() -> None:
    # what code inside the package and the benchmarks do: `from llama_runtime.fetch.download import fetch`
    code = ("import llama_runtime, llama_runtime.fetch.download, llama_runtime.diagnostics.doctor\n"
            "from llama_runtime.fetch.download import fetch\n"
            "from llama_runtime.diagnostics.doctor import doctor\n"
            "import sys\n"
            "m = sys.modules['llama_runtime.fetch.download']\n"
            "assert m.fetch is fetch and callable(llama_runtime.download)\n"
            "assert llama_runtime.doctor is doctor\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- really used, against the loopback release --------------------------------------------

# one real use of each public name; {model} and {out} are filled in
USES = {
    "configure": "l.configure(backend='cpu')",
    "download": "assert l.download(backend='cpu').is_dir()",
    "download_best": "assert l.download_best().is_dir()",
    "load": "assert l.load().native is not None",
    "doctor": "assert l.doctor()['selected']",
    "Llama": "assert l.Llama({model!r}, n_ctx=64, n_threads=1).generate('hello', 2, temperature=0) is not None",
    "quantize": "assert l.quantize({model!r}, {out!r}, 'Q8_0').path.is_file()",
    "__version__": "assert isinstance(l.__version__, str) and l.__version__",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_public_name_works_after_every_other_was_used(name: str, release: Release, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    assert set(USES) == set(NAMES)
    order = [n for n in NAMES if n != name] + [name]
    lines = [USES[n].format(model=str(tiny_model), out=str(tmp_path / f"q-{i}.gguf"))
             for i, n in enumerate(order)]
    code = "import llama_runtime as l\n" + "\n".join(
        f"print({n!r}, flush=True)\n{line}" for n, line in zip(order, lines))
    proc = run_source_py(release, release.env(tmp_path / "cache"), textwrap.dedent(code))
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr[-3000:]
    assert proc.stdout.split() == order
