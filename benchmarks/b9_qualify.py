"""B9: the data behind the qualification's tolerance, and what a qualification costs (issue 14.3).

    .venv/bin/python -m benchmarks.b9_qualify [VARIANT_DIR ...]   # default: the dev variants

1. Calibration: the reference (the npm build's ``x64`` plugin) decodes the qualification model
   greedily in every type from 4 prompts; every plugin of every variant that runs here decodes the
   same text (teacher-forced). Printed per type: the largest top-2 margin difference at steps
   where the tokens agree, every disagreement (with the reference's margin there), and the
   reference's margin quantiles. llama_runtime/qualify/rule.py's EPSILON and DRIFT come from here.
2. Cost: each variant qualified into an empty store (cold: quantizing, native and qemu children)
   and again (warm: the store answers).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from scripts import devrelease  # noqa: E402
from llama_runtime.plugins.rank import cpu_plugins  # noqa: E402
from llama_runtime.plugins.trial import PROMPT, _run_child  # noqa: E402
from llama_runtime.qualify import check  # noqa: E402
from llama_runtime.qualify.run import N_THREADS, TYPES, Store, ensure_models  # noqa: E402
from llama_runtime.qualify.rule import N_GEN  # noqa: E402

PROMPTS = [list(PROMPT), [1, 263, 268, 272, 259, 280, 277, 264, 286, 270, 261, 283],
           [1, 260, 271, 276, 282, 265], [1, 287, 258, 40, 65, 279, 267, 273, 269, 278]]


def _job(folder: Path, meta: dict[str, Any], plugin: str | None, models: dict[str, Path], prompt: list[int],
         force: dict[str, list[int]] | None) -> dict[str, Any]:
    return {"libraries": [str(folder / n) for n in meta["libraries"]], "folder": str(folder) if plugin else None,
            "plugin": plugin, "plugins": [], "models": [[t, str(models[t])] for t in TYPES], "prompt": prompt,
            "n_gen": N_GEN, "n_threads": N_THREADS, "force": force}


def calibrate(folders: list[Path], store: Store) -> None:
    ref_folder = next(f for f in folders if check.X64 in json.loads((f / "variant.json").read_text())["plugins"])
    ref_meta, ref_build = check.read_build(ref_folder)
    models, problem = ensure_models(ref_build, store, check._child)
    assert problem is None, problem
    noise: dict[str, tuple[float, str]] = defaultdict(lambda: (0.0, ""))
    margins: dict[str, list[float]] = defaultdict(list)
    flips = []
    for k, prompt in enumerate(PROMPTS):
        ref = _run_child(_job(ref_folder, ref_meta, check.X64, models, prompt, None), (), 600).traces
        force = {t: tr["ids"] for t, tr in ref.items()}
        for t, tr in ref.items():
            margins[t] += tr["margin"]
        for folder in folders:
            meta = json.loads((folder / "variant.json").read_text())
            for plugin in cpu_plugins(meta["plugins"], "linux") if meta["backend_dl"] else [None]:
                out = _run_child(_job(folder, meta, plugin, models, prompt, force), (), 600)
                for t, tr in out.traces.items():
                    for i, (a, b) in enumerate(zip(ref[t]["ids"], tr["ids"])):
                        if a != b:
                            flips.append(f"p{k} {folder.name}/{plugin} {t} step {i}: ref {a} (runner-up "
                                         f"{ref[t]['second'][i]}, margin {ref[t]['margin'][i]:.3f}) got {b}")
                        elif (d := abs(ref[t]["margin"][i] - tr["margin"][i])) > noise[t][0]:
                            noise[t] = (d, f"p{k} {folder.name}/{plugin} step {i}")
    print(f"calibration: {len(PROMPTS)} prompts x {N_GEN} tokens; reference {ref_folder.name}/{check.X64}")
    for t in TYPES:
        s = sorted(margins[t])
        print(f"  {t:7} max |d margin| {noise[t][0]:.4f} ({noise[t][1]}); reference margin p5 {s[len(s) // 20]:.3f}"
              f" p25 {s[len(s) // 4]:.3f} median {s[len(s) // 2]:.3f}")
    print(f"  {len(flips)} disagreement(s):", *flips, sep="\n    ")


def cost(folders: list[Path]) -> None:
    donor = next(check.read_build(f)[1] for f in folders
                 if check.X64 in json.loads((f / "variant.json").read_text())["plugins"])
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        for label in ("cold", "warm"):
            for folder in folders:
                start = time.monotonic()
                rec = check.qualify_folder(folder, store, sibling=donor)
                runs = sum(len(e["runs"]) for e in rec["plugins"].values())
                print(f"  {label} {folder.name:24} {rec['status']:10} {runs:3} runs {time.monotonic() - start:6.1f} s")


def main(argv: list[str]) -> int:
    folders = [Path(a) for a in argv] or sorted((devrelease.dev_cache() / "variants").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        calibrate(folders, Store(Path(tmp)))
    print("cost per variant, as build_variants and publish run it (an empty store, then the same store):")
    cost(folders)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
