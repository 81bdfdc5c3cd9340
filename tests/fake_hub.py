"""A fake Hugging Face Hub on 127.0.0.1 for the model-id tests (``test_hub``, ``test_survey``).

It serves what ``huggingface_hub`` really calls: model info
(``/api/models/<repo>/revision/<rev>``), and ``/<repo>/resolve/<rev>/<file>`` for HEAD and
GET with ETag, X-Repo-Commit, Content-Length and byte ranges (206 + Content-Range), and
the Hub's X-Error-Code on 404s. It counts the bytes it serves per file, and can cut a
ranged download half way (``truncate``).
"""

import hashlib
import http.server
import json
import re
import threading


class FakeHub:
    """Repositories as {repo: (commit, {file: bytes})}; ``served`` counts bytes per file."""

    def __init__(self):
        self.repos, self.served, self.truncate, self.gated = {}, {}, set(), set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo, files):
        commit = hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = (commit, files)
        return commit

    def answer(self, handler, body):
        path = handler.path.split("?")[0]
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = (info or resolve).group(1) if (info or resolve) else None
        if repo in self.gated:
            return self.error(handler, "GatedRepo")
        if repo not in self.repos:
            return self.error(handler, "RepoNotFound")
        commit, files = self.repos[repo]
        if info:
            payload = json.dumps({"id": repo, "sha": commit, "private": False, "gated": False,
                                  "siblings": [{"rfilename": name} for name in files]}).encode()
            return self.send(handler, 200, {"Content-Type": "application/json"}, payload, body)
        name = resolve.group(3)
        if name not in files:
            return self.error(handler, "EntryNotFound")
        data = files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
        status, part = 200, data
        if ranged:
            start = int(ranged.group(1))
            stop = min(int(ranged.group(2)) + 1 if ranged.group(2) else len(data), len(data))
            status, part = 206, data[start:stop]
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if body:
            self.served[name] = self.served.get(name, 0) + len(part)
        self.send(handler, status, headers, part, body, cut=body and name in self.truncate and status == 206 and int(ranged.group(1)) > 0)

    def error(self, handler, code):
        self.send(handler, 404, {"X-Error-Code": code, "X-Error-Message": code}, b"{}", True)

    def send(self, handler, status, headers, payload, body, cut=False):
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload[: len(payload) // 2] if cut else payload)
            handler.wfile.flush()
            if cut:  # an interrupted download: the connection drops half way
                handler.close_connection = True
                handler.connection.shutdown(2)


def hub_env(tmp_path, monkeypatch):
    """A running :class:`FakeHub` with ``HF_ENDPOINT`` and a fresh ``HF_HOME`` pointing at it (fixture body)."""
    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
