"""A Hugging Face Hub-compatible HTTP server for the test suite (standard library only).

The real ``huggingface_hub`` client talks to it unpatched: point ``HF_ENDPOINT`` at
:attr:`HubServer.url` before ``huggingface_hub`` is first imported (``tests/conftest.py`` does
this) and ``create_repo``, ``upload_folder``, ``snapshot_download``, ``hf_hub_download``,
``list_repo_refs``, ``create_branch``, ``create_tag``, ``repo_info``, ``delete_repo``... all run
against it.

What it models, following the protocol of the installed huggingface_hub (2.4):

* repos of type model (and dataset/space, same rules), each with an owner, a private flag,
  branches (``main`` first), tags and a linear commit history per branch; commit, blob and tree
  ids are git-like 40-hex sha1 digests of their content, so a file's ``ETag`` is its git blob id;
* bearer-token auth with a fixed token -> user map; private repos are invisible to everybody but
  their owner (``404``, or ``401`` when anonymous, with ``X-Error-Code: RepoNotFound``, as the Hub
  answers); writes need the owner's token;
* preupload always answers ``"regular"``: 2.x clients always carry hf-xet, and an ``"lfs"``
  answer would send them to Xet storage endpoints that a test server cannot offer;
* failure injection (:class:`Fault`) on the next GETs of a file, for interrupted or corrupted
  downloads.

Not modelled: pull requests and discussions, organizations, LFS/Xet storage, ``.gitignore``
filtering in preupload, model-card metadata in ``repo_info`` (that needs a YAML parser),
pagination (every listing fits in one page), rate limits.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import itertools
import json
import mimetypes
import re
import secrets
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS: dict[str, str] = {"alice": "hf_test_alice", "bob": "hf_test_bob"}
"""Users known to the server and their write tokens (user -> token)."""

DEFAULT_BRANCH = "main"
REPO_TYPES = ("model", "dataset", "space")

# The Hub seeds every new repo with this file in an "initial commit": downloads of a real repo
# contain it too, so code under test must cope with it.
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")
_REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/]*")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")


class Fault(enum.Enum):
    """A failure the server injects into a GET of a file (see :meth:`HubServer.inject_fault`)."""

    TRUNCATE = "truncate"
    """Announce the full ``Content-Length``, send half the body, then hang up (a network cut)."""
    SHORT = "short"
    """A well-formed response whose body is half the size that the metadata (HEAD) announced."""
    CORRUPT = "corrupt"
    """The right number of bytes, every byte inverted (a flipped-bits transfer or a bad cache)."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, for tests that assert on traffic."""

    method: str
    path: str  # raw path with query string, as sent
    status: int
    user: str | None  # the authenticated user, None for anonymous requests
    range: str | None  # the Range header, if any


class HubError(Exception):
    """An error answer: status, message, and the ``X-Error-Code`` the client maps to exceptions."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------- git-like content ids


def git_blob_oid(data: bytes) -> str:
    """Git's blob id of ``data``: the Hub's ``ETag`` and tree ``oid`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_oid(files: Mapping[str, str]) -> str:
    """A content id for ``path -> blob id`` entries (git-like, not byte-identical to git)."""
    listing = "".join(f"{path}\0{oid}\n" for path, oid in sorted(files.items()))
    return hashlib.sha1(b"tree\0" + listing.encode()).hexdigest()


def _now_iso() -> str:
    """The current UTC time in the one format huggingface_hub's ``parse_datetime`` reads."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- repository state


@dataclass(frozen=True)
class Commit:
    """One commit: an immutable snapshot of every file (``path -> blob id``) plus its metadata."""

    oid: str
    parent: str | None
    files: Mapping[str, str]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    """A repository: owner, visibility, refs and the commits they point into."""

    repo_type: str
    repo_id: str
    owner: str
    private: bool
    created_at: str
    gated: str | bool = False
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)  # oid -> commit

    def history(self, head: str) -> list[Commit]:
        """Commits reachable from ``head``, newest first (history is linear)."""
        chain: list[Commit] = []
        oid: str | None = head
        while oid is not None:
            commit = self.commits[oid]
            chain.append(commit)
            oid = commit.parent
        return chain


class OperationKind(enum.Enum):
    """What one line of a commit payload does."""

    ADD = "file"  # the payload keys these values mirror
    DELETE_FILE = "deletedFile"
    DELETE_FOLDER = "deletedFolder"


@dataclass(frozen=True)
class Operation:
    """One line of a commit payload: add a file, delete a file, or delete a folder."""

    kind: OperationKind
    path: str
    content: bytes = b""


def _repo_not_found(user: str | None) -> HubError:
    # The Hub hides private repos behind the same answer as missing ones: 401 to anonymous callers,
    # 404 to authenticated ones, both tagged RepoNotFound.
    return HubError(401 if user is None else 404, "Repository not found", code="RepoNotFound")


def _revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def _validate_path(path: str) -> str:
    """Reject paths a git tree cannot hold (absolute, empty segments, ``..``)."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _validate_ref_name(name: str) -> str:
    """Branch and tag names: no ``refs/`` prefix (the Hub owns ``refs/pr/*``), no odd characters."""
    if not _REF_NAME.fullmatch(name) or name.startswith("refs/") or _HEX40.fullmatch(name):
        raise HubError(400, f"Invalid reference name: {name!r}")
    return name


def _subtree(files: Mapping[str, str], folder: str) -> dict[str, str]:
    """The files under ``folder`` (or the whole tree for ``""``), keyed by full path."""
    prefix = f"{folder}/" if folder else ""
    return {path: oid for path, oid in files.items() if path.startswith(prefix)}


def _folders(files: Mapping[str, str]) -> set[str]:
    """Every folder that holds at least one file, at any depth."""
    folders: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
    return folders


class HubState:
    """The in-memory Hub: users, repos, content-addressed blobs, pending faults, and a request log.

    Callers hold :attr:`lock` (the HTTP dispatcher around each handler, :class:`HubServer`'s helpers
    around theirs): the server answers each connection in its own thread.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = dict(tokens)  # user -> token
        self._users_by_token = {token: user for user, token in self.tokens.items()}
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults: dict[tuple[str, str, str], list[Fault]] = {}
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []
        self._sequence = 0  # makes two otherwise identical commits distinct, as git's timestamps do

    # -- auth and lookup

    def authenticate(self, authorization: str | None) -> str | None:
        """The user behind ``Authorization: Bearer ...``; None if anonymous; 401 if unknown."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        user = self._users_by_token.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            # The exact message matters: huggingface_hub does not turn this 401 into RepoNotFound.
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def readable(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        """The repo if ``user`` may see it, else the Hub's not-found answer."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise _repo_not_found(user)
        return repo

    def writable(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        """The repo if ``user`` owns it; 401 for anonymous callers, 403 for other users."""
        repo = self.readable(repo_type, repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to write to this repo")
        if user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_type} repo {repo_id}")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch, tag, ``refs/heads|tags/...`` name, full or unique short sha -> its commit."""
        for table, prefix in ((repo.branches, "refs/heads/"), (repo.tags, "refs/tags/")):
            name = revision.removeprefix(prefix)
            if name in table:
                return repo.commits[table[name]]
        if _HEX40.fullmatch(revision) and revision in repo.commits:
            return repo.commits[revision]
        if _SHORT_SHA.fullmatch(revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise _revision_not_found(revision)

    def branch_head(self, repo: Repo, revision: str) -> tuple[str, Commit]:
        """The branch a write targets and its head commit; writes never go to tags or bare shas."""
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return name, repo.commits[repo.branches[name]]
        self.resolve(repo, revision)  # 404 RevisionNotFound when it names nothing at all
        raise HubError(400, f"Cannot commit to {revision!r}: it is not a branch")

    # -- repo lifecycle

    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool) -> Repo:
        """A new repo holding the Hub's initial commit (``.gitattributes``); 409 if it exists."""
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        namespace, _, name = repo_id.partition("/")
        if not _REPO_NAME.fullmatch(name) or not namespace:
            raise HubError(400, f"Invalid repo name: {repo_id!r}")
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
        repo = Repo(repo_type, repo_id, owner=owner, private=private, created_at=_now_iso())
        initial = self._new_commit(
            repo,
            None,
            {".gitattributes": self._store_blob(GITATTRIBUTES)},
            "initial commit",
            "",
            "system",
        )
        repo.branches[DEFAULT_BRANCH] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def delete_repo(self, repo_type: str, repo_id: str, user: str | None) -> None:
        """Remove a repo the caller owns (blobs stay: they are shared and content-addressed)."""
        self.writable(repo_type, repo_id, user)
        del self.repos[(repo_type, repo_id)]

    # -- commits

    def _store_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        self.blobs[oid] = content
        return oid

    def _new_commit(
        self,
        repo: Repo,
        parent: str | None,
        files: Mapping[str, str],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        """Record a commit whose id is the sha1 of its tree, parent, author, date and message."""
        self._sequence += 1
        date = _now_iso()
        text = (
            f"tree {_tree_oid(files)}\nparent {parent}\nauthor {author} {date}\n"
            f"sequence {self._sequence}\n\n{title}\n\n{message}"
        )
        commit = Commit(
            oid=hashlib.sha1(text.encode()).hexdigest(),
            parent=parent,
            files=dict(files),
            title=title,
            message=message,
            author=author,
            date=date,
        )
        repo.commits[commit.oid] = commit
        return commit

    def commit(
        self,
        repo: Repo,
        revision: str,
        operations: list[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply ``operations`` on top of a branch head and move the branch to the new commit."""
        branch, head = self.branch_head(repo, revision)
        if parent_commit is not None and not head.oid.startswith(parent_commit):
            # What the Hub answers when the branch moved since the client read it.
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for operation in operations:
            self._apply(files, operation)
        commit = self._new_commit(repo, head.oid, files, title, message, author)
        repo.branches[branch] = commit.oid
        return commit

    def _apply(self, files: dict[str, str], operation: Operation) -> None:
        """Apply one operation to a working tree (``path -> blob id``), in place."""
        path = _validate_path(operation.path.rstrip("/"))
        if operation.kind is OperationKind.ADD:
            files[path] = self._store_blob(operation.content)
        elif operation.kind is OperationKind.DELETE_FILE:
            if files.pop(path, None) is None:
                raise HubError(
                    404, f"A file with this name doesn't exist: {path}", code="EntryNotFound"
                )
        else:  # OperationKind.DELETE_FOLDER
            doomed = _subtree(files, path)
            if not doomed:
                raise HubError(
                    404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound"
                )
            for doomed_path in doomed:
                del files[doomed_path]

    def last_change(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The newest commit, up to ``commit``, that changed ``path`` (a file or a folder)."""
        chain = repo.history(commit.oid)
        for newer, older in itertools.pairwise(chain):
            if self._entry(newer.files, path) != self._entry(older.files, path):
                return newer
        return chain[-1]

    @staticmethod
    def _entry(files: Mapping[str, str], path: str) -> Any:
        """What ``path`` holds in a tree: a blob id for a file, the sub-tree for a folder."""
        return files.get(path) or _subtree(files, path)

    # -- failure injection

    def take_fault(self, repo_type: str, repo_id: str, path: str) -> Fault | None:
        """Pop the next pending fault for a file, if any."""
        pending = self.faults.get((repo_type, repo_id, path))
        if not pending:
            return None
        return pending.pop(0)


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class Request:
    """What a route handler needs from an HTTP request."""

    method: str
    params: dict[str, str]  # URL path parameters, already percent-decoded
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: str | None
    base_url: str

    def json(self) -> Any:
        """The body parsed as JSON (an empty body reads as ``{}``); 400 if it is not JSON."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise HubError(400, f"Body is not valid JSON: {error}") from error

    def flag(self, name: str) -> bool:
        """A boolean query parameter as the client encodes it (``1``/``true``)."""
        return self.query.get(name, [""])[0].lower() in ("1", "true")

    @property
    def repo_type(self) -> str:
        """``models`` / ``datasets`` / ``spaces`` in the URL -> the singular repo type."""
        plural = self.params.get("type") or self.params.get("prefix") or "models"
        return plural.removesuffix("s")


@dataclass
class Response:
    """An answer to send; ``declared_length`` and ``close`` let a fault lie about it and hang up."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None
    close: bool = False


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer."""
    return Response(
        status,
        json.dumps(data).encode(),
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


def error_response(error: HubError) -> Response:
    """The Hub's error shape: JSON ``{"error": ...}``, ``X-Error-Message``, ``X-Error-Code``."""
    # Header values must be latin-1: escape anything else (a unicode file name, say).
    header_message = error.message.encode("ascii", "backslashreplace").decode()
    headers = {"X-Error-Message": header_message, **error.headers}
    if error.code is not None:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message}, error.status, headers)


Handler = Callable[[HubState, Request], Response]
_ROUTES: list[tuple[frozenset[str], re.Pattern[str], Handler]] = []
_PLACEHOLDERS = {
    "{type}": r"(?P<type>models|datasets|spaces)",
    "{prefix}": r"(?:(?P<prefix>datasets|spaces)/)?",
    "{repo}": r"(?P<repo>[^/]+/[^/]+)",
    "{rev}": r"(?P<rev>[^/]+)",
    "{name}": r"(?P<name>[^/]+)",
    "{path}": r"(?P<path>.+)",
}


def route(methods: str, template: str) -> Callable[[Handler], Handler]:
    """Register a handler for space-separated ``methods`` on a URL path template.

    Templates match the raw (still percent-encoded) path: huggingface_hub quotes revisions with
    ``safe=""``, so a ``/`` inside a revision arrives as ``%2F`` and must not split the path.
    """
    pattern = template
    for placeholder, regex in _PLACEHOLDERS.items():
        pattern = pattern.replace(placeholder, regex)

    def register(handler: Handler) -> Handler:
        _ROUTES.append((frozenset(methods.split()), re.compile(pattern), handler))
        return handler

    return register


def find_route(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler for a request and its decoded path parameters; 501 for what is not modelled."""
    for methods, pattern, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match and method in methods:
            params = {key: unquote(value) for key, value in match.groupdict().items() if value}
            return handler, params
    raise HubError(501, f"Not implemented by the test Hub server: {method} {path}")


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _HubRequestHandler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up mid-answer (a timeout, a test's abort); report the rest."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Reads the whole request, routes it, and writes one response (keep-alive safe)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK, which costs about 40 ms per request.
    disable_nagle_algorithm = True
    server: _HubHTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: :attr:`HubState.requests` keeps the traffic instead."""

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked): leftovers would break keep-alive."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, then the blank line that ends them
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        body = self._read_body()  # before anything can fail
        url = urlsplit(self.path)
        user: str | None = None
        try:
            user = state.authenticate(self.headers.get("Authorization"))
            handler, params = find_route(method, url.path)
            request = Request(
                method=method,
                params=params,
                query=parse_qs(url.query),
                headers=self.headers,
                body=body,
                user=user,
                base_url=f"http://{self.server.server_address[0]}:{self.server.server_address[1]}",
            )
            with state.lock:
                response = handler(state, request)
        except HubError as error:
            response = error_response(error)
        except Exception as bug:
            # A bug in this server. Not a 500: the client retries those with backoff for ~20 s,
            # where a test should fail at once, with the cause in the message.
            state.errors.append(traceback.format_exc())
            response = error_response(HubError(501, f"Test Hub server bug: {bug!r}"))
        record = RequestRecord(method, self.path, response.status, user, self.headers.get("Range"))
        with state.lock:
            state.requests.append(record)
        self._send(method, response)

    def _send(self, method: str, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        length = (
            len(response.body) if response.declared_length is None else response.declared_length
        )
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)
        self.wfile.flush()
        if response.close:
            self.close_connection = True


# --------------------------------------------------------------------------- JSON views


def _repo_url(request: Request, repo: Repo) -> str:
    prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
    return f"{request.base_url}/{prefix}{repo.repo_id}"


def _repo_info_json(repo: Repo, commit: Commit, state: HubState, *, blobs: bool) -> dict[str, Any]:
    """The fields of ``/api/models/{repo}`` that ModelInfo/DatasetInfo read."""
    siblings: list[dict[str, Any]] = []
    for path, oid in sorted(commit.files.items()):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=len(state.blobs[oid]), blobId=oid)
        siblings.append(sibling)
    return {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.owner,
        "sha": commit.oid,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(len(state.blobs[oid]) for oid in set(commit.files.values())),
    }


def _tree_entry(
    state: HubState, repo: Repo, commit: Commit, path: str, *, expand: bool
) -> dict[str, Any]:
    """One ``/tree`` or ``/paths-info`` entry: a file (blob id, size) or a directory (tree id)."""
    if path in commit.files:
        oid = commit.files[path]
        entry: dict[str, Any] = {
            "type": "file",
            "oid": oid,
            "size": len(state.blobs[oid]),
            "path": path,
        }
    else:
        entry = {
            "type": "directory",
            "oid": _tree_oid(_subtree(commit.files, path)),
            "size": 0,
            "path": path,
        }
    if expand:
        changed = state.last_change(repo, commit, path)
        entry["lastCommit"] = {"id": changed.oid, "title": changed.title, "date": changed.date}
    return entry


def _ref_json(name: str, kind: str, oid: str) -> dict[str, str]:
    return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}


def _user_json(user: str) -> dict[str, Any]:
    """The ``whoami-v2`` answer for a user authenticated by a write token."""
    return {
        "type": "user",
        "id": hashlib.sha1(user.encode()).hexdigest()[:24],
        "name": user,
        "fullname": user.capitalize(),
        "email": f"{user}@example.test",
        "emailVerified": True,
        "isPro": False,
        "orgs": [],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "test token", "role": "write", "createdAt": _now_iso()},
        },
    }


# ------------------------------------------------------------------------- account and repo routes


@route("GET", "/api/whoami-v2")
def _whoami(state: HubState, request: Request) -> Response:
    if request.user is None:
        raise HubError(401, "Invalid username or password.")
    return json_response(_user_json(request.user))


@route("GET", "/api/agent-harnesses")
def _agent_harnesses(state: HubState, request: Request) -> Response:
    # Fetched by huggingface_hub's user-agent code when telemetry is on: an empty registry is fine.
    return json_response({"standardEnvVars": [], "harnesses": {}})


@route("POST", "/api/validate-yaml")
def _validate_yaml(state: HubState, request: Request) -> Response:
    """Check a README's front matter; the client reads ``errors``/``warnings`` even on a 400."""
    content = str(request.json().get("content", ""))
    errors = [{"message": message} for message in _front_matter_problems(content)]
    return json_response({"errors": errors, "warnings": []}, 400 if errors else 200)


def _front_matter_problems(content: str) -> list[str]:
    """Structural problems of a ``---``-delimited YAML header, found without a YAML parser."""
    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return []
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        return ["The YAML metadata block is not closed by a '---' line"]
    return [
        f"Line {number}: expected 'key: value' at the top level of the metadata"
        for number, line in enumerate(lines[1:end], start=2)
        if line.strip()
        and not line[0].isspace()
        and not line.startswith(("#", "- "))
        and ":" not in line
    ]


@route("GET", "/api/{type}")
def _list_repos(state: HubState, request: Request) -> Response:
    """``list_models``/``list_datasets``: visible repos, filtered by ``author`` and ``search``."""
    author = request.query.get("author", [None])[0]
    search = request.query.get("search", [""])[0]
    listed = []
    for repo in state.repos.values():
        visible = not repo.private or repo.owner == request.user
        wanted = (author is None or repo.owner == author) and search in repo.repo_id
        if repo.repo_type == request.repo_type and visible and wanted:
            head = repo.commits[repo.branches[DEFAULT_BRANCH]]
            listed.append(_repo_info_json(repo, head, state, blobs=False))
    return json_response(sorted(listed, key=lambda info: info["id"]))


@route("POST", "/api/repos/create")
def _create_repo(state: HubState, request: Request) -> Response:
    if request.user is None:
        raise HubError(401, "You must be authenticated to create a repo")
    payload = request.json()
    namespace = payload.get("organization") or request.user
    if namespace != request.user:
        raise HubError(
            403, f"You don't have the rights to create a repo under the namespace {namespace}"
        )
    # 2.x clients send "visibility"; older ones sent a "private" boolean.
    private = payload.get("visibility") == "private" or bool(payload.get("private"))
    repo_id = f"{namespace}/{payload.get('name', '')}"
    repo_type = payload.get("type") or "model"
    try:
        repo = state.create_repo(repo_type, repo_id, request.user, private)
    except HubError as error:
        if error.status == 409:  # the Hub's 409 also carries the url of the existing repo
            existing = state.repos[(repo_type, repo_id)]
            return json_response({"error": error.message, "url": _repo_url(request, existing)}, 409)
        raise
    return json_response({"url": _repo_url(request, repo), "name": repo_id, "id": repo_id})


@route("DELETE", "/api/repos/delete")
def _delete_repo(state: HubState, request: Request) -> Response:
    payload = request.json()
    repo_id = f"{payload.get('organization') or request.user}/{payload.get('name', '')}"
    state.delete_repo(payload.get("type") or "model", repo_id, request.user)
    return Response(200)


@route("PUT", "/api/{type}/{repo}/settings")
def _update_settings(state: HubState, request: Request) -> Response:
    repo = state.writable(request.repo_type, request.params["repo"], request.user)
    payload = request.json()
    if "visibility" in payload:
        repo.private = payload["visibility"] == "private"
    if "private" in payload:
        repo.private = bool(payload["private"])
    if "gated" in payload:
        repo.gated = payload["gated"]
    return json_response({})


@route("GET", "/api/{type}/{repo}")
@route("GET", "/api/{type}/{repo}/revision/{rev}")
def _repo_info(state: HubState, request: Request) -> Response:
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    commit = state.resolve(repo, request.params.get("rev", DEFAULT_BRANCH))
    return json_response(_repo_info_json(repo, commit, state, blobs=request.flag("blobs")))


# --------------------------------------------------------------------------- refs and history


@route("GET", "/api/{type}/{repo}/refs")
def _list_refs(state: HubState, request: Request) -> Response:
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    refs: dict[str, Any] = {
        "branches": [_ref_json(name, "heads", oid) for name, oid in repo.branches.items()],
        "converts": [],
        "tags": [_ref_json(name, "tags", oid) for name, oid in repo.tags.items()],
    }
    if request.flag("include_prs"):
        refs["pullRequests"] = []
    return json_response(refs)


@route("GET", "/api/{type}/{repo}/commits/{rev}")
def _list_commits(state: HubState, request: Request) -> Response:
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    head = state.resolve(repo, request.params["rev"])
    return json_response(
        [
            {
                "id": commit.oid,
                "title": commit.title,
                "message": commit.message,
                "authors": [{"user": commit.author}],
                "date": commit.date,
            }
            for commit in repo.history(head.oid)
        ]
    )


@route("POST DELETE", "/api/{type}/{repo}/branch/{name}")
def _branch(state: HubState, request: Request) -> Response:
    repo = state.writable(request.repo_type, request.params["repo"], request.user)
    name = _validate_ref_name(request.params["name"])
    if request.method == "DELETE":
        if name == DEFAULT_BRANCH:
            raise HubError(403, f"Cannot delete the default branch {DEFAULT_BRANCH!r}")
        if repo.branches.pop(name, None) is None:
            raise _revision_not_found(name)
        return Response(200)
    if name in repo.branches:
        raise HubError(409, f"Reference already exists: refs/heads/{name}")
    start = request.json().get("startingPoint") or DEFAULT_BRANCH
    repo.branches[name] = state.resolve(repo, start).oid
    return json_response({})


@route("POST DELETE", "/api/{type}/{repo}/tag/{name}")
def _tag(state: HubState, request: Request) -> Response:
    """POST tags the URL's revision with ``{"tag": ...}``; DELETE removes the URL's tag."""
    repo = state.writable(request.repo_type, request.params["repo"], request.user)
    if request.method == "DELETE":
        if repo.tags.pop(request.params["name"], None) is None:
            raise _revision_not_found(request.params["name"])
        return Response(200)
    target = state.resolve(repo, request.params["name"])
    tag = _validate_ref_name(str(request.json().get("tag", "")))
    if tag in repo.tags:
        raise HubError(409, f"Tag already exists: refs/tags/{tag}")
    repo.tags[tag] = target.oid
    return json_response({})


# --------------------------------------------------------------------------- uploads


@route("POST", "/api/{type}/{repo}/preupload/{rev}")
def _preupload(state: HubState, request: Request) -> Response:
    """Every file goes in the commit ("regular"); ``oid`` lets the client skip unchanged ones."""
    if request.flag("create_pr"):
        raise HubError(501, "Pull requests are not supported by the test Hub server")
    repo = state.writable(request.repo_type, request.params["repo"], request.user)
    _, head = state.branch_head(repo, request.params["rev"])
    files = [
        {
            "path": item["path"],
            "uploadMode": "regular",
            "shouldIgnore": False,
            "oid": head.files.get(item["path"]),
        }
        for item in request.json().get("files", [])
    ]
    return json_response({"files": files, "commitOid": head.oid})


@route("POST", "/api/{type}/{repo}/commit/{rev}")
def _commit(state: HubState, request: Request) -> Response:
    if request.flag("create_pr"):
        raise HubError(501, "Pull requests are not supported by the test Hub server")
    repo = state.writable(request.repo_type, request.params["repo"], request.user)
    header, operations = parse_commit_payload(request.body)
    assert request.user is not None  # writable() refuses anonymous callers
    commit = state.commit(
        repo,
        request.params["rev"],
        operations,
        title=str(header.get("summary") or "Commit"),
        message=str(header.get("description") or ""),
        author=request.user,
        parent_commit=header.get("parentCommit"),
    )
    return json_response(
        {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{_repo_url(request, repo)}/commit/{commit.oid}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }
    )


def parse_commit_payload(body: bytes) -> tuple[dict[str, Any], list[Operation]]:
    """Split the NDJSON commit body into its header and its file operations."""
    header: dict[str, Any] = {}
    operations: list[Operation] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as error:
            raise HubError(400, f"Malformed commit payload, line {number}: {error}") from error
        if key == "header":
            header = value
        elif key == OperationKind.ADD.value:
            content = _decode_file_content(value)
            operations.append(Operation(OperationKind.ADD, value["path"], content))
        elif key in (OperationKind.DELETE_FILE.value, OperationKind.DELETE_FOLDER.value):
            operations.append(Operation(OperationKind(key), value["path"]))
        elif key == "lfsFile":
            raise HubError(
                400, "LFS files are not supported: preupload only ever answers 'regular'"
            )
        else:
            raise HubError(400, f"Unknown commit payload key: {key!r}")
    return header, operations


def _decode_file_content(value: Mapping[str, Any]) -> bytes:
    encoding = value.get("encoding", "utf-8")
    if encoding == "base64":
        return base64.b64decode(value["content"])
    return str(value["content"]).encode()


# --------------------------------------------------------------------------- listings


@route("GET", "/api/{type}/{repo}/tree/{rev}")
@route("GET", "/api/{type}/{repo}/tree/{rev}/{path}")
def _tree(state: HubState, request: Request) -> Response:
    """Children of a folder (every descendant with ``recursive=true``), folders included."""
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    commit = state.resolve(repo, request.params["rev"])
    folder = request.params.get("path", "").strip("/")
    if folder and folder not in _folders(commit.files):
        raise HubError(404, f"Folder not found: {folder}", code="EntryNotFound")
    prefix = f"{folder}/" if folder else ""
    everything = sorted(
        path for path in set(commit.files) | _folders(commit.files) if path.startswith(prefix)
    )
    recursive = request.flag("recursive")
    listed = [path for path in everything if recursive or "/" not in path[len(prefix) :]]
    expand = request.flag("expand")
    return json_response([_tree_entry(state, repo, commit, path, expand=expand) for path in listed])


@route("POST", "/api/{type}/{repo}/paths-info/{rev}")
def _paths_info(state: HubState, request: Request) -> Response:
    """Entries for the requested paths that exist; the client sends a form (or JSON) body."""
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    commit = state.resolve(repo, request.params["rev"])
    if "json" in request.headers.get("Content-Type", ""):
        payload = request.json()
        paths, expand = list(payload.get("paths", [])), bool(payload.get("expand"))
    else:
        form = parse_qs(request.body.decode())
        paths, expand = form.get("paths", []), form.get("expand", [""])[0].lower() == "true"
    existing = set(commit.files) | _folders(commit.files)
    return json_response(
        [
            _tree_entry(state, repo, commit, path, expand=expand)
            for path in paths
            if path in existing
        ]
    )


# --------------------------------------------------------------------------- downloads


@route("GET HEAD", "/{prefix}{repo}/resolve/{rev}/{path}")
def _resolve(state: HubState, request: Request) -> Response:
    """File content with the metadata headers hf_hub_download relies on; GETs may carry a fault."""
    repo = state.readable(request.repo_type, request.params["repo"], request.user)
    commit = state.resolve(repo, request.params["rev"])
    path = request.params["path"]
    commit_header = {"X-Repo-Commit": commit.oid}
    if repo.gated and request.user != repo.owner:
        raise HubError(
            403, "Access to this model is restricted", code="GatedRepo", headers=commit_header
        )
    if path not in commit.files:
        # X-Repo-Commit lets the client cache the file's absence for this commit (".no_exist").
        raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers=commit_header)
    oid = commit.files[path]
    headers = {
        **commit_header,
        "ETag": f'"{oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
    }
    response = _ranged(state.blobs[oid], request.headers.get("Range"), headers)
    if request.method == "GET" and response.status < 300:
        fault = state.take_fault(repo.repo_type, repo.repo_id, path)
        if fault is not None:
            _apply_fault(response, fault)
    return response


def _ranged(content: bytes, range_header: str | None, headers: dict[str, str]) -> Response:
    """200 with the whole file, 206 for one satisfiable ``bytes=`` range, 416 otherwise."""
    size = len(content)
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header or "")
    if match is None or match.groups() == ("", ""):
        return Response(
            200, content, headers
        )  # no range, or one we do not parse: RFC 9110 says ignore
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    else:  # a suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        return Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
    return Response(
        206, content[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    )


def _apply_fault(response: Response, fault: Fault) -> None:
    """Damage a file response in place, as described by :class:`Fault`."""
    half = len(response.body) // 2
    if fault is Fault.TRUNCATE:
        response.declared_length = len(response.body)
        response.body = response.body[:half]
        response.close = True  # hang up with bytes still owed: the client sees a cut connection
    elif fault is Fault.SHORT:
        response.body = response.body[:half]
    elif fault is Fault.CORRUPT:
        response.body = response.body.translate(bytes(range(255, -1, -1)))


# --------------------------------------------------------------------------- public server object


class HubServer:
    """A running test Hub: its URL, users' tokens, and helpers to seed, inspect and sabotage it."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self.state = HubState(tokens or DEFAULT_TOKENS)
        self._httpd = _HubHTTPServer(self.state)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within one poll
            name="test-hub-server",
            daemon=True,
        )

    @property
    def tokens(self) -> dict[str, str]:
        """Known users and their write tokens (user -> token)."""
        return dict(self.state.tokens)

    def start(self) -> HubServer:
        """Serve in a daemon thread; returns ``self``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- seeding and inspection, without going through HTTP

    def new_repo_id(self, owner: str = "alice", prefix: str = "repo") -> str:
        """A repo id that does not exist yet, for tests that must not collide."""
        return f"{owner}/{prefix}-{secrets.token_hex(4)}"

    def create_repo(self, repo_id: str, *, private: bool = False, repo_type: str = "model") -> None:
        """Create a repo owned by its namespace, as ``create_repo`` would."""
        with self.state.lock:
            self.state.create_repo(repo_type, repo_id, repo_id.split("/")[0], private)

    def upload_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        branch: str = DEFAULT_BRANCH,
        message: str = "Upload files",
        repo_type: str = "model",
    ) -> str:
        """Commit ``path -> content`` to a branch as the repo owner; returns the new commit id."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            operations = [Operation(OperationKind.ADD, path, data) for path, data in files.items()]
            commit = self.state.commit(
                repo, branch, operations, title=message, message="", author=repo.owner
            )
            return commit.oid

    def read_file(
        self, repo_id: str, path: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model"
    ) -> bytes:
        """The bytes of ``path`` at ``revision`` (KeyError if absent)."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            return self.state.blobs[self.state.resolve(repo, revision).files[path]]

    def list_files(
        self, repo_id: str, *, revision: str = DEFAULT_BRANCH, repo_type: str = "model"
    ) -> list[str]:
        """Every file path at ``revision``, sorted."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            return sorted(self.state.resolve(repo, revision).files)

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH, *, repo_type: str = "model") -> str:
        """The commit id a branch points to."""
        with self.state.lock:
            return self.state.repos[(repo_type, repo_id)].branches[branch]

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repo exists, whoever may see it."""
        with self.state.lock:
            return (repo_type, repo_id) in self.state.repos

    def set_private(self, repo_id: str, private: bool, *, repo_type: str = "model") -> None:
        """Flip a repo's visibility."""
        with self.state.lock:
            self.state.repos[(repo_type, repo_id)].private = private

    def reset(self) -> None:
        """Forget every repo, blob, fault, logged request and recorded error."""
        with self.state.lock:
            self.state.repos.clear()
            self.state.blobs.clear()
            self.state.faults.clear()
            self.state.requests.clear()
            self.state.errors.clear()

    # -- failure injection

    def inject_fault(
        self, repo_id: str, path: str, fault: Fault, *, times: int = 1, repo_type: str = "model"
    ) -> None:
        """Damage the next ``times`` GETs of ``path`` (any revision) in the way ``fault`` describes.

        HEAD requests are never damaged, so the client learns the true size and ETag first. Note
        that huggingface_hub resumes a :attr:`Fault.TRUNCATE`-d download with a ``Range`` request
        (after a one-second pause), so one truncation is survived; :attr:`Fault.SHORT` raises.
        """
        with self.state.lock:
            self.state.faults.setdefault((repo_type, repo_id, path), []).extend([fault] * times)

    def pending_faults(self, repo_id: str, path: str, *, repo_type: str = "model") -> int:
        """How many injected faults on ``path`` have not fired yet."""
        with self.state.lock:
            return len(self.state.faults.get((repo_type, repo_id, path), []))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self.state.lock:
            self.state.faults.clear()

    # -- observation

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self) -> None:
        """Forget the request log (e.g. before asserting that a step makes no request)."""
        with self.state.lock:
            self.state.requests.clear()

    @property
    def errors(self) -> list[str]:
        """Tracebacks of server-side bugs (each answered with a 501); empty when all is well."""
        with self.state.lock:
            return list(self.state.errors)


def start_hub_server(tokens: Mapping[str, str] | None = None) -> HubServer:
    """Start a test Hub on 127.0.0.1 (free port) in a daemon thread; ``tokens``: user -> token."""
    return HubServer(tokens).start()
