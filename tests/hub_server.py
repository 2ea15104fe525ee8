"""In-memory stand-in for the part of the Hugging Face Hub HTTP API used by our round trips.

Stdlib only. The shapes below follow what the installed ``huggingface_hub`` client reads
(``hf_api.py``, ``_commit_api.py``, ``lfs.py``, ``file_download.py``, ``utils/_http.py``):
repo creation, preupload, NDJSON commits, the LFS "basic" batch protocol with a PUT store,
tree / paths-info listings, refs, commits and ``resolve`` downloads (HEAD/GET, Range).

Not covered on purpose: Xet storage (clients must run with ``HF_HUB_DISABLE_XET=1``),
real authentication and permissions, gated/private repos, rate limits, pagination,
discussions beyond the PR ref created by ``create_pr=True``, tags, spaces runtime.

    with FakeHub() as hub:
        ...  # point HF_ENDPOINT at hub.url in a subprocess
        assert hub.unknown_routes == []
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".arrow", ".pt", ".pth", ".ckpt", ".h5", ".npy", ".zip")
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub asks for LFS above 10 MB
GITATTRIBUTES = b"".join(
    b"*.%s filter=lfs diff=lfs merge=lfs -text\n" % ext.encode() for ext in (s[1:] for s in LFS_SUFFIXES)
)


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
            self.sha256.encode(),
            len(self.data),
        )

    @property
    def oid(self) -> str:  # git blob id: of the content, or of the LFS pointer file
        return git_blob_sha(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    type: str  # "model" | "dataset" | "space"
    id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    created: str = field(default_factory=_now)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def history(self, rev: str) -> list[Commit]:
        out, commit = [], self.resolve(rev)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out

    def url(self, endpoint: str) -> str:
        prefix = "" if self.type == "model" else f"{self.type}s/"
        return f"{endpoint}/{prefix}{self.id}"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra


_API = r"^/api/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_PREFIX = r"^/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)"
ROUTES = [  # (methods, regex on the raw path, FakeHub method)
    ({"GET"}, r"^/api/whoami-v2$", "_whoami"),
    ({"POST"}, r"^/api/repos/create$", "_create_repo"),
    ({"DELETE"}, r"^/api/repos/delete$", "_delete_repo"),
    ({"POST"}, r"^/api/validate-yaml$", "_validate_yaml"),
    ({"GET"}, _API + r"(?:/revision/(?P<rev>[^/]+))?$", "_repo_info"),
    ({"POST"}, _API + r"/preupload/(?P<rev>[^/]+)$", "_preupload"),
    ({"POST"}, _API + r"/commit/(?P<rev>[^/]+)$", "_commit"),
    ({"GET"}, _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "_tree"),
    ({"POST"}, _API + r"/paths-info/(?P<rev>[^/]+)$", "_paths_info"),
    ({"GET"}, _API + r"/refs$", "_refs"),
    ({"GET"}, _API + r"/commits/(?P<rev>[^/]+)$", "_commits"),
    ({"POST"}, _API + r"/branch/(?P<rev>[^/]+)$", "_create_branch"),
    ({"POST"}, _PREFIX + r"\.git/info/lfs/objects/batch$", "_lfs_batch"),
    ({"PUT"}, r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", "_lfs_put"),
    ({"GET", "HEAD"}, _PREFIX + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "_resolve"),
]


class FakeHub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> content, filled by PUT /lfs-upload/<oid>
        self.unknown_routes: list[str] = []
        self.requests: list[str] = []  # "METHOD /path -> status", in arrival order
        self.lock = threading.RLock()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ----- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- direct (in-process) helpers for tests ---------------------------------------
    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        commit = self._repo(repo_type, repo_id).resolve(revision)
        return {path: blob.data for path, blob in commit.files.items()} if commit else {}

    def create_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_type, repo_id))
            if not repo.branches:
                self._add_commit(repo, "main", "initial commit", "", {".gitattributes": Blob(GITATTRIBUTES, False)})
            return repo

    # ----- internals -------------------------------------------------------------------
    def _repo(self, t: str, repo_id: str) -> Repo:
        repo = self.repos.get((t, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _add_commit(self, repo: Repo, branch: str, title: str, message: str, files: dict[str, Blob]) -> Commit:
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(f"{repo.id}{parent}{title}{time.time_ns()}{sorted(files)}".encode()).hexdigest()
        commit = Commit(oid, parent, title, message, _now(), files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        blob = commit.files.get(path)
        if blob is None:  # a folder
            entry = {"type": "directory", "oid": hashlib.sha1(f"{commit.oid}/{path}".encode()).hexdigest(), "size": 0}
        else:
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.data)}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
        entry["path"] = path
        if expand:  # last commit that changed this file (or anything under this folder)
            def state(c: Commit):
                return c.files.get(path) or {k: v for k, v in c.files.items() if k.startswith(path + "/")}
            last = commit
            for older in repo.history(commit.oid)[1:]:
                if state(older) != state(commit):
                    break
                last = older
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    # ----- route handlers: (params, query, body, headers) -> (status, json | bytes, headers)
    def _whoami(self, p, q, body, h):
        token = {"displayName": "fake", "role": "write"}
        return 200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                     "auth": {"type": "access_token", "accessToken": token}}

    def _create_repo(self, p, q, body, h):
        data = json.loads(body or b"{}")
        repo_id = f"{data.get('organization') or USER}/{data['name']}"
        t = data.get("type") or "model"
        with self.lock:
            if (t, repo_id) in self.repos:  # the client reads "url" from this 409 body when exist_ok=True
                raise HubError(409, f"You already created this {t} repo", url=self.repos[(t, repo_id)].url(self.url))
            repo = self.create_repo(repo_id, t)
        return 200, {"url": repo.url(self.url), "name": repo_id, "id": repo_id}

    def _delete_repo(self, p, q, body, h):
        data = json.loads(body or b"{}")
        repo_id = f"{data.get('organization') or USER}/{data['name']}"
        with self.lock:
            self._repo(data.get("type") or "model", repo_id)
            del self.repos[(data.get("type") or "model", repo_id)]
        return 200, {}

    def _validate_yaml(self, p, q, body, h):
        return 200, {"errors": [], "warnings": []}

    def _repo_info(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        commit = self._commit_at(repo, p.get("rev") or "main")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if q.get("blobs", ["false"])[0].lower() == "true":
                sib.update(size=len(blob.data), blobId=blob.oid)
                if blob.lfs:
                    sib["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sib)
        return 200, {"_id": repo.id, "id": repo.id, "author": repo.id.split("/")[0], "sha": commit.oid,
                     "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                     "tags": [], "createdAt": repo.created, "lastModified": commit.date, "siblings": siblings}

    def _preupload(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        commit = repo.resolve(p["rev"])  # a new branch has no commit yet
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > LFS_THRESHOLD
            info = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(f["path"]) if commit else None
            if existing is not None:  # lets the client skip unchanged files, as the Hub does
                info["oid"] = existing.sha256 if existing.lfs else existing.oid
            files.append(info)
        return 200, {"files": files, "commitOid": commit.oid if commit else None}

    def _commit(self, p, q, body, h):
        repo, rev = self._repo(p["t"][:-1], p["repo"]), p["rev"]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self.lock:
            head = self._commit_at(repo, rev)
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            pr_url = None
            if q.get("create_pr", ["0"])[0] == "1":
                num = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
                rev = f"refs/pr/{num}"
                repo.branches[rev] = head.oid
                pr_url = f"{repo.url(self.url)}/discussions/{num}"
            files = dict(head.files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    data = self.lfs_store.get(value["oid"])
                    if data is None or ("size" in value and value["size"] != len(data)):
                        raise HubError(400, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = Blob(data, True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {k: v for k, v in files.items() if not k.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = self._add_commit(repo, rev, header.get("summary", ""), header.get("description", ""), files)
        return 200, {"commitUrl": f"{repo.url(self.url)}/commit/{commit.oid}", "commitOid": commit.oid,
                     "pullRequestUrl": pr_url, "success": True}

    def _tree(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        commit = self._commit_at(repo, p["rev"])
        base = (p.get("path") or "").strip("/")
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = q.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        paths: set[str] = set()
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts)) + 1):
                paths.add(prefix + "/".join(parts[:i]))
        if base and not paths:
            raise HubError(404, f"{base} does not exist on {p['rev']}", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        return 200, [self._entry(repo, commit, path, expand) for path in sorted(paths)]

    def _paths_info(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        commit = self._commit_at(repo, p["rev"])
        if h.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body)
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or any(f.startswith(path + "/") for f in commit.files):
                out.append(self._entry(repo, commit, path, expand))
        return 200, out

    def _refs(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        def ref(name):
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": repo.branches[name]}
        branches = [ref(b) for b in repo.branches if not b.startswith("refs/")]
        prs = [ref(b) for b in repo.branches if b.startswith("refs/pr/")]
        return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs}

    def _commits(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        self._commit_at(repo, p["rev"])
        return 200, [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                      "authors": [{"user": USER}]} for c in repo.history(p["rev"])]

    def _create_branch(self, p, q, body, h):
        repo = self._repo(p["t"][:-1], p["repo"])
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        with self.lock:
            if p["rev"] in repo.branches:
                raise HubError(409, f"Reference {p['rev']} already exists")
            repo.branches[p["rev"]] = self._commit_at(repo, start).oid
        return 200, {}

    def _lfs_batch(self, p, q, body, h):
        self._repo(p["t"][:-1] if "t" in p else "model", p["repo"])
        objects = []
        for obj in json.loads(body)["objects"]:
            out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_store:  # no "actions" means: already uploaded
                out["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}", "expires_in": 3600}}
            objects.append(out)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, p, q, body, h):
        if hashlib.sha256(body).hexdigest() != p["oid"]:
            raise HubError(400, "sha256 mismatch")
        self.lfs_store[p["oid"]] = body
        return 200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}

    def _resolve(self, p, q, body, h):
        repo = self._repo(p["t"][:-1] if "t" in p else "model", p["repo"])
        commit = self._commit_at(repo, p["rev"])
        blob = commit.files.get(p["path"])
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers)
        headers["ETag"] = f'"{blob.sha256 if blob.lfs else blob.oid}"'
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
        data, status = blob.data, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", h.get("Range", "") or "")
        size = len(data)
        if match and (match[1] or match[2]) and size > 0:
            start, end = (int(match[1]), int(match[2] or size - 1)) if match[1] else (size - int(match[2]), size - 1)
            if start >= size:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            end = min(end, size - 1)
            data, status = data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return status, data, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip(), 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""
        for methods, pattern, name in ROUTES:
            match = re.match(pattern, split.path)
            if match and self.command in methods:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    status, payload, *extra = getattr(hub, name)(params, parse_qs(split.query), body, self.headers)
                    headers = extra[0] if extra else {}
                except HubError as err:
                    status, payload, headers = err.status, {"error": str(err), **err.extra}, dict(err.headers)
                    headers["X-Error-Message"] = str(err)
                    if err.code:
                        headers["X-Error-Code"] = err.code
                except Exception as err:  # a bug here should surface as a 500, not a hung client
                    status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
                return self._send(status, payload, headers)
        hub.unknown_routes.append(f"{self.command} {self.path}")
        self._send(404, {"error": f"FakeHub has no route for {self.command} {split.path}"}, {})

    def _send(self, status: int, payload, headers: dict) -> None:
        self.server.hub.requests.append(f"{self.command} {urlsplit(self.path).path} -> {status}")  # type: ignore
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        ctype = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle
