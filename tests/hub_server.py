"""A minimal in-process fake of the Hugging Face Hub HTTP API, enough for `create_repo` and `upload_folder`.

It speaks the endpoints huggingface_hub 2.4 calls on the upload path and records what arrives:

- `POST /api/repos/create`: create a repo, under the token's user when the id has no namespace (409 with the
  repo's url when it exists, as the Hub does);
- `POST /api/validate-yaml`: check the model card's YAML front matter (`upload_folder` calls it for README.md);
- `POST /api/{type}s/{repo}/preupload/{rev}`: answer "regular" for every file, so contents come inline
  (base64) in the commit, together with the git oid of the file already on the server, if any, which the
  client compares to skip unchanged files;
- `POST /api/{type}s/{repo}/commit/{rev}`: the NDJSON commit (`header`, `file`, `deletedFile`, `deletedFolder`);
- `GET /api/{type}s/{repo}[/revision/{rev}]`: repo info, asked for when every file was unchanged;
- `GET /api/agent-harnesses`: answered 404 (the client asks it once per process, for its user agent).

LFS and Xet are never offered, so `lfsFile` commit lines are refused. Only the `main` branch exists.
Requests to anything else answer 404 and are kept in `FakeHub.unhandled`, so a test can assert none happened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TOKEN = "fake-token"
USER = "alice"  # the owner of TOKEN: a repo created with no namespace lands under this user
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# A bare name (no namespace) is a legacy canonical repo on the Hub; none exist here, so those answer 404.
_REPO = r"(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)"
_PREUPLOAD = re.compile(rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)")
_COMMIT = re.compile(rf"/api/{_REPO}/commit/(?P<rev>[^/]+)")
_INFO = re.compile(rf"/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?")


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob holding `content`: sha1 over a `blob <size>\\0` header and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    """One commit received by the fake Hub."""

    oid: str
    summary: str
    description: str
    added: dict[str, bytes]
    deleted: list[str]


@dataclass
class Repo:
    """A repo on the fake Hub: its current files on `main` and the commits that made them."""

    repo_id: str
    repo_type: str
    private: bool
    initial_oid: str
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else self.initial_oid


class HubError(Exception):
    """An error answered as the Hub does: a status, a JSON `{"error": ...}` body and maybe `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}


class FakeHub:
    """The fake Hub's state and its HTTP server on 127.0.0.1 (a free port), served from a background thread."""

    def __init__(self, token: str = TOKEN, user: str = USER) -> None:
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.preuploaded: list[dict[str, Any]] = []
        self.validated_yaml: list[str] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FakeHub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake Hub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point a (fresh) huggingface_hub process at this server."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": self.token, "HF_HUB_OFFLINE": "0"}

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # ----------------------------------------------------------------- endpoints

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes) -> Any:
        """Answer one request: returns the JSON body of a 200, or raises HubError."""
        with self.lock:
            self.requests.append((method, path))
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            if method == "GET" and path == "/api/agent-harnesses":
                # Asked once per process when building the user agent; a 404 keeps the client from caching
                # a registry under HF_HOME, and it then detects no agent.
                raise HubError(404, "fake Hub: no agent harness registry")
            self._check_token(headers, required=method != "GET")
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if method == "POST" and (match := _PREUPLOAD.fullmatch(path)):
                repo = self._find(match["kind"], match["repo"], match["rev"], query)
                return self._preupload(repo, json.loads(body))
            if method == "POST" and (match := _COMMIT.fullmatch(path)):
                repo = self._find(match["kind"], match["repo"], match["rev"], query)
                return self._commit(repo, body)
            if method == "GET" and (match := _INFO.fullmatch(path)):
                return self._info(self._find(match["kind"], match["repo"], match["rev"] or "main", query))
            self.unhandled.append((method, path))
            raise HubError(404, f"fake Hub: no route for {method} {path}")

    def _check_token(self, headers: Any, required: bool) -> None:
        auth = headers.get("Authorization")
        if auth is None and not required:
            return
        if auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _find(self, kind: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> Repo:
        repo = self.repos.get((REPO_TYPES[kind], unquote(repo_id)))
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if unquote(revision) != "main":
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", code="RevisionNotFound")
        if query.get("create_pr"):
            raise HubError(400, "fake Hub: pull requests are not supported")
        return repo

    def _create_repo(self, payload: dict[str, Any]) -> dict[str, Any]:
        name, organization = payload["name"], payload.get("organization") or self.user
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, "You already created this repo", extra={"url": url})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        initial_oid = hashlib.sha1(f"initial commit of {repo_type}/{repo_id}".encode()).hexdigest()
        self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private, initial_oid)
        return {"url": url, "name": repo_id, "id": initial_oid}

    def _validate_yaml(self, payload: dict[str, Any]) -> dict[str, Any]:
        content: str = payload["content"]
        self.validated_yaml.append(content)
        match = re.match(r"---\r?\n(.*?)\r?\n---\r?\n", content, flags=re.DOTALL)
        if match is None:
            return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            metadata = yaml.safe_load(match[1])
        except yaml.YAMLError as err:
            raise HubError(400, "Invalid YAML", extra={"errors": [{"message": str(err)}]}) from err
        if not isinstance(metadata, dict):
            raise HubError(400, "Invalid YAML", extra={"errors": [{"message": "metadata must be a mapping"}]})
        return {"errors": [], "warnings": []}

    def _preupload(self, repo: Repo, payload: dict[str, Any]) -> dict[str, Any]:
        answers = []
        for item in payload["files"]:
            self.preuploaded.append(item)
            sample = base64.b64decode(item["sample"])
            if len(sample) > 512 or len(sample) > item["size"]:
                raise HubError(400, f"fake Hub: bad sample for {item['path']}")
            existing = repo.files.get(item["path"])
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        return {"files": answers, "commitOid": repo.sha}

    def _commit(self, repo: Repo, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "fake Hub: a commit starts with its header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and not repo.sha.startswith(parent):
            raise HubError(412, f"fake Hub: parent commit {parent} is not the head {repo.sha}")
        files = dict(repo.files)
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                encoding = value.get("encoding", "utf-8")
                if encoding == "base64":
                    content = base64.b64decode(value["content"], validate=True)
                elif encoding == "utf-8":
                    content = value["content"].encode()
                else:
                    raise HubError(400, f"fake Hub: unknown encoding {encoding!r} for {path}")
                files[path] = added[path] = content
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                deleted.append(path)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [name for name in files if name.startswith(prefix)]:
                    del files[name]
                    deleted.append(name)
            else:
                raise HubError(400, f"fake Hub: unsupported commit line {key!r} (only regular uploads are offered)")
        digest = hashlib.sha1(repo.sha.encode())
        for name in sorted(files):
            digest.update(f"{name}\0{git_blob_oid(files[name])}\n".encode())
        digest.update(json.dumps(header, sort_keys=True).encode())
        oid = digest.hexdigest()
        repo.files = files
        repo.commits.append(Commit(oid, header.get("summary", ""), header.get("description", ""), added, deleted))
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {
            "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
            "commitOid": oid,
            "pullRequestUrl": None,
            "success": True,
        }

    def _info(self, repo: Repo) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "private": repo.private,
            "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(repo.files.items())],
        }


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            body = self._read_body()
            status, extra_headers = 200, {}
            try:
                answer = hub.handle(method, parts.path, parse_qs(parts.query), self.headers, body)
            except HubError as err:
                status, answer = err.status, {"error": err.message, **err.extra}
                if err.code:
                    extra_headers["X-Error-Code"] = err.code
            except Exception as err:  # a bug in the fake or a malformed request: answer it, do not hang
                status, answer = 500, {"error": f"fake Hub: {type(err).__name__}: {err}"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            # One request per connection: no pooled connection outlives the server that opened it.
            self.send_header("Connection", "close")
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
