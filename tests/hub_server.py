"""A Hub-like HTTP server on 127.0.0.1 for the tests: the endpoints ``huggingface_hub`` calls
to download a model repository (repo info, tree, resolve) and to upload one (create repo,
metadata check of a README, preupload, commit with inline base64 files). ``huggingface_hub``'s
own code talks to it through ``HF_ENDPOINT``, so the real download and upload code runs, with
no network."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

Repos = dict[str, dict[str, bytes]]


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _commit(files: dict[str, bytes]) -> str:
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + _git_oid(files[path]).encode())
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    repos: Repos
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:  # fmt: skip
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _not_found(self, head: bool = False) -> None:
        self._send(404, b'{"error": "Repository not found"}',
                   {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"},
                   head=head)  # fmt: skip

    def _route(self, head: bool = False) -> None:
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo = "/".join(parts[2:4])
            files = self.repos.get(repo)
            if files is None:
                return self._not_found(head)
            sha = _commit(files)
            if parts[4] == "revision":
                return self._json({"id": repo, "modelId": repo, "sha": sha, "private": False,
                                   "siblings": [{"rfilename": p} for p in sorted(files)]})
            return self._json([{"type": "file", "path": p, "size": len(files[p]),
                                "oid": _git_oid(files[p])} for p in sorted(files)])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            files = self.repos.get(repo)
            if files is None:
                return self._not_found(head)
            if name not in files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head=head)
            data = files[name]
            return self._send(200, data, {"X-Repo-Commit": _commit(files),
                                          "ETag": f'"{_git_oid(data)}"'}, head=head)  # fmt: skip
        return self._not_found(head)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"POST {path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml":  # the Hub checks a README's metadata block
            content = json.loads(body)["content"]
            ok = content.startswith("---\n") and "\n---\n" in content
            errors = [] if ok else [{"message": "no YAML metadata block"}]
            return self._json({"errors": errors, "warnings": []}, 200 if ok else 400)
        if path == "/api/repos/create":
            spec = json.loads(body)
            repo = f"{spec.get('organization') or 'user'}/{spec['name']}"
            self.repos.setdefault(repo, {})
            return self._json({"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular",
                                          "shouldIgnore": False} for f in files]})  # fmt: skip
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
            repo = "/".join(parts[2:4])
            files = self.repos.setdefault(repo, {})
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item.get("key") == "file":
                    value = item["value"]
                    files[value["path"]] = base64.b64decode(value["content"])
            sha = _commit(files)
            return self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                               "commitOid": sha, "success": True})  # fmt: skip
        return self._not_found()


class HubServer:
    """``with HubServer() as hub:`` serves ``hub.repos`` at ``hub.endpoint`` until the block ends.

    Examples:
        >>> with HubServer({"u/m": {"a.txt": b"hi"}}) as hub:
        ...     hub.endpoint.startswith("http://127.0.0.1:")
        True
    """

    def __init__(self, repos: Repos | None = None) -> None:
        self.repos: Repos = repos if repos is not None else {}
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"repos": self.repos, "requests": self.requests})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
