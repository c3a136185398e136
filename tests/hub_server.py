"""A local stand-in for the Hugging Face Hub's file endpoint, for tests that cannot reach the
internet: with ``HF_ENDPOINT`` set to :attr:`HubServer.url`, huggingface_hub (and so timm)
downloads from it.

It answers what ``hf_hub_download`` asks (huggingface_hub's file_download.py): a HEAD, then a
GET, of ``/{org}/{repo}/resolve/{revision}/{file}``, with the headers the hub sends
(``X-Repo-Commit``, ``ETag``, ``Content-Length``); a file the repository lacks gets 404 with
``X-Error-Code: EntryNotFound``, an unknown repository ``RepoNotFound``. Every request is
recorded as (method, path).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves ``files``, ``{(repo id, file name): bytes}``, on 127.0.0.1 (a free port)."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path))
                data, repo_known = server.lookup(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if repo_known else "RepoNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = _range_start(self.headers.get("Range"))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def lookup(self, path: str) -> tuple[bytes | None, bool]:
        """(the file's bytes or None, whether the repository is known) for a resolve path."""
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None, False
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        return self.files.get((repo, name)), any(r == repo for r, _ in self.files)

    def asked(self, name: str) -> list[str]:
        """The methods of the requests for file ``name``, in order."""
        return [m for m, p in self.requests if p.split("?")[0].endswith("/" + name)]

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes="):
        return 0
    return int(header[6:].split("-")[0] or 0)


def tiny_resnet_weights(seed: int = 0) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A state dict of timm's ``test_resnet`` (about 470k values) in safetensors form, and the
    tensors: what the hub's ``timm/test_resnet.r160_in1k`` holds, with weights of our own."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    return save(state), state
