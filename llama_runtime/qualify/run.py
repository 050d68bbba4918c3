"""Run the children of a qualification, and remember what they found (keyed by file hashes).

Each child is :mod:`llama_runtime.plugins.child` (the same process the loader's proof starts,
through :func:`llama_runtime.plugins.trial._run_child`): one for the variant's own quantizer, one
per CPU plugin and place (natively, or under ``qemu-x86_64 -cpu MODEL``) decoding every
quantization type in turn. A child that dies on one type is started again for the types after it,
so the record says which types crash and which do not.

The store (``<cache>/<version>/.qualify/``) keeps the quantized models (by the sha256 of the
libraries that made them) and every child's answer (by the sha256 of everything it read: the
libraries, the plugin, the models, the job, and the CPU or the qemu model it ran on), so a second
qualification of the same files takes about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .where import NATIVE, Run

RECIPE = 2  # bump when what a child is asked, or how an answer is read, changes
TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_1", "Q4_0", "IQ4_NL")
N_THREADS = 1  # OpenMP's spinning barriers on a busy 2-core machine cost 15x; the kernels are the same
NATIVE_TIMEOUT_S, QEMU_TIMEOUT_S = 120.0, 600.0


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from ..fetch.hashing import sha256_file

    return sha256_file(path)


def file_sha256(path: Path) -> str:
    st = path.stat()  # keyed by size and mtime too: a rebuilt file is hashed again
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([RECIPE, *parts], sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Store:
    root: Path

    @classmethod
    def in_cache(cls, cache_dir: Path) -> Store:
        """``<cache>/<version>/.qualify/``: beside the proof records, pruned with them."""
        from .._version import __version__

        return cls(Path(cache_dir) / __version__ / ".qualify")

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.root / "runs" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def put(self, key: str, data: Mapping[str, Any]) -> None:
        folder = self.root / "runs"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, folder / f"{key}.json")
        except OSError:
            pass  # a read-only cache qualifies again next time; nothing is wrong with the result


@dataclass(frozen=True)
class Build:
    """The files of one variant folder a child loads."""

    name: str
    folder: Path
    libraries: tuple[str, ...]
    backend_dl: bool

    def lib_hashes(self) -> list[str]:
        return [file_sha256(self.folder / n) for n in self.libraries]


@dataclass
class Answer:
    """What the children of one run found: per type a trace, or a failure in words."""

    traces: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> report.failure_facts
    setup: dict[str, Any] | None = None  # a failure before any model ran (scoring, loading): the whole run
    score: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"traces": self.traces, "failed": self.failed, "setup": self.setup, "score": self.score,
                "seconds": round(self.seconds, 2)}


def ensure_models(build: Build, store: Store, run_child: Any) -> tuple[dict[str, Path], str | None]:
    """The qualification model in every type, quantized by ``build``'s own libraries (cached);
    or why its quantizer failed (its libraries do not load here, say)."""
    from .model import RECIPE as MODEL_RECIPE
    from .model import write_base_model

    folder = store.root / "models" / _key(MODEL_RECIPE, TYPES, build.lib_hashes())
    paths = {t: folder / f"{t}.gguf" for t in TYPES}
    if all(p.is_file() for p in paths.values()):
        return paths, None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        base = write_base_model(tmp / "F32.gguf")
        job = {"libraries": [str(build.folder / n) for n in build.libraries], "source": str(base),
               "quantize": [[t, str(tmp / f"{t}.gguf")] for t in TYPES]}
        out = run_child(job, (), NATIVE_TIMEOUT_S)
        if not out.ok:
            from .report import describe_failure, failure_facts

            return {}, f"its own llama_model_quantize {describe_failure(failure_facts(out))}"
        base.unlink()
        if folder.exists():  # another process finished first: theirs is as good
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths, None


def place_key(run: Run, host: str, qemu_version: str | None) -> str:
    """What decides a run's outcome besides the files: this CPU natively, else qemu and its model."""
    return f"native:{host}" if run.where == NATIVE else f"{run.where} ({qemu_version})"


def run_plugin(build: Build, run: Run, models: Mapping[str, Path], *, force: Mapping[str, Sequence[int]] | None,
               place: str, store: Store, run_child: Any, scan: bool = False) -> Answer:
    """Every type of ``models`` through one plugin at one place (children until all ran)."""
    from ..plugins.trial import PROMPT

    plugin_sha = file_sha256(build.folder / run.plugin) if run.plugin else None
    key = _key(place, build.lib_hashes(), plugin_sha, {t: file_sha256(p) for t, p in models.items()},
               list(PROMPT), _n_gen(), N_THREADS, force or {}, scan)
    cached = store.get(key)
    if cached is not None:
        return Answer(**{k: cached[k] for k in ("traces", "failed", "setup", "score")})
    job: dict[str, Any] = {"libraries": [str(build.folder / n) for n in build.libraries],
                           "folder": str(build.folder) if run.plugin else None, "plugin": run.plugin,
                           "plugins": [], "backend_dir": str(build.folder) if scan else None,
                           "prompt": list(PROMPT), "n_gen": _n_gen(), "n_threads": N_THREADS,
                           "force": dict(force or {})}
    answer, timed_out = _children(job, run, models, run_child)
    if not timed_out:  # a timeout on a busy machine says nothing about the files
        store.put(key, answer.to_dict())
    return answer


def _children(job: dict[str, Any], run: Run, models: Mapping[str, Path], run_child: Any) -> tuple[Answer, bool]:
    from .report import failure_facts

    answer, start, left = Answer(), time.monotonic(), list(models)
    timeout = NATIVE_TIMEOUT_S if run.where == NATIVE else QEMU_TIMEOUT_S
    timed_out = False
    while left:
        out = run_child({**job, "models": [[t, str(models[t])] for t in left]}, run.prefix, timeout)
        answer.traces.update(out.traces)
        answer.score = out.scores.get(run.plugin or "", answer.score)
        timed_out = timed_out or out.timed_out
        if out.ok:
            break
        if out.stage == "run" and out.model_type in left:  # this type failed: go on with the rest
            answer.failed[out.model_type] = failure_facts(out)
            left = left[left.index(out.model_type) + 1:]
            continue
        answer.setup = failure_facts(out)  # scoring or loading failed: no type can run
        break
    answer.seconds = time.monotonic() - start
    return answer, timed_out


def _n_gen() -> int:
    from .rule import N_GEN

    return N_GEN
