"""The test runs themselves (first load of a variant on a CPU only): child after child, each reported.

Kept apart from :mod:`.prove` so that the every-load path (read the record) imports none of
``subprocess``, ``signal`` or the ranking.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rank import PluginRanking, cpu_plugins, rank

if TYPE_CHECKING:
    from ..variants import Variant

PROOF_MODEL = Path(__file__).parent / "proof-q4_0.gguf"
PROMPT = (1, 259, 270, 281, 262, 275, 266, 284)  # 8 tokens: a batch of 8 rows takes the tile kernels
N_GEN = 4
TIMEOUT_S = 120.0
_STAGES = {"score": "when dlopened to be scored", "load": "when initialised",
           "run": "while decoding a quantized model", None: "while starting"}
# Windows reports a crash as the NTSTATUS exit code
_NTSTATUS = {0xC000001D: "STATUS_ILLEGAL_INSTRUCTION (SIGILL)", 0xC0000005: "STATUS_ACCESS_VIOLATION (SIGSEGV)",
             0xC0000096: "STATUS_PRIVILEGED_INSTRUCTION", 0xC0000409: "STATUS_STACK_BUFFER_OVERRUN (abort)"}


@dataclass
class Outcome:
    """One child run."""

    ok: bool
    stage: str | None = None
    plugin: str | None = None
    crash: str | None = None  # the signal (or status) that killed it
    error: str | None = None  # an error it reported itself
    scores: dict[str, int | None] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    model_type: str | None = None  # the model it was running (qualification: one per quant type)
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> ids, second, margin, top
    timed_out: bool = False


def crash_name(returncode: int) -> str | None:
    """``-4`` -> ``SIGILL``; a Windows NTSTATUS; None for an ordinary exit status."""
    if -256 < returncode < 0:  # POSIX: killed by a signal (a large negative is a signed NTSTATUS)
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    code = returncode & 0xFFFFFFFF
    if code >= 0xC0000000:
        return _NTSTATUS.get(code, f"status {code:#x}")
    return None


def parse_child(stdout: str, returncode: int, stderr: str = "") -> Outcome:
    """The child's JSON lines and exit status -> what happened (pure)."""
    out, status = Outcome(ok=False), 0
    for line in stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a plugin may print to stdout
        if not isinstance(item, dict):
            continue
        for stage in ("score", "load", "run"):
            if stage in item:
                out.stage, out.plugin, out.model_type = stage, item[stage], item.get("type")
        if "quantize" in item:  # the variant's quantizer, no plugin involved
            out.stage, out.model_type = "quantize", item["quantize"]
        if "trace" in item:
            out.traces[str(item.pop("trace"))] = item
        if "scored" in item:
            out.scores[item["scored"]] = item.get("value")
        if item.get("ok"):
            out.ok, out.ids = True, list(item.get("ids") or [])
        if "error" in item:
            out.error, out.stage = str(item["error"]), item.get("stage", out.stage)
            out.plugin = item.get("plugin", out.plugin)
        if "ntstatus" in item:  # a Windows child under Wine says its crash (Linux keeps 8 bits of the status)
            status = int(item["ntstatus"])
    out.crash = crash_name(returncode) or (crash_name(status) if status else None)
    if returncode != 0 and out.crash is None and out.error is None:
        tail = (stderr.strip().splitlines() or [""])[-1]
        out.error, out.stage = f"the test process exited with status {returncode}: {tail}", "setup"
    out.ok = out.ok and returncode == 0
    return out


def _run_child(job: dict[str, Any], prefix: Sequence[str] = (), timeout: float = TIMEOUT_S) -> Outcome:
    """One child; ``prefix`` runs it under an emulator (``qemu-x86_64 -cpu Haswell``)."""
    root = Path(__file__).resolve().parent.parent.parent  # the folder that holds llama_runtime
    code = "import sys; sys.path.insert(0, sys.argv[1]); from llama_runtime.plugins.child import main; main()"
    return run_process([*prefix, sys.executable, "-c", code, str(root)], json.dumps(job), timeout)


def run_process(cmd: Sequence[str], job_text: str, timeout: float, env: Mapping[str, str] | None = None,
                what: str = "the test process") -> Outcome:
    """Run one child (the Python child, or the C driver under qemu/Wine) on ``job_text`` and read
    its JSON lines; a child that hangs is killed and says how far it got."""
    try:
        proc = subprocess.run(list(cmd), input=job_text, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(env), check=False)
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        out = parse_child(text, 0)
        out.ok, out.crash, out.timed_out = False, f"no answer within {timeout:g} s (killed)", True
        return out
    except OSError as exc:
        return Outcome(ok=False, stage="setup", error=f"{what} could not start: {exc}")
    return parse_child(proc.stdout, proc.returncode, proc.stderr)


def _job(v: Variant, folder: Path, plugins: list[str], skip: set[str], no_touch: set[str]) -> dict[str, Any]:
    return {"libraries": [str(folder / n) for n in v.libraries], "folder": str(folder) if plugins else None,
            "plugins": plugins, "skip": sorted(skip), "no_touch": sorted(no_touch), "model": str(PROOF_MODEL),
            "prompt": list(PROMPT), "n_gen": N_GEN, "n_threads": 2}


def _why(out: Outcome) -> str:
    if out.crash:
        return f"crashed with {out.crash} {_STAGES.get(out.stage, out.stage)}"
    return f"failed {_STAGES.get(out.stage, out.stage)}: {out.error}"


def os_skips(ranking: PluginRanking) -> dict[str, str]:
    """Plugins the OS keeps from running (a disabled register state), with the reason."""
    return {c.file: "; ".join(r for r in c.reasons if r.startswith("needs a state"))
            for c in ranking.candidates if any(r.startswith("needs a state") for r in c.reasons)}


def run_proofs(v: Variant, folder: Path, cpu: Mapping[str, Any], os_name: str) -> tuple[Outcome, dict[str, Any]]:
    """Child after child until a plugin runs the proof model, or none is left. Returns the
    last outcome and the facts for the record (scores, failures, OS skips)."""
    plugins = cpu_plugins(v.plugins, os_name) if v.backend_dl else []
    skipped = os_skips(rank(plugins, cpu, os_name))
    failed: dict[str, str] = {}
    no_touch: set[str] = set()
    scores: dict[str, int | None] = {}
    out = Outcome(ok=False)
    for _ in range(len(plugins) + 1):
        out = _run_child(_job(v, folder, plugins, set(skipped) | set(failed), no_touch))
        scores.update(out.scores)
        if out.ok or not plugins or out.plugin is None or out.stage not in ("score", "load", "run"):
            break  # done, or a failure no plugin can be blamed for (decide() words it)
        failed[out.plugin] = _why(out)
        if out.stage == "score":  # ggml's own scan would dlopen it too
            no_touch.add(out.plugin)
    return out, {"scores": scores, "failed": failed, "os_skipped": skipped, "no_touch": sorted(no_touch)}


def decide(v: Variant, out: Outcome, facts: dict[str, Any], cpu: Mapping[str, Any], os_name: str) -> dict[str, Any]:
    plugins = cpu_plugins(v.plugins, os_name) if v.backend_dl else []
    ranking = rank(plugins, cpu, os_name, scores=facts["scores"], failed=facts["failed"])
    pick = ranking.ggml_pick if plugins else None
    if not out.ok:
        mode = "refused" if (facts["failed"] or out.crash) else "unproven"
    elif not plugins:
        mode = "builtin"
    else:
        mode = "default" if out.plugin == pick and not facts["no_touch"] else "explicit"
    if out.crash and not out.ok and (out.plugin is None or out.plugin not in facts["failed"]):
        # died before any plugin ran (a library's own code), or the variant has none: its fault
        facts["failed"] = {**facts["failed"], (out.plugin or v.name): _why(out)}
    if mode == "unproven" and out.error:
        facts["error"] = out.error
    return {**facts, "mode": mode, "chosen": out.plugin if out.ok else None, "ggml_pick": pick,
            "ids": out.ids, "ranking": ranking.to_dict()}


