"""A local stand-in for the Hugging Face Hub API, enough for create_repo + upload_folder.

Tests point the real huggingface_hub client at it with HF_ENDPOINT and read back what was sent
(requests, headers and uploaded files). It answers only on loopback.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.repos: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                body = self._body()
                hub.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                     "body": body})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    hub.repos.append(request)
                    name = request["name"]
                    repo_id = f"{request.get('organization') or 'test-user'}/{name}" if "/" not in name else name
                    self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
                elif path == "/api/validate-yaml":  # the client checks a README's metadata first
                    self._reply(200, {"errors": [], "warnings": []})
                elif "/preupload/" in path:
                    files = json.loads(body)["files"]
                    self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
                elif "/commit/" in path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            hub.files[value["path"]] = base64.b64decode(value["content"])
                    repo_id = path.split("/api/models/")[1].split("/commit/")[0]
                    self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{'1' * 40}",
                                      "commitOid": "1" * 40,
                                      "pullRequestUrl": None})
                else:
                    self._reply(404, {"error": f"unexpected {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class FakeHubRepos:
    """A read-only stand-in for the Hub's download API, serving local folders as model repos
    ({repo_id: folder}): repo info, file trees and files, enough for ``snapshot_download`` and
    diffusers' ``DiffusionPipeline.download``. Point the client at ``url`` with HF_ENDPOINT."""

    COMMIT = "c0ffee" * 6 + "c0ff"

    def __init__(self, repos: dict):
        import hashlib
        import os

        self.requests: list[str] = []
        files = {repo: sorted(os.path.relpath(os.path.join(root, name), folder)
                              for root, _, names in os.walk(folder) for name in names)
                 for repo, folder in repos.items()}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict, include_body: bool) -> None:
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if include_body:
                    self.wfile.write(body)

            def _answer(self, include_body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(f"{self.command} {path}")
                for repo, names in files.items():
                    info = {"id": repo, "modelId": repo, "sha": hub.COMMIT, "private": False,
                            "siblings": [{"rfilename": n} for n in names]}
                    if path in (f"/api/models/{repo}", f"/api/models/{repo}/revision/main"):
                        return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"},
                                          include_body)
                    if path.startswith(f"/api/models/{repo}/tree/"):
                        tree = [{"type": "file", "path": n, "size": os.path.getsize(os.path.join(repos[repo], n)),
                                 "oid": hashlib.sha1(n.encode()).hexdigest()} for n in names]
                        return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"},
                                          include_body)
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[1]
                        if name in names:
                            body = open(os.path.join(repos[repo], name), "rb").read()
                            etag = hashlib.sha256(body).hexdigest()
                            return self._send(200, body, {"ETag": f'"{etag}"', "X-Repo-Commit": hub.COMMIT},
                                              include_body)
                        return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, include_body)
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, include_body)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
