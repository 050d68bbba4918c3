"""olah (PyPI ``olah``, a self-hosted Hugging Face mirror) in offline mode, on 127.0.0.1, serving a
local git repository that holds a release's published files.

How olah 0.5.4 serves a local repository (read from its source, ``olah/server_mirror.py``,
``olah/mirror/repos.py``, ``olah/configs.py``):

- ``mirrors-path`` (a list, config file only; there is no CLI flag) holds git work trees at
  ``<mirrors>/<repo_type>/<org>/<name>``: ``<mirrors>/models/llama-runtime/binaries``.
- ``GET /<org>/<name>/resolve/<revision>/<file>`` reads the blob at ``<revision>`` (a branch, a
  tag or a commit sha, whatever ``git rev-parse`` accepts) with GitPython and streams it with no
  Content-Length and no Range support. Plain git blobs are served as they are; git-lfs is only
  needed for 120-150 byte pointer files (then it reads ``.git/lfs/objects``), so it is not used.
- offline mode is ``[accessibility] offline = true`` (config file only): no upstream is probed.
  A branch or tag it does not have: 401 ``X-Error-Code: RepoNotFound``; an unknown commit sha or a
  missing file at a known revision: 500 (GitPython raises inside the handler).
- host and port come from ``[basic]`` when ``--config`` is given (CLI flags are then ignored).

The olah virtual environment is built once (~25 s) under the dev cache and reused: olah pins
its own fastapi/pydantic/httpx versions, so it never shares an environment with the package.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts import devrelease

OLAH = "olah==0.5.4"
HOST = "127.0.0.1"

# olah in offline mode must not try to leave the machine: every non-loopback connect fails loudly
_LOOPBACK_ONLY = textwrap.dedent("""
    import ipaddress, socket
    _connect = socket.socket.connect
    def _loopback_only(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host != "localhost" and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise OSError(f"olah test guard: connect to {address!r} refused (offline mirror)")
        return _connect(self, address)
    socket.socket.connect = _loopback_only
""")


def olah_python() -> Path:
    """The python of a virtual environment with olah installed (built once, then reused)."""
    venv = devrelease.dev_cache() / "olah-venv"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{OLAH}"
    if stamp.is_file() and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", OLAH],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not install {OLAH} into {venv}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    stamp.write_text(OLAH + "\n")
    return python


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_git_repo(path: Path, files: dict[str, Path], tag: str | None = None) -> str:
    """A git repo at ``path`` on branch ``main`` with ``files`` (name -> source) in one commit;
    returns the commit sha."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "llama-runtime tests")
    git(path, "config", "user.email", "tests@llama-runtime.invalid")
    git(path, "config", "commit.gpgsign", "false")
    for name, src in files.items():
        shutil.copyfile(src, path / name)
    git(path, "add", "--", *files)
    git(path, "commit", "-q", "-m", "published release files")
    if tag:
        git(path, "tag", tag)
    return git(path, "rev-parse", "HEAD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class OlahServer:
    """``olah`` in offline mode over ``mirrors`` (a folder of ``models/<org>/<name>`` git repos)."""

    def __init__(self, mirrors: Path, work: Path) -> None:
        self.mirrors, self.work = mirrors, work
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / "olah.out"

    def config(self) -> Path:
        path = self.work / "olah.toml"
        path.write_text(textwrap.dedent(f"""\
            [basic]
            host = "{HOST}"
            port = {self.port}
            repos-path = "{self.work / 'repos'}"
            mirror-scheme = "http"
            mirror-netloc = "{HOST}:{self.port}"
            mirror-lfs-netloc = "{HOST}:{self.port}"
            mirrors-path = ["{self.mirrors}"]

            [accessibility]
            offline = true
            """))
        return path

    def start(self, timeout: float = 60.0) -> OlahServer:
        python = olah_python()
        self.work.mkdir(parents=True, exist_ok=True)
        guard = self.work / "guard"
        guard.mkdir(exist_ok=True)
        (guard / "sitecustomize.py").write_text(_LOOPBACK_ONLY)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLAMA_", "PYTHON"))}
        env.update(PYTHONPATH=str(guard), HF_HUB_OFFLINE="1", NO_PROXY="*")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(python), "-m", "olah.server", "--config", str(self.config()),
                                          "--log-path", str(self.work / "logs")],
                                         cwd=self.work, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}:\n{self.output()}")
            try:  # any HTTP answer means it listens (its index page is a 500: a starlette mismatch)
                urllib.request.urlopen(self.url + "/", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.url} within {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> OlahServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
