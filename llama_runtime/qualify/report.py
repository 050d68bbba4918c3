"""The words of a qualification: a child's failure, the refusal lines, the record's summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUALIFIED, REFUSED, NOT_HERE = "qualified", "refused", "not qualified here"


def _stage(stage: str | None, model_type: str | None) -> str:
    # "while decoding": the type is said by the caller, which groups the types a plugin failed alike
    return {"score": "when dlopened to be scored", "load": "when loaded",
            "run": "while decoding", "quantize": f"while quantizing to {model_type}",
            "choose": "while choosing a plugin"}.get(stage or "", "while starting")


def failure_facts(out: Any) -> dict[str, Any]:
    """What a child's :class:`~llama_runtime.plugins.trial.Outcome` that is not ok found (kept in
    the cache; the words are made from it each time, so rewording needs no new cache)."""
    return {"crash": out.crash, "error": out.error, "stage": out.stage, "type": out.model_type}


def describe_failure(facts: Mapping[str, Any]) -> str:
    where = _stage(facts.get("stage"), facts.get("type"))
    if facts.get("crash"):
        return f"crashed with {facts['crash']} {where}"
    return f"failed {where}: {facts.get('error')}"


def refusals(variant: str, plugins: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per failure: the variant, the plugin, where it ran, the type, and what happened."""
    lines = []
    for file, entry in sorted(plugins.items()):
        for where, run in sorted((entry.get("runs") or {}).items()):
            head = f"{variant}: {'its CPU backend' if file == variant else f'CPU plugin {file}'} ({where})"
            if run.get("setup"):
                lines.append(f"{head} {run['setup']}")
                continue
            alike: dict[str, list[str]] = {}
            for kind, why in (run.get("failed") or {}).items():
                alike.setdefault(str(why), []).append(kind)
            lines += [f"{head} on the {', '.join(kinds)} model{'s' if len(kinds) > 1 else ''}: {why}"
                      for why, kinds in alike.items()]
    return lines


def plugin_status(entry: Mapping[str, Any]) -> str:
    runs = entry.get("runs") or {}
    if not runs:
        return NOT_HERE
    ok = all(not r.get("setup") and not r.get("failed") for r in runs.values())
    return QUALIFIED if ok else REFUSED


def summary(record: Mapping[str, Any] | None) -> str:
    """One paragraph for doctor: what was qualified, where, and what was not (and why)."""
    if not record:
        return "not qualified (the release predates qualification, or its record was not kept)"
    status = record.get("status")
    if status == NOT_HERE and not record.get("plugins"):
        return f"not qualified here: {record.get('why')} (on {record.get('machine')})"
    plugins = record.get("plugins") or {}
    done = sorted(f for f, e in plugins.items() if e.get("status") == QUALIFIED)
    missing = {f: e.get("why") for f, e in plugins.items() if e.get("status") == NOT_HERE}
    text = (f"{status} on {record.get('machine')}: {len(done)} of"
            f" {len(plugins)} CPU code(s) ran every type ({', '.join(record.get('types') or [])})"
            f" against {record.get('reference')}")
    places = sorted({w for e in plugins.values() for w in e.get("runs") or {}})
    if places:
        text += f"; where: {', '.join(places)}"
    if missing:
        text += "; not qualified here: " + "; ".join(f"{f} ({why})" for f, why in sorted(missing.items()))
    if record.get("failures"):
        text += "; refused: " + "; ".join(record["failures"])
    return text
