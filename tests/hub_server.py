"""A small local Hugging Face Hub server for the test suite (standard library only).

It speaks enough of the Hub's HTTP API for the *real* ``huggingface_hub`` client (with
``HF_ENDPOINT`` pointing here and ``HF_HUB_DISABLE_XET=1``) to create repos, upload with
``upload_file`` / ``upload_folder`` / ``create_commit`` (regular files inline, large files via
the git-LFS batch API) and download with ``hf_hub_download`` / ``snapshot_download``.

Routes (``{type}s`` is ``models``, ``datasets`` or ``spaces``; ``{repo}`` is ``namespace/name``;
repo URLs of datasets and spaces carry a ``datasets/`` or ``spaces/`` prefix):

- ``GET  /api/whoami-v2``, ``POST /api/repos/create``, ``DELETE /api/repos/delete``,
  ``POST /api/validate-yaml``, ``GET /api/agent-harnesses``
- ``GET  /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}`` (repo info, siblings)
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``), ``POST .../paths-info/{rev}``
- ``GET  /api/{type}s/{repo}/refs``, ``GET .../commits/{rev}``
- ``POST /api/{type}s/{repo}/preupload/{rev}``, ``POST .../commit/{rev}`` (ndjson)
- ``POST|DELETE /api/{type}s/{repo}/branch/{branch}``, ``POST .../tag/{rev}``,
  ``DELETE .../tag/{tag}``, ``PUT .../settings``
- ``POST /{repo}.git/info/lfs/objects/batch``, ``PUT /__lfs/upload/{oid}`` (signed URL),
  ``POST /__lfs/verify``
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (``Range`` supported)

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
``X-Error-Message`` like the real Hub. A wrong token gets 401 on every route; a missing token
gets 401 on write routes; a read-only token gets 403 on write routes. Public repos are readable
anonymously; private repos answer 404 ``RepoNotFound`` without a valid token.

Repos (metadata as JSON) and file contents (content-addressed by sha256) are stored on disk
under ``root``. Set ``IMCAP_HUB_SERVER_LOG=1`` to log requests and errors to stderr.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LOG_ENV_VAR = "IMCAP_HUB_SERVER_LOG"

DEFAULT_WRITE_TOKEN = "hf_imcap_test_write"
DEFAULT_READ_TOKEN = "hf_imcap_test_read"
DEFAULT_USER = "tester"

# Files uploaded through git-LFS: these suffixes, and anything larger than ``lfs_threshold``.
LFS_SUFFIXES = (
    ".safetensors",
    ".h5",
    ".keras",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".msgpack",
    ".onnx",
    ".tflite",
    ".pb",
    ".zip",
    ".gz",
    ".tar",
    ".parquet",
    ".arrow",
    ".png",
    ".jpg",
    ".jpeg",
)

GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX_TYPES = {"datasets": "dataset", "spaces": "space"}
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
_CHUNK = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _url_prefix(repo_type: str) -> str:
    return {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")


class HubError(Exception):
    """An HTTP error answered to the client, Hub style."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra


def _repo_not_found() -> HubError:
    return HubError(404, "Repository not found", "RepoNotFound")


def _revision_not_found(rev: str) -> HubError:
    return HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


@dataclass
class _Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None
    start: int = 0
    length: int = 0


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> _Response:
    return _Response(status, {"Content-Type": content_type}, json.dumps(data).encode())


def _error_response(err: HubError) -> _Response:
    """JSON body ``{"error": ...}`` plus the ``X-Error-*`` headers the client inspects.

    ``extra`` keys that look like HTTP headers (``X-Repo-Commit``, ``Content-Range``) become
    headers; the others are added to the JSON body (e.g. ``url`` on a 409 from repo creation).
    """
    headers = {k: v for k, v in err.extra.items() if k.startswith(("X-", "Content-"))}
    body = {"error": err.message, **{k: v for k, v in err.extra.items() if k not in headers}}
    response = _json(body, err.status)
    response.headers.update(headers)
    response.headers["X-Error-Message"] = err.message
    if err.code:
        response.headers["X-Error-Code"] = err.code
    return response


@dataclass
class _Auth:
    present: bool
    user: str | None = None
    role: str | None = None

    @property
    def valid(self) -> bool:
        return self.user is not None


class _Request:
    """The parts of an HTTP request the routes need; the body is read lazily."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.handler = handler
        self.method = handler.command
        split = urlsplit(handler.path)
        self.raw_path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.headers = handler.headers
        self._body: bytes | None = None
        self._consumed = False

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def iter_body(self) -> Iterator[bytes]:
        if self._consumed:
            if self._body:
                yield self._body
            return
        self._consumed = True
        rfile = self.handler.rfile
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size_line = rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = rfile.read(min(remaining, _CHUNK))
                    if not data:
                        raise ConnectionError("client closed the connection mid-body")
                    remaining -= len(data)
                    yield data
                rfile.readline(65537)  # CRLF after each chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(data)
                yield data

    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_body())
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body() or b"null")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def drain(self) -> None:
        for _ in self.iter_body():
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    hub: LocalHub

    def __init__(self, *args: Any, **kwargs: Any):
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut live keep-alive connections, so that a stopped server really stops answering."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address):
        if os.environ.get(LOG_ENV_VAR):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imcap-local-hub/1.0"
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get(LOG_ENV_VAR):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        request = _Request(self)
        try:
            response = self.server.hub._route(request)
        except HubError as err:
            response = _error_response(err)
        except Exception as err:
            traceback.print_exc(file=sys.stderr)  # a bug in this server: always visible
            response = _json({"error": f"local hub server error: {err!r}"}, 500)
        request.drain()
        self._send(response)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        length = response.length if response.file is not None else len(response.body)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        with open(response.file, "rb") as f:
            f.seek(response.start)
            remaining = length
            while remaining:
                data = f.read(min(remaining, _CHUNK))
                if not data:
                    break
                self.wfile.write(data)
                remaining -= len(data)


class LocalHub:
    """A local Hub server storing its repos under ``root``.

    ``tokens`` maps a token to ``(user, role)`` where role is ``"write"`` or ``"read"``.
    """

    def __init__(
        self,
        root: Path | str,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        tokens: dict[str, tuple[str, str]] | None = None,
        lfs_threshold: int = 10_000,
    ):
        self.root = Path(root)
        self.host = host
        self.port = port
        self.lfs_threshold = lfs_threshold
        self._tokens = (
            dict(tokens)
            if tokens is not None
            else {
                DEFAULT_WRITE_TOKEN: (DEFAULT_USER, "write"),
                DEFAULT_READ_TOKEN: (DEFAULT_USER, "read"),
            }
        )
        self.token = next((t for t, (_, role) in self._tokens.items() if role == "write"), None)
        self.read_token = next((t for t, (_, role) in self._tokens.items() if role == "read"), None)
        self.user = self._tokens[self.token][0] if self.token else DEFAULT_USER
        self._secret = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], dict[str, Any]] = {}
        self._counter = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    endpoint = url

    @property
    def tokens(self) -> frozenset[str]:
        """All valid tokens (write and read-only)."""
        return frozenset(self._tokens)

    def new_repo_id(self, name: str = "repo", namespace: str | None = None) -> str:
        """A repo id not used before by this server instance, e.g. ``"tester/repo-3"``."""
        return f"{namespace or self.user}/{name}-{next(self._counter)}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._load()
        server = _Server((self.host, self.port), _Handler)
        server.hub = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"local-hub-{self.port}"
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ storage

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def _load(self) -> None:
        with self._lock:
            for path in (self.root / "repos").glob("*/*/*.json"):
                repo = json.loads(path.read_text())
                self._repos[(repo["type"], repo["id"])] = repo

    def _save(self, repo: dict[str, Any]) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)

    def _object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def _has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self._object_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def _store_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self._has_object(sha256, len(data)):
            path = self._object_path(sha256)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha256}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha256

    def _file_entry(self, data: bytes, lfs: bool) -> dict[str, Any]:
        sha256 = self._store_bytes(data)
        entry = {"sha256": sha256, "size": len(data), "lfs": lfs, "git_sha1": _git_blob_sha1(data)}
        entry["blob_id"] = (
            _git_blob_sha1(_lfs_pointer(sha256, len(data))) if lfs else entry["git_sha1"]
        )
        return entry

    def _new_commit(
        self,
        repo: dict[str, Any],
        parent: str | None,
        files: dict[str, Any],
        title: str,
        message: str = "",
    ) -> str:
        seed = json.dumps([repo["id"], parent, files, title, message, time.time_ns()])
        oid = hashlib.sha1((seed + uuid.uuid4().hex).encode()).hexdigest()
        repo["commits"][oid] = {
            "parent": parent,
            "files": files,
            "title": title,
            "message": message,
            "date": _now(),
        }
        return oid

    # ------------------------------------------------------------------ auth / lookups

    def _auth(self, request: _Request) -> _Auth:
        header = request.headers.get("Authorization")
        if not header:
            return _Auth(present=False)
        scheme, _, token = header.partition(" ")
        info = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _Auth(present=True, user=info[0], role=info[1])

    def _require_write(self, request: _Request) -> _Auth:
        auth = self._auth(request)
        if not auth.present:
            raise HubError(401, "You must be authenticated to access this resource")
        if auth.role != "write":
            raise HubError(403, "You don't have the rights to write with this token (read-only)")
        return auth

    def _get_repo(self, repo_type: str, repo_id: str, auth: _Auth) -> dict[str, Any]:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and not auth.valid):
            raise _repo_not_found()
        return repo

    @staticmethod
    def _resolve(repo: dict[str, Any], rev: str) -> str:
        refs = repo["refs"]
        for candidate in (rev, rev.removeprefix("refs/heads/"), rev.removeprefix("refs/tags/")):
            if candidate in refs["branches"]:
                return refs["branches"][candidate]
            if candidate in refs["tags"]:
                return refs["tags"][candidate]
        if rev in refs["prs"]:
            return refs["prs"][rev]
        if _COMMIT_RE.fullmatch(rev) and rev in repo["commits"]:
            return rev
        raise _revision_not_found(rev)

    def _repo_url(self, repo: dict[str, Any]) -> str:
        return f"{self.url}/{_url_prefix(repo['type'])}{repo['id']}"

    # ------------------------------------------------------------------ routing

    def _route(self, request: _Request) -> _Response:
        segs = request.raw_path.split("/")[1:]
        method = request.method
        if segs and segs[0] == "api":
            return self._route_api(request, segs[1:])
        if segs and segs[0] == "__lfs":
            if method == "PUT" and len(segs) == 3 and segs[1] == "upload":
                return self._lfs_put(request, segs[2])
            if method == "POST" and segs[1:] == ["verify"]:
                return self._lfs_verify(request)
            raise HubError(404, "Not found")
        repo_type = "model"
        if len(segs) > 3 and segs[0] in _URL_PREFIX_TYPES:
            repo_type = _URL_PREFIX_TYPES[segs[0]]
            segs = segs[1:]
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            path = unquote("/".join(segs[4:]))
            return self._resolve_file(request, repo_type, repo_id, unquote(segs[3]), path)
        if (
            len(segs) == 6
            and segs[1].endswith(".git")
            and segs[2:] == ["info", "lfs", "objects", "batch"]
            and method == "POST"
        ):
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1][: -len('.git')])}"
            return self._lfs_batch(request, repo_type, repo_id)
        raise HubError(404, "Not found")

    def _route_api(self, request: _Request, segs: list[str]) -> _Response:
        method = request.method
        simple = {
            ("GET", "whoami-v2"): self._whoami,
            ("POST", "repos/create"): self._create_repo,
            ("DELETE", "repos/delete"): self._delete_repo,
            ("POST", "validate-yaml"): self._validate_yaml,
            ("GET", "agent-harnesses"): self._agent_harnesses,
        }
        handler = simple.get((method, "/".join(segs)))
        if handler is not None:
            return handler(request)
        if len(segs) < 3 or segs[0] not in _API_TYPES:
            raise HubError(404, "Not found")
        repo_type = _API_TYPES[segs[0]]
        repo_id = f"{unquote(segs[1])}/{unquote(segs[2])}"
        action = segs[3] if len(segs) > 3 else None
        rest = segs[4:]
        rev = unquote(rest[0]) if rest else None

        if action is None and method == "GET":
            return self._repo_info(request, repo_type, repo_id, None)
        routes = {
            ("GET", "revision"): lambda: self._repo_info(request, repo_type, repo_id, rev),
            ("GET", "tree"): lambda: self._tree(
                request, repo_type, repo_id, rev, unquote("/".join(rest[1:]))
            ),
            ("POST", "paths-info"): lambda: self._paths_info(request, repo_type, repo_id, rev),
            ("GET", "refs"): lambda: self._refs(request, repo_type, repo_id),
            ("GET", "commits"): lambda: self._commits(request, repo_type, repo_id, rev),
            ("POST", "preupload"): lambda: self._preupload(request, repo_type, repo_id, rev),
            ("POST", "commit"): lambda: self._commit(request, repo_type, repo_id, rev),
            ("POST", "branch"): lambda: self._create_branch(request, repo_type, repo_id, rev),
            ("DELETE", "branch"): lambda: self._delete_ref(
                request, repo_type, repo_id, "branches", rev
            ),
            ("POST", "tag"): lambda: self._create_tag(request, repo_type, repo_id, rev),
            ("DELETE", "tag"): lambda: self._delete_ref(request, repo_type, repo_id, "tags", rev),
            ("PUT", "settings"): lambda: self._settings(request, repo_type, repo_id),
        }
        route = routes.get((method, action))
        needs_rev = action not in ("refs", "settings")
        if route is None or (needs_rev and rev is None):
            raise HubError(404, "Not found")
        return route()

    # ------------------------------------------------------------------ simple API routes

    def _whoami(self, request: _Request) -> _Response:
        auth = self._auth(request)
        if not auth.valid:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json(
            {
                "type": "user",
                "id": hashlib.sha1(auth.user.encode()).hexdigest()[:24],
                "name": auth.user,
                "fullname": auth.user.title(),
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{auth.role} token", "role": auth.role},
                },
            }
        )

    def _validate_yaml(self, request: _Request) -> _Response:
        request.drain()
        return _json({"errors": [], "warnings": []})

    def _agent_harnesses(self, request: _Request) -> _Response:
        return _json({"standardEnvVars": [], "harnesses": {}})

    def _create_repo(self, request: _Request) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        name = payload.get("name")
        if not name:
            raise HubError(400, "Missing repo name")
        repo_type = payload.get("type") or "model"
        if repo_type not in _API_TYPES.values():
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{payload.get('organization') or auth.user}/{name}"
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                raise HubError(
                    409, f"You already created this {repo_type} repo", url=self._repo_url(existing)
                )
            visibility = payload.get("visibility")
            repo: dict[str, Any] = {
                "type": repo_type,
                "id": repo_id,
                "private": visibility == "private" or bool(payload.get("private")),
                "created_at": _now(),
                "commits": {},
                "refs": {"branches": {}, "tags": {}, "prs": {}},
            }
            files = {".gitattributes": self._file_entry(GITATTRIBUTES, lfs=False)}
            repo["refs"]["branches"]["main"] = self._new_commit(repo, None, files, "initial commit")
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
        return _json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, request: _Request) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or auth.user}/{payload.get('name')}"
        with self._lock:
            self._get_repo(repo_type, repo_id, auth)
            del self._repos[(repo_type, repo_id)]
            self._repo_file(repo_type, repo_id).unlink(missing_ok=True)
        return _json({})

    def _settings(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            if "visibility" in payload:
                repo["private"] = payload["visibility"] == "private"
            if "private" in payload:
                repo["private"] = bool(payload["private"])
            self._save(repo)
        return _json({})

    # ------------------------------------------------------------------ read routes

    def _snapshot(
        self, request: _Request, repo_type: str, repo_id: str, rev: str | None
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        auth = self._auth(request)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            oid = self._resolve(repo, rev or "main")
            return repo, oid, repo["commits"][oid]

    def _repo_info(
        self, request: _Request, repo_type: str, repo_id: str, rev: str | None
    ) -> _Response:
        repo, oid, commit = self._snapshot(request, repo_type, repo_id, rev)
        blobs = request.flag("blobs")
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = entry["size"]
                sibling["blobId"] = entry["blob_id"]
                if entry["lfs"]:
                    pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
                    sibling["lfs"] = {
                        "size": entry["size"],
                        "sha256": entry["sha256"],
                        "pointerSize": pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": oid,
            "lastModified": commit["date"],
            "createdAt": repo["created_at"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit["files"].values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        if repo_type == "space":
            info["sdk"] = "static"
        return _json(info)

    def _tree_entry(
        self, repo: dict[str, Any], oid: str, path: str, entry: dict[str, Any] | None, expand: bool
    ) -> dict[str, Any]:
        if entry is None:
            data: dict[str, Any] = {
                "type": "directory",
                "oid": hashlib.sha1(f"tree:{oid}:{path}".encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
        else:
            data = {"type": "file", "oid": entry["blob_id"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
                data["lfs"] = {
                    "oid": entry["sha256"],
                    "size": entry["size"],
                    "pointerSize": pointer_size,
                }
        if expand:
            last = self._last_commit(repo, oid, path, entry)
            commit = repo["commits"][last]
            data["lastCommit"] = {"id": last, "title": commit["title"], "date": commit["date"]}
        return data

    @staticmethod
    def _last_commit(
        repo: dict[str, Any], oid: str, path: str, entry: dict[str, Any] | None
    ) -> str:
        """The most recent commit (from ``oid`` back) that changed ``path``."""
        if entry is None:
            return oid
        current = oid
        while True:
            parent = repo["commits"][current]["parent"]
            if parent is None or repo["commits"][parent]["files"].get(path) != entry:
                return current
            current = parent

    def _tree(
        self, request: _Request, repo_type: str, repo_id: str, rev: str, path: str
    ) -> _Response:
        repo, oid, commit = self._snapshot(request, repo_type, repo_id, rev)
        files: dict[str, Any] = commit["files"]
        recursive = request.flag("recursive")
        expand = request.flag("expand")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and prefix.rstrip("/") in files:
            raise HubError(404, f"{path} is a file, not a directory", "EntryNotFound")
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"Path {path} not found at revision {rev}", "EntryNotFound")
        dirs: set[str] = set()
        listed: list[str] = []
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                listed.append(file_path)
        entries = [self._tree_entry(repo, oid, d, None, expand) for d in sorted(dirs)]
        entries += [self._tree_entry(repo, oid, p, files[p], expand) for p in listed]
        return _json(entries)

    def _paths_info(self, request: _Request, repo_type: str, repo_id: str, rev: str) -> _Response:
        content_type = request.headers.get("Content-Type") or ""
        if "json" in content_type:
            payload = request.json() or {}
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(request.body().decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
        repo, oid, commit = self._snapshot(request, repo_type, repo_id, rev)
        files = commit["files"]
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._tree_entry(repo, oid, path, files[path], expand))
            elif any(p.startswith(path + "/") for p in files):
                out.append(self._tree_entry(repo, oid, path, None, expand))
        return _json(out)

    def _refs(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        auth = self._auth(request)
        with self._lock:
            refs = self._get_repo(repo_type, repo_id, auth)["refs"]

            def fmt(kind: str, full: str) -> list[dict[str, str]]:
                return [
                    {"name": name, "ref": full.format(name=name), "targetCommit": target}
                    for name, target in sorted(refs[kind].items())
                ]

            data = {
                "branches": fmt("branches", "refs/heads/{name}"),
                "tags": fmt("tags", "refs/tags/{name}"),
                "converts": [],
            }
            if request.param("include_prs"):
                data["pullRequests"] = fmt("prs", "{name}")
        return _json(data)

    def _commits(self, request: _Request, repo_type: str, repo_id: str, rev: str) -> _Response:
        repo, oid, _ = self._snapshot(request, repo_type, repo_id, rev)
        items = []
        current: str | None = oid
        while current is not None:
            commit = repo["commits"][current]
            items.append(
                {
                    "id": current,
                    "title": commit["title"],
                    "message": commit["message"],
                    "authors": [{"user": self.user}],
                    "date": commit["date"],
                }
            )
            current = commit["parent"]
        return _json(items)

    def _resolve_file(
        self, request: _Request, repo_type: str, repo_id: str, rev: str, path: str
    ) -> _Response:
        _, oid, commit = self._snapshot(request, repo_type, repo_id, rev)
        entry = commit["files"].get(path)
        if entry is None:
            raise HubError(
                404, f"Entry not found: {path}", "EntryNotFound", **{"X-Repo-Commit": oid}
            )
        size = entry["size"]
        headers = {
            "X-Repo-Commit": oid,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=0",
        }
        if entry["lfs"]:
            headers["ETag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(size)
        else:
            headers["ETag"] = f'"{entry["git_sha1"]}"'
        start, length, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header:
            match = _RANGE_RE.fullmatch(range_header)
            if match is None or (not match.group(1) and not match.group(2)):
                raise HubError(416, f"Unsupported range: {range_header}")
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:
                start = max(size - int(last), 0)
                end = size - 1
            if start >= size or end < start:
                raise HubError(416, "Range not satisfiable", **{"Content-Range": f"bytes */{size}"})
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return _Response(
            status, headers, file=self._object_path(entry["sha256"]), start=start, length=length
        )

    # ------------------------------------------------------------------ write routes

    def _upload_mode(self, path: str, size: int) -> str:
        if size > 0 and (path.lower().endswith(LFS_SUFFIXES) or size > self.lfs_threshold):
            return "lfs"
        return "regular"

    def _preupload(self, request: _Request, repo_type: str, repo_id: str, rev: str) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            files = repo["commits"][self._resolve(repo, rev)]["files"]
        out = []
        for item in payload.get("files", []):
            mode = self._upload_mode(item["path"], int(item.get("size", 0)))
            existing = files.get(item["path"])
            remote_oid = None
            if existing is not None:
                remote_oid = existing["sha256"] if mode == "lfs" else existing["git_sha1"]
            out.append(
                {"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid}
            )
        return _json({"files": out, "commitOid": None})

    def _lfs_batch(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        with self._lock:
            self._get_repo(repo_type, repo_id, auth)
        if payload.get("operation") != "upload":
            raise HubError(422, "Only the 'upload' operation is supported by the local hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", 0))
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": f"Invalid oid: {oid}"}
            elif not self._has_object(oid, size):
                signature = self._sign(oid, size)
                item["actions"] = {
                    "upload": {
                        "href": f"{self.url}/__lfs/upload/{oid}?size={size}&sig={signature}",
                        "header": {},
                    },
                    "verify": {"href": f"{self.url}/__lfs/verify", "header": {}},
                }
            objects.append(item)
        return _json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _sign(self, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()

    def _lfs_put(self, request: _Request, oid: str) -> _Response:
        size = int(request.param("size") or -1)
        if not hmac.compare_digest(request.param("sig") or "", self._sign(oid, size)):
            raise HubError(403, "Invalid or missing upload signature")
        path = self._object_path(oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{oid}.{uuid.uuid4().hex}.tmp")
        digest, received = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for data in request.iter_body():
                    digest.update(data)
                    received += len(data)
                    f.write(data)
            if received != size or digest.hexdigest() != oid:
                raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return _Response(200, {"ETag": f'"{oid}"'})

    def _lfs_verify(self, request: _Request) -> _Response:
        self._auth(request)
        payload = request.json() or {}
        if not self._has_object(str(payload.get("oid")), payload.get("size")):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        return _json({"success": True})

    def _commit(self, request: _Request, repo_type: str, repo_id: str, rev: str) -> _Response:
        auth = self._require_write(request)
        header: dict[str, Any] = {}
        operations: list[tuple[str, dict[str, Any]]] = []
        for line in request.body().splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                raise HubError(400, f"Invalid ndjson line: {err}") from err
            if item.get("key") == "header":
                header = item.get("value") or {}
            else:
                operations.append((item.get("key"), item.get("value") or {}))
        summary = (header.get("summary") or "").strip()
        if not summary:
            raise HubError(400, "Commit summary is required")

        # Decode/store contents outside the lock.
        staged: list[tuple[str, str, dict[str, Any] | None]] = []
        for key, value in operations:
            path = str(value.get("path", "")).strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}")
                data = base64.b64decode(value.get("content", ""))
                staged.append(("add", path, self._file_entry(data, lfs=False)))
            elif key == "lfsFile":
                oid = str(value.get("oid"))
                if not self._has_object(oid):
                    raise HubError(400, f"LFS object {oid} for {path} was not uploaded")
                size = self._object_path(oid).stat().st_size
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubError(400, f"LFS object {oid} has size {size}, not {value['size']}")
                pointer = _lfs_pointer(oid, size)
                with open(self._object_path(oid), "rb") as f:
                    git_sha1 = hashlib.sha1(b"blob %d\0" % size)
                    for chunk in iter(lambda f=f: f.read(_CHUNK), b""):
                        git_sha1.update(chunk)
                entry = {
                    "sha256": oid,
                    "size": size,
                    "lfs": True,
                    "git_sha1": git_sha1.hexdigest(),
                    "blob_id": _git_blob_sha1(pointer),
                }
                staged.append(("add", path, entry))
            elif key in ("deletedFile", "deletedFolder"):
                staged.append((key, path, None))
            else:
                raise HubError(400, f"Unknown commit operation: {key}")

        create_pr = request.flag("create_pr")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            branches = repo["refs"]["branches"]
            branch = rev.removeprefix("refs/heads/")
            if branch not in branches:  # commits go to a branch, never to a tag or a hash
                raise _revision_not_found(rev)
            head = branches[branch]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head:
                raise HubError(
                    412, f"A commit has happened since. Parent {parent_commit} is not {head}"
                )
            files = dict(repo["commits"][head]["files"])
            for op, path, entry in staged:
                if op == "add":
                    files[path] = entry
                elif op == "deletedFile":
                    if path not in files:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    del files[path]
                else:
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(
                            404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    for p in doomed:
                        del files[p]
            oid = self._new_commit(repo, head, files, summary, header.get("description") or "")
            response: dict[str, Any] = {"success": True, "commitOid": oid, "hookOutput": ""}
            if create_pr:
                number = len(repo["refs"]["prs"]) + 1
                repo["refs"]["prs"][f"refs/pr/{number}"] = oid
                response["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{number}"
            else:
                branches[branch] = oid
            self._save(repo)
            response["commitUrl"] = f"{self._repo_url(repo)}/commit/{oid}"
        return _json(response)

    def _create_branch(
        self, request: _Request, repo_type: str, repo_id: str, branch: str
    ) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            if branch in repo["refs"]["branches"]:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            target = self._resolve(repo, payload.get("startingPoint") or "main")
            repo["refs"]["branches"][branch] = target
            self._save(repo)
        return _json({})

    def _create_tag(self, request: _Request, repo_type: str, repo_id: str, rev: str) -> _Response:
        auth = self._require_write(request)
        payload = request.json() or {}
        tag = payload.get("tag")
        if not tag:
            raise HubError(400, "Missing tag name")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            if tag in repo["refs"]["tags"]:
                raise HubError(409, f"Tag {tag} already exists")
            repo["refs"]["tags"][tag] = self._resolve(repo, rev)
            self._save(repo)
        return _json({})

    def _delete_ref(
        self, request: _Request, repo_type: str, repo_id: str, kind: str, name: str
    ) -> _Response:
        auth = self._require_write(request)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, auth)
            if name not in repo["refs"][kind]:
                raise _revision_not_found(name)
            del repo["refs"][kind][name]
            self._save(repo)
        return _json({})


__all__ = ["DEFAULT_READ_TOKEN", "DEFAULT_USER", "DEFAULT_WRITE_TOKEN", "HubError", "LocalHub"]
