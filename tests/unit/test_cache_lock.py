"""The cache's inter-process lock (cache.held, the filelock package): waits, times out with a
clear message, says when the lock file cannot be made, and stays off the import and load path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llama_runtime.fetch.cache import held
from llama_runtime.errors import CacheError

HOLDER = textwrap.dedent("""
    import sys, time
    from llama_runtime.fetch.cache import held
    with held(__import__("pathlib").Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold_in_another_process(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_by_another_process_times_out_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / ".linux-x86_64-cpu.lock"
    proc = _hold_in_another_process(path, 30)
    try:
        start = time.monotonic()
        with pytest.raises(CacheError, match=rf"waited 1 s for {path}; another process holds it\."):
            with held(path, timeout=1):
                pass
        assert 0.9 < time.monotonic() - start < 10
    finally:
        proc.kill()
        proc.wait()
    with held(path, timeout=5):  # released when its holder died
        pass


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / ".v.lock"
    proc = _hold_in_another_process(path, 1)
    try:
        with held(path, timeout=30):
            assert proc.wait(timeout=30) == 0  # we got in only after it exited
    finally:
        proc.kill()


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    path, inside, most = tmp_path / ".t.lock", [0], [0]
    guard = threading.Lock()

    def work() -> None:
        with held(path, timeout=30):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_a_lock_file_that_cannot_be_created_is_a_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(CacheError, match="cannot create the lock file .*LLAMA_RUNTIME_CACHE"):
        with held(blocker / ".v.lock", timeout=1):
            pass


def test_filelock_is_imported_only_when_a_lock_is_taken() -> None:
    code = ("import sys, llama_runtime, llama_runtime.runtime.loader, llama_runtime.fetch.cache, llama_runtime.fetch.ensure;"
            " print('filelock' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_build_without_filelock_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "filelock", None)  # what `import filelock` meets when it is absent
    with pytest.raises(CacheError, match="pip install hatchling archspec filelock"):
        with held(tmp_path / ".v.lock", timeout=1):
            pass
    assert not (tmp_path / ".v.lock").exists()  # nothing was made before the refusal
