"""The ``llama-runtime`` command (also ``python -m llama_runtime``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LlamaRuntimeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-runtime", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="the machine, every candidate variant, the choice, the library")
    d.add_argument("--json", action="store_true")
    d.add_argument("--target", help="judge for another machine: a variant name or a `doctor --json` file")

    f = sub.add_parser("fetch", help="download (or find in the cache) and verify a variant")
    which = f.add_mutually_exclusive_group()
    which.add_argument("--variant")
    which.add_argument("--backend")
    which.add_argument("--best", action="store_true")
    f.add_argument("--version")
    for opt in ("--cache-dir", "--endpoint", "--proxy", "--timeout"):
        f.add_argument(opt)
    f.add_argument("--offline", action="store_true")
    f.add_argument("--dest", type=Path, help="write a mirror folder (for LLAMA_RUNTIME_MIRROR) here")

    c = sub.add_parser("cache", help="inspect, re-hash, clean the versioned cache")
    c.add_argument("action", choices=("list", "verify", "prune"))
    c.add_argument("--keep-current", action="store_true")

    g = sub.add_parser("generate", help="generate text from MODEL (a path or REPO_ID:FILE.gguf)")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("-n", type=int, default=64, dest="max_tokens")
    g.add_argument("--temp", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="end generation at this text (repeatable)")
    g.add_argument("--seed", type=int)

    from .quant import type_names  # plain data: cheap to import

    q = sub.add_parser("quantize", help="write a quantized copy of a GGUF model (llama.cpp's "
                       "llama_model_quantize)", epilog=f"TYPE: {type_names()}")
    q.add_argument("input", type=Path, help="the GGUF model to read (F32/F16/BF16 is best)")
    q.add_argument("output", type=Path, help="the GGUF file to write (replaced only on success)")
    q.add_argument("type", metavar="TYPE", help="e.g. Q4_K_M, Q8_0, IQ4_NL (see below)")
    q.add_argument("--threads", type=int, help="default: the usable CPUs, at most 4")
    q.add_argument("--allow-requantize", action="store_true",
                   help="accept an input that is already quantized (loses quality)")

    u = sub.add_parser("publish", help="pack variant folders, upload them to a hub, write the lock")
    u.add_argument("src", type=Path)
    u.add_argument("--repo", required=True)
    u.add_argument("--revision", required=True)
    u.add_argument("--endpoint")
    u.add_argument("--lock", type=Path)
    return p


def _settings(args: argparse.Namespace) -> Any:
    """The settings in force, with this command's flags over everything else."""
    from .config import current_settings

    given = {k: getattr(args, k, None) for k in ("cache_dir", "endpoint", "proxy", "timeout")}
    if getattr(args, "offline", False):
        given["offline"] = True
    return current_settings(**{k: v for k, v in given.items() if v is not None})


def cmd_doctor(args: argparse.Namespace) -> int:
    from .diagnostics.doctor import doctor
    from .diagnostics.report import format_doctor

    result = doctor(args.target, settings=_settings(args))
    print(json.dumps(result, indent=2) if args.json else format_doctor(result))
    return 1 if result.get("error") else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .api import download
    from .fetch.mirror import write_mirror

    settings = _settings(args)
    if args.dest is not None:
        for path in write_mirror(args.dest, settings, variant=args.variant, backend=args.backend):
            print(path)
        return 0
    print(download(args.variant, args.version, backend=args.backend, settings=settings))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .fetch import cache

    settings = _settings(args)
    if args.action == "prune":
        for path in cache.prune(settings.cache_dir, keep_current=args.keep_current):
            print(f"removed {path}")
        return 0
    bad = 0
    for entry in cache.entries(settings.cache_dir):
        current = " (current)" if entry["current"] else ""
        if args.action == "list":
            state = "complete" if entry["record"] else "incomplete"
            print(f"{entry['version']}/{entry['variant']}{current}\t{state}\t{entry['path']}")
            continue
        problems = cache.verify_entry(Path(entry["path"]))
        bad += bool(problems)
        print(f"{entry['version']}/{entry['variant']}: {'; '.join(problems) or 'ok'}")
    if bad:
        print(f"{bad} cached variant(s) failed verification; `llama-runtime cache prune` removes them"
              " and the next load fetches them again.", file=sys.stderr)
    return 1 if bad else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .llama import Llama
    from .fetch.models import resolve_model

    with Llama(resolve_model(args.model, _settings(args))) as llm:
        for piece in llm.stream(args.prompt, args.max_tokens, temperature=args.temp, top_k=args.top_k,
                                top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                                stop=args.stop, seed=args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quant import quantize

    done = quantize(args.input, args.output, args.type, n_threads=args.threads,
                    allow_requantize=args.allow_requantize)
    print(f"wrote {done.path}: {done.quant_type}, {done.output_size / 2**20:.2f} MiB from "
          f"{done.input_size / 2**20:.2f} MiB in {done.seconds:.2f} s")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .release.publish import publish
    from .variants.manifest import package_lock_path

    settings = _settings(args)
    lock = publish(args.src, repo=args.repo, revision=args.revision, endpoint=settings.endpoint,
                   lock_path=args.lock or package_lock_path(), token=settings.token,
                   qualify_cache=settings.cache_dir)
    print(f"published {len(lock['manifest']['variants'])} variants to {args.repo}@{args.revision}"
          f" (commit {lock['commit']}); lock written to {args.lock or package_lock_path()}")
    return 0


COMMANDS = {"doctor": cmd_doctor, "fetch": cmd_fetch, "cache": cmd_cache,
            "generate": cmd_generate, "quantize": cmd_quantize, "publish": cmd_publish}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="llama-runtime: %(levelname)s: %(message)s")
    if not args.verbose:  # llama.cpp's own chatter stays quiet unless asked for
        logging.getLogger("llama_runtime.native").setLevel(logging.ERROR)
    try:
        return COMMANDS[args.command](args)
    except LlamaRuntimeError as exc:
        if args.verbose:
            raise
        print(f"llama-runtime: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
