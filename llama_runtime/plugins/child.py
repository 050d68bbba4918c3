"""The test run of a CPU plugin, in a child process: score, load, decode a quantized model.

Started by :mod:`.prove` with a JSON job on stdin. It prints one JSON line per step *before*
the step runs (``{"score": FILE}``, ``{"load": FILE}``, ``{"run": ...}``), flushed, so that when
an instruction kills the process (SIGILL, SIGSEGV) the parent knows which plugin and which step
did it; the last line is ``{"ok": true, "ids": [...]}`` or ``{"error": ..., "stage": ...}``.

The qualification of a build (:mod:`llama_runtime.qualify`) starts the same child with
``"plugin"`` (exactly that plugin, no ranking) and ``"models"`` (one ``{"run": FILE, "type": T}``
line, then a ``{"trace": T, ...}`` line with the greedy ids, runners-up and top-2 margins, per
model), or with ``"quantize"`` (the variant's own ``llama_model_quantize``, no plugin needed).

It scores each plugin the way ggml does (dlopen, ``ggml_backend_score()``), loads the best one
not excluded by ``skip`` with ``ggml_backend_load`` (no GPU plugin: the test is of the CPU
code), and greedily decodes a multi-token prompt and a few tokens on the proof model (Q4_0
weights, a Q8_0 output: batches of more than one row take the repacked / AMX tile kernels,
single tokens the vector ones).
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any


def _say(**line: Any) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def score(path: Path) -> int | None:
    """A plugin's own ``ggml_backend_score()``; None when it does not load or has none (ggml skips it)."""
    try:
        lib = ctypes.CDLL(str(path))  # never closed: ggml does the same scan, and keeps the winner
    except OSError:
        return None
    try:
        fn = lib.ggml_backend_score
    except AttributeError:
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return int(fn())


def _best(scores: dict[str, int | None], skip: set[str]) -> str | None:
    """ggml's choice: the highest score above 0 (ties by name); else a lone base plugin."""
    ok = [(s, f) for f, s in scores.items() if s and s > 0 and f not in skip]
    if ok:
        return min(ok, key=lambda x: (-x[0], x[1]))[1]
    if len(scores) == 1 and not set(scores) & skip:  # libggml-cpu.so of a single-CPU DL build
        return next(iter(scores))
    return None


def run(job: dict[str, Any]) -> int:
    from ..native.binding import Native

    folder = Path(job["folder"]) if job.get("folder") else None
    libraries = [Path(p) for p in job["libraries"]]
    try:  # a library that does not load is the variant's problem, not a plugin's: say so apart
        for path in libraries:
            ctypes.CDLL(str(path))
    except OSError as exc:
        _say(error=f"OSError: {exc}", stage="setup")
        return 3
    if job.get("quantize"):
        return _quantize(libraries, job)
    scores: dict[str, int | None] = {}
    chosen = job.get("plugin")
    if folder is not None and chosen is not None:  # qualification: this plugin and no other
        _say(score=chosen)
        scores[chosen] = score(folder / chosen)
        _say(scored=chosen, value=scores[chosen])
    elif folder is not None:
        for file in job["plugins"]:
            if file in job.get("no_touch", ()):
                continue
            _say(score=file)
            scores[file] = score(folder / file)
            _say(scored=file, value=scores[file])
        chosen = _best(scores, set(job.get("skip", ())))
        if chosen is None:
            _say(error="no CPU plugin left that scores above 0 here", stage="choose")
            return 3
    _say(load=chosen)
    try:
        scan = Path(job["backend_dir"]) if job.get("backend_dir") else None  # ggml's own scan
        native = Native.open(libraries, backend_dir=scan, cpu_plugin=folder / chosen if folder and chosen else None)
    except Exception as exc:  # a plugin ggml refuses: the parent tries the next one
        _say(error=f"{type(exc).__name__}: {exc}", stage="load", plugin=chosen)
        return 3
    try:
        ids = _decode(native, job, chosen)
    except Exception as exc:
        _say(error=f"{type(exc).__name__}: {exc}", stage="run", plugin=chosen)
        return 3
    _say(ok=True, plugin=chosen, ids=ids, features=native.cpu_features())
    return 0


def _decode(native: Any, job: dict[str, Any], chosen: str | None) -> list[int]:
    if "models" not in job:
        _say(run=chosen)
        return _greedy(native, job["model"], job)
    for kind, model in job["models"]:
        _say(run=chosen, type=kind)
        _say(trace=kind, **_trace(native, model, job, (job.get("force") or {}).get(kind)))
    return []


def _greedy(native: Any, model: str, job: dict[str, Any]) -> list[int]:
    from ..llama import Llama

    with Llama(model, native=native, n_ctx=64, n_batch=64, n_threads=int(job.get("n_threads", 2))) as llm:
        return list(llm.generate_tokens(list(job["prompt"]), max_tokens=int(job["n_gen"]), temperature=0))


def _trace(native: Any, model: str, job: dict[str, Any], force: list[int] | None = None) -> dict[str, list[Any]]:
    """Greedy decoding that also reports, per step, the runner-up and the top-2 logit margin
    (what the qualification's tolerance is judged on); argmax is what the greedy sampler picks.
    ``force``: decode these tokens instead of its own choices (the reference's text), so every
    step is judged in the same context as the reference's."""
    from ..llama import Llama

    out: dict[str, list[Any]] = {"ids": [], "second": [], "margin": [], "top": []}
    with Llama(model, native=native, n_ctx=64, n_batch=64, n_threads=int(job.get("n_threads", 2))) as llm:
        ctx = llm._live_context()
        ctx.eval_prompt(list(job["prompt"]))
        for step in range(int(job["n_gen"])):
            logits = native.llama_get_logits_ith(ctx.ctx, -1)[: llm.n_vocab]
            best = max(range(len(logits)), key=logits.__getitem__)  # the first of equal maxima
            second = max((i for i in range(len(logits)) if i != best), key=logits.__getitem__)
            for key, value in (("ids", best), ("second", second), ("top", logits[best]),
                               ("margin", logits[best] - logits[second])):
                out[key].append(value)
            if step + 1 < int(job["n_gen"]):
                ctx.decode([force[step] if force else best])
    return out


def _quantize(libraries: list[Path], job: dict[str, Any]) -> int:
    """Write each ``[type, path]`` of ``job["quantize"]`` from ``job["source"]``."""
    from ..native.binding import Native
    from ..quant import quantize

    try:
        native = Native.open(libraries)  # quantizing runs no backend code: no plugin is loaded
        for kind, dest in job["quantize"]:
            _say(quantize=kind)
            done = quantize(job["source"], dest, kind, n_threads=1, native=native)
            _say(quantized=kind, fallbacks=done.fallbacks, size=done.output_size)
    except Exception as exc:
        _say(error=f"{type(exc).__name__}: {exc}", stage="quantize")
        return 3
    _say(ok=True)
    return 0


def _quiet_crash_dialogs() -> None:
    # Windows would open an error-report dialog for the crash this process exists to risk
    if sys.platform == "win32":
        ctypes.windll.kernel32.SetErrorMode(0x0001 | 0x0002 | 0x8000)  # type: ignore[attr-defined,unused-ignore]


def main() -> None:
    _quiet_crash_dialogs()
    try:
        job = json.loads(sys.stdin.read())
    except ValueError as exc:
        _say(error=f"bad job: {exc}", stage="setup")
        raise SystemExit(2) from exc
    raise SystemExit(run(job))


if __name__ == "__main__":
    main()
