"""A small Hugging Face-protocol hub on 127.0.0.1, for tests and the demo (stdlib only).

Just enough of the Hub's HTTP protocol for the real ``huggingface_hub`` 2.4 client (model repos,
``owner/name`` ids only):

  POST   /api/repos/create                       create_repo (409, with "url", when it exists)
  GET    /api/models/{repo}[/revision/{rev}]     model_info / repo_info (siblings with lfs info)
  GET    /api/models/{repo}/tree/{rev}[/{dir}]   list_repo_tree / list_repo_files (?recursive=)
  GET    /api/models/{repo}/refs                 list_repo_refs
  POST   /api/models/{repo}/preupload/{branch}   upload modes: always "regular"
  POST   /api/models/{repo}/commit/{branch}      NDJSON: file (base64), deletedFile,
                                                 deletedFolder; lfsFile only for known blobs
  POST   /api/models/{repo}/tag/{rev}            create_tag (409 when it exists)
  DELETE /api/models/{repo}/tag/{tag}            delete_tag
  HEAD   /{repo}/resolve/{rev}/{path}            hf_hub_download; rev = branch, tag or commit
  GET    /{repo}/resolve/{rev}/{path}            the same, with single-range Range -> 206/416
  GET    /_test/stats, POST /_test/reset         {"requests": {"GET /path": n}, "bytes_served",
                                                 "bytes_by_path"}: file body bytes written
  GET    /_test/ranges                           {"/path": ["bytes=N-", null, ...]}: the Range
                                                 header of every file GET, in order
  GET|POST|DELETE /_test/faults                  list / add / clear fault rules

Fault rules (a JSON list): {"path_glob": "*.tar.gz", "method": "GET", "kind": ..., "times": 1}.
``times`` counts the requests a rule hits before it disappears (null: forever); the glob matches
the URL path. Kinds: ``status`` (answer ``status``, default 500, with ``Retry-After:
retry_after`` if given), ``redirect`` (``status`` 302 to ``location``, default the same URL),
``reset`` (close with a TCP RST, no answer), and the body kinds, which apply to file bodies and,
without a ``method``, to GET only (so the client's HEAD does not use them up): ``corrupt`` (one
byte flipped, headers unchanged), ``cut`` (half the body, then close), ``stall`` (headers, then
``seconds`` of silence, default 5, after the first ``at`` bytes of the body, default 0; the
connection stays open, and the silence ends early when the client hangs up; on HEAD the headers
come late), ``drip`` (``chunk`` bytes every
``interval`` seconds), ``wrong_length`` (a body one byte short whose Content-Length agrees).

Quirks worth knowing:

* The server chooses the upload mode, so answering ``regular`` for every file makes the client
  inline each body as base64 in the commit NDJSON; no LFS batch API or Xet is needed. Preupload
  also returns each file's current git oid, so re-committing identical bytes is a client-side
  no-op (``create_commit`` then returns the branch head), as on the real Hub.
* The client refuses a HEAD without ``X-Repo-Commit`` and ``ETag``. Files the Hub would keep in
  LFS (binary suffixes, or 10 MiB and more) get ``ETag: "<sha256>"`` plus ``X-Linked-Etag`` and
  ``X-Linked-Size``, and the client names its cache blob after that sha256; other files get
  their git blob sha1. Bodies are served directly (no redirect to a CDN).
* Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so
  the client raises its specific exceptions, also on HEAD where there is no body.
* ``--token T`` answers 401 to every hub request without ``Authorization: Bearer T``; the
  ``/_test/`` control endpoints are exempt so tests can always read stats and set faults.

Storage under ``--data DIR``: ``blobs/<sha256>`` and ``state.json`` (repos -> commits, branches,
tags), rewritten atomically on every change, so a restarted server serves the same content.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (
    ".gz",
    ".tgz",
    ".tar",
    ".zip",
    ".so",
    ".dylib",
    ".dll",
    ".gguf",
    ".bin",
    ".safetensors",
    ".whl",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
FAULT_KINDS = ("status", "corrupt", "cut", "stall", "reset", "drip", "wrong_length", "redirect")
BODY_KINDS = ("corrupt", "cut", "stall", "drip", "wrong_length")  # without "method": GET only


class HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body or {}


class EntryMissing(HubError):
    def __init__(self, sha: str, path: str) -> None:
        super().__init__(404, f"Entry not found: {path}", "EntryNotFound")
        self.sha = sha


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Store:
    """Repos, commits, refs and content-addressed blobs, persisted under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        state = self.root / "state.json"
        self.state: dict[str, Any] = (
            json.loads(state.read_text()) if state.exists() else {"repos": {}, "blobs": {}}
        )

    def _save(self) -> None:
        tmp = self.root / f"state.json.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(tmp, self.root / "state.json")

    def repo(self, repo_id: str) -> dict[str, Any]:
        if repo_id not in self.state["repos"]:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        repo: dict[str, Any] = self.state["repos"][repo_id]
        return repo

    def create_repo(self, repo_id: str, url: str) -> None:
        with self.lock:
            if repo_id in self.state["repos"]:
                # the client reads "url" even from this 409 when exist_ok=True
                raise HubError(409, "You already created this model repo", body={"url": url})
            self.state["repos"][repo_id] = {"commits": {}, "branches": {}, "tags": {}}
            self._commit(repo_id, "main", {}, "initial commit")

    def resolve(self, repo_id: str, rev: str) -> str:
        repo = self.repo(repo_id)
        for sha in (repo["branches"].get(rev), repo["tags"].get(rev)):
            if sha:
                return str(sha)
        if rev in repo["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def files(self, repo_id: str, sha: str) -> dict[str, str]:
        files: dict[str, str] = self.repo(repo_id)["commits"][sha]["files"]
        return files

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / digest
        if not path.exists():
            tmp = path.with_name(f"{digest}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self.state["blobs"][digest] = {"size": len(data), "oid": git_blob_oid(data)}
        return digest

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest

    def blob_info(self, path: str, digest: str) -> dict[str, Any]:
        meta = self.state["blobs"][digest]
        lfs = path.endswith(LFS_SUFFIXES) or meta["size"] >= LFS_MIN_SIZE
        return {"size": meta["size"], "oid": meta["oid"], "sha256": digest, "lfs": lfs}

    def _commit(self, repo_id: str, branch: str, files: dict[str, str], message: str) -> str:
        repo = self.repo(repo_id)
        parent = repo["branches"].get(branch)
        body = json.dumps([parent, files, message, time.time_ns()], sort_keys=True)
        sha = hashlib.sha1(body.encode()).hexdigest()
        repo["commits"][sha] = {
            "parent": parent,
            "files": files,
            "message": message,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        repo["branches"][branch] = sha
        self._save()
        return sha

    def commit(self, repo_id: str, branch: str, lines: list[dict[str, Any]]) -> str:
        with self.lock:
            repo = self.repo(repo_id)
            if branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch} is not a branch", "RevisionNotFound")
            head = repo["branches"][branch]
            header: dict[str, Any] = next(
                (ln["value"] for ln in lines if ln.get("key") == "header"), {}
            )
            if header.get("parentCommit") not in (None, head):
                raise HubError(412, f"parentCommit {header['parentCommit']} is not the head {head}")
            files = dict(repo["commits"][head]["files"])
            for line in lines:
                self._apply(files, line)
            return self._commit(repo_id, branch, files, header.get("summary") or "commit")

    def _apply(self, files: dict[str, str], line: dict[str, Any]) -> None:
        key, value = line.get("key"), line.get("value") or {}
        path = value.get("path", "")
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
            files[path] = self.put_blob(base64.b64decode(value["content"]))
        elif key == "lfsFile":
            if value.get("oid") not in self.state["blobs"]:
                raise HubError(400, f"LFS object {value.get('oid')} for {path} was never uploaded")
            files[path] = value["oid"]
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for name in [n for n in files if n.startswith(path.rstrip("/") + "/")]:
                del files[name]
        elif key != "header":
            raise HubError(400, f"unknown commit operation {key!r}")

    def set_tag(self, repo_id: str, rev: str, tag: str) -> None:
        with self.lock:
            sha = self.resolve(repo_id, rev)
            repo = self.repo(repo_id)
            if tag in repo["tags"] or tag in repo["branches"]:
                raise HubError(409, f"Tag {tag} already exists (at {repo['tags'].get(tag)})")
            repo["tags"][tag] = sha
            self._save()

    def delete_tag(self, repo_id: str, tag: str) -> None:
        with self.lock:
            if self.repo(repo_id)["tags"].pop(tag, None) is None:
                raise HubError(404, f"Tag {tag} not found", "RevisionNotFound")
            self._save()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; ``None`` if unsatisfiable."""
    spec = header.strip().removeprefix("bytes=").split(",")[0].strip()
    first, _, last = spec.partition("-")
    try:
        if not first:
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _handle(self) -> None:
        split = urlsplit(self.path)
        self.url_path, self.query = unquote(split.path), parse_qs(split.query)
        self.fault: dict[str, Any] | None = None
        self.body_read = False
        try:
            if self.url_path.startswith("/_test/"):
                return self._control()
            self.server.count(self.command, self.url_path)
            token = self.server.token
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            self.fault = self.server.take_fault(self.command, self.url_path)
            if self.fault and self._early_fault(self.fault):
                return
            self._route()
        except HubError as e:
            self._error(e)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_DELETE = _handle

    def _body(self) -> bytes:
        self.body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError as e:
            raise HubError(400, f"bad JSON body: {e}") from None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, e: HubError, headers: dict[str, str] | None = None) -> None:
        extra = {"X-Error-Message": e.message, **(headers or {})}
        if not self.body_read and int(self.headers.get("Content-Length") or 0):
            self.close_connection = True  # the unread body would be parsed as the next request
        if isinstance(e, EntryMissing):  # the client caches "missing at commit X"
            extra["X-Repo-Commit"] = e.sha
        if e.code:
            extra["X-Error-Code"] = e.code
        self._json({"error": e.message, **e.body}, e.status, extra)

    # -- faults -----------------------------------------------------------------------------
    def _early_fault(self, f: dict[str, Any]) -> bool:
        """Faults that replace the answer entirely; the others shape a file body later."""
        kind = f["kind"]
        if kind == "stall" and self.command != "GET":
            self.server.stopping.wait(float(f.get("seconds", 5)))  # a HEAD that answers late
        if kind not in ("status", "redirect", "reset"):
            return False
        self._body()  # a request body left unread would be taken for the next request
        if kind == "status":
            retry = (
                {"Retry-After": str(f["retry_after"])} if f.get("retry_after") is not None else {}
            )
            self._error(HubError(int(f.get("status", 500)), "injected fault"), retry)
        elif kind == "redirect":
            self._send(int(f.get("status", 302)), b"", {"Location": f.get("location") or self.path})
        else:
            # SO_LINGER 0 makes close() send a TCP RST instead of a FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        return True

    def _write_body(self, data: bytes) -> None:
        f = self.fault or {}
        kind = f.get("kind") if self.command == "GET" else None
        if kind == "corrupt" and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        if kind == "cut":
            data = data[: len(data) // 2]
            self.close_connection = True
        if kind == "stall":
            at = min(max(int(f.get("at", 0)), 0), len(data))
            self.wfile.write(data[:at])
            self.server.add_bytes(self.url_path, at)
            self.wfile.flush()
            data = data[at:]
            if not self._silence(float(f.get("seconds", 5))):
                self.close_connection = True
                return  # the client gave up on the silent connection: nothing more to serve
        step = int(f.get("chunk", 1024)) if kind == "drip" else len(data) or 1
        for i in range(0, len(data), step):
            self.wfile.write(data[i : i + step])
            self.server.add_bytes(self.url_path, len(data[i : i + step]))
            if kind == "drip":
                self.wfile.flush()
                if self.server.stopping.wait(float(f.get("interval", 0.05))):
                    break

    def _silence(self, seconds: float) -> bool:
        """Send nothing for ``seconds`` with the connection open; False once the client hung up."""
        import select

        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not self.server.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.1))
            if readable:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return False  # EOF: the client closed its end
                self.server.stopping.wait(left)  # a pipelined request: silence without watching
        return True

    # -- routes -----------------------------------------------------------------------------
    def _route(self) -> None:
        p, m, store = self.url_path, self.command, self.server.store
        if p == "/api/repos/create" and m == "POST":
            body = self._json_body()
            repo_id = "/".join(x for x in (body.get("organization"), body.get("name")) if x)
            store.create_repo(repo_id, f"{self.server.url}/{repo_id}")
            return self._json({"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        if p.startswith("/api/models/"):
            return self._api(p[len("/api/models/") :])
        if "/resolve/" in p and m in ("GET", "HEAD"):
            repo_id, _, rest = p[1:].partition("/resolve/")
            rev, _, path = rest.partition("/")
            return self._resolve(repo_id, rev, path)
        raise HubError(404, f"no route for {m} {p}")

    def _api(self, rest: str) -> None:
        parts = rest.split("/")
        repo_id, action, arg = "/".join(parts[:2]), parts[2] if len(parts) > 2 else "", parts[3:]
        store, m = self.server.store, self.command
        if action in ("", "revision") and m == "GET":
            return self._model_info(repo_id, "/".join(arg) or "main")
        if action == "tree" and m == "GET" and arg:
            return self._tree(repo_id, arg[0], "/".join(arg[1:]))
        if action == "refs" and m == "GET":
            return self._refs(repo_id)
        if action == "preupload" and m == "POST" and arg:
            return self._preupload(repo_id, "/".join(arg))
        if action == "commit" and m == "POST" and arg:
            lines = [json.loads(ln) for ln in self._body().splitlines() if ln.strip()]
            sha = store.commit(repo_id, "/".join(arg), lines)
            return self._json(
                {
                    "success": True,
                    "commitOid": sha,
                    "pullRequestUrl": None,
                    "commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}",
                }
            )
        if action == "tag" and arg and m in ("POST", "DELETE"):
            if m == "DELETE":
                store.delete_tag(repo_id, "/".join(arg))
            else:
                store.set_tag(repo_id, "/".join(arg), str(self._json_body().get("tag")))
            return self._json({})
        raise HubError(404, f"no route for {m} /api/models/{rest}")

    def _model_info(self, repo_id: str, rev: str) -> None:
        store = self.server.store
        with store.lock:
            sha = store.resolve(repo_id, rev)
            commit = store.repo(repo_id)["commits"][sha]
            siblings = []
            for path, digest in sorted(commit["files"].items()):
                info = store.blob_info(path, digest)
                sib = {"rfilename": path, "size": info["size"], "blobId": info["oid"]}
                if info["lfs"]:
                    sib["lfs"] = {"size": info["size"], "sha256": digest, "pointerSize": 134}
                siblings.append(sib)
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": False,
                "lastModified": commit["date"],
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
        )

    def _tree(self, repo_id: str, rev: str, under: str) -> None:
        store = self.server.store
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        with store.lock:
            for path, digest in sorted(store.files(repo_id, store.resolve(repo_id, rev)).items()):
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                    folder = prefix + "/".join(parts[:depth])
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "path": folder,
                            "size": 0,
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                        },
                    )
                if len(parts) > 1 and not recursive:
                    continue
                info = store.blob_info(path, digest)
                entry = {"type": "file", "path": path, "size": info["size"], "oid": info["oid"]}
                if info["lfs"]:
                    entry["lfs"] = {"oid": digest, "size": info["size"], "pointerSize": 134}
                entries[path] = entry
        if prefix and not entries:
            raise HubError(404, f"{under} does not exist at {rev}", "EntryNotFound")
        self._json(list(entries.values()))

    def _refs(self, repo_id: str) -> None:
        repo = self.server.store.repo(repo_id)

        def refs(kind: str, items: dict[str, str]) -> list[dict[str, str]]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s}
                for n, s in sorted(items.items())
            ]

        self._json(
            {
                "branches": refs("heads", repo["branches"]),
                "tags": refs("tags", repo["tags"]),
                "converts": [],
                "pullRequests": [],
            }
        )

    def _preupload(self, repo_id: str, rev: str) -> None:
        store = self.server.store
        wanted = self._json_body().get("files", [])
        with store.lock:
            files = store.files(repo_id, store.resolve(repo_id, rev))
            answer = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": store.state["blobs"][files[f["path"]]]["oid"]
                    if f["path"] in files
                    else None,
                }
                for f in wanted
            ]
        self._json({"files": answer, "commitOid": store.resolve(repo_id, rev)})

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        store = self.server.store
        with store.lock:
            sha = store.resolve(repo_id, rev)
            digest = store.files(repo_id, sha).get(path)
            if digest is None:
                raise EntryMissing(sha, path)
            info = store.blob_info(path, digest)
        etag = f'"{digest}"' if info["lfs"] else f'"{info["oid"]}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes"}
        if info["lfs"]:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(info["size"])})
        self._serve_blob(store.blob_path(digest), info["size"], headers)

    def _serve_blob(self, blob: Path, size: int, headers: dict[str, str]) -> None:
        status, start, end = 200, 0, size - 1
        if self.headers.get("Range"):
            span = parse_range(self.headers["Range"], size)
            if span is None:
                raise HubError(
                    416, f"range {self.headers['Range']} not satisfiable for {size} bytes"
                )
            status, (start, end) = 206, span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        if self.command == "GET":
            self.server.add_range(self.url_path, self.headers.get("Range"))
        if self.fault and self.fault["kind"] == "wrong_length" and self.command == "GET":
            length = max(length - 1, 0)  # a short body whose Content-Length agrees with it
        self.send_response(status)
        for name, value in {"Content-Type": "application/octet-stream", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "GET":
            with open(blob, "rb") as fh:
                fh.seek(start)
                self._write_body(fh.read(length))

    # -- /_test/ ----------------------------------------------------------------------------
    def _control(self) -> None:
        srv, key = self.server, (self.command, self.url_path)
        if key == ("GET", "/_test/stats"):
            return self._json(srv.stats())
        if key == ("GET", "/_test/ranges"):
            return self._json(srv.range_log())
        if key == ("POST", "/_test/reset"):
            srv.reset_stats()
        elif key == ("POST", "/_test/faults"):
            srv.add_faults(self._json_body())
        elif key == ("DELETE", "/_test/faults"):
            srv.clear_faults()
        elif key == ("GET", "/_test/faults"):
            return self._json(srv.faults)
        else:
            raise HubError(404, f"no control route {self.command} {self.url_path}")
        self._json({"ok": True})


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: Store, port: int, token: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.store, self.token = store, token
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.stopping = threading.Event()
        self.faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.reset_stats()

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[f"{method} {path}"] += 1

    def add_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_served += n
            self.bytes_by_path[path] += n

    def add_range(self, path: str, value: str | None) -> None:
        """Record the ``Range`` header (``None``: none) of a GET of a file, in arrival order."""
        with self._lock:
            self.ranges.setdefault(path, []).append(value)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "bytes_served": self.bytes_served,
                "bytes_by_path": dict(self.bytes_by_path),
            }

    def range_log(self) -> dict[str, list[str | None]]:
        """The ``Range`` header of every file GET since the last reset, per path, in order."""
        with self._lock:
            return {path: list(values) for path, values in self.ranges.items()}

    def reset_stats(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.bytes_by_path: Counter[str] = Counter()
            self.bytes_served = 0
            self.ranges: dict[str, list[str | None]] = {}

    def add_faults(self, rules: Any) -> None:
        rules = rules if isinstance(rules, list) else [rules]
        for rule in rules:
            if not isinstance(rule, dict) or rule.get("kind") not in FAULT_KINDS:
                raise HubError(400, f"bad fault rule {rule!r}; kind must be one of {FAULT_KINDS}")
        with self._lock:
            self.faults.extend({"path_glob": "*", "times": 1, **r} for r in rules)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        """The first rule matching this request; ``times`` counts down (``None``: forever)."""
        with self._lock:
            for rule in self.faults:
                wanted = rule.get("method") or ("GET" if rule["kind"] in BODY_KINDS else method)
                if wanted != method or not fnmatch.fnmatch(path, rule["path_glob"]):
                    continue
                if rule["times"] is not None:
                    rule["times"] -= 1
                    if rule["times"] <= 0:
                        self.faults.remove(rule)
                return dict(rule)
        return None


class HubServer:
    """A started-on-demand hub; ``with HubServer(tmp) as hub: hub.url``."""

    def __init__(
        self, data_dir: str | os.PathLike[str], port: int = 0, token: str | None = None
    ) -> None:
        self.data_dir, self.port, self.token = Path(data_dir), port, token
        self.httpd: HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.httpd is None:
            raise RuntimeError("HubServer is not started; call start() first")
        return self.httpd.url

    def start(self) -> HubServer:
        self.httpd = HubHTTPServer(Store(self.data_dir), self.port, self.token)
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="hubserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.stopping.set()
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding blobs/ and state.json")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument("--ready-file", default=None, help="write the URL here once serving")
    args = parser.parse_args(argv)
    server = HubServer(args.data, args.port, args.token).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(server.url + "\n")
        os.replace(tmp, args.ready_file)
    print(server.url, flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
