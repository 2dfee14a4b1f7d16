"""A git host for deploy tests: git's own smart-HTTP server (`git http-backend`, as CGI)
behind a small WSGI server on 127.0.0.1, with repositories made from dictionaries of files.

`GitServer(root, token=...)` asks for HTTP basic credentials (any user, the token as
password) on every repository whose name starts with `private-`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class GitServer:
    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.token = token
        root.mkdir(parents=True, exist_ok=True)
        self._server = make_server(
            "127.0.0.1", 0, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self.requests: list[str] = []
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repository(
        self, owner: str, name: str, files: dict[str, str], branch: str = "main"
    ) -> Path:
        """A bare repository at `<owner>/<name>.git` with one commit of `files` on
        `branch` (the default branch). Another call for the same one adds a branch."""
        bare = self.root / owner / f"{name}.git"
        work = self.root / ".work" / owner / name / branch
        work.mkdir(parents=True)
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
            if path.endswith(".sh"):
                (work / path).chmod(0o755)
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*git, "init", "-q", "-b", branch, str(work)], check=True)
        subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
        subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
        if not bare.exists():
            subprocess.run(["git", "init", "-q", "--bare", "-b", branch, str(bare)], check=True)
            # http-backend serves only repositories that say so.
            (bare / "git-daemon-export-ok").touch()
            subprocess.run(
                ["git", "-C", str(bare), "config", "http.receivepack", "false"], check=True
            )
        subprocess.run(
            [*git, "-C", str(work), "push", "-q", str(bare), f"{branch}:{branch}"], check=True
        )
        return bare

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        path = environ.get("PATH_INFO", "")
        self.requests.append(path)
        if path.split("/")[2:3] and path.split("/")[2].startswith("private-"):
            expected = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
            if environ.get("HTTP_AUTHORIZATION") != f"Basic {expected}":
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
                return iter([b"credentials needed\n"])
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "REMOTE_ADDR": "127.0.0.1",
            "PATH": os.environ["PATH"],
        }
        if environ.get("HTTP_GIT_PROTOCOL"):
            env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        if environ.get("HTTP_CONTENT_ENCODING") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        env["CONTENT_LENGTH"] = str(len(body))
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = "200 OK"
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            if not line:
                continue
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            else:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return iter([payload])
