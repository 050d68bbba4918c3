"""Run an external tool with a timeout; never raise. Shared by the probes that shell out."""

from __future__ import annotations

TOOL_TIMEOUT_S = 5.0


def run_tool(args: list[str], timeout: float = TOOL_TIMEOUT_S) -> tuple[str | None, str | None]:
    """``(stdout, None)`` or ``(None, why)``: a missing tool, a timeout or a crash is a reason."""
    import shutil

    exe = shutil.which(args[0])
    if exe is None:
        return None, f"{args[0]} is not installed"
    import subprocess  # lazily: most machines have none of the tools the probes look for

    try:
        proc = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{args[0]} did not answer within {timeout:g} s"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{args[0]} failed ({exc})"
    if proc.returncode != 0 and not proc.stdout.strip():
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return None, f"{args[0]} exited with status {proc.returncode} {tail}".strip()
    return proc.stdout, None
