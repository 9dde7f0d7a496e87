"""The fake model server (tests/fixtures/llm_server.py) as a pytest helper:
started on a free 127.0.0.1 port, scripted and inspected over its control
endpoints. Import `llm_server` into a test module to use the fixture."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

SERVER = os.path.join(os.path.dirname(__file__), "fixtures", "llm_server.py")


class LlmServer:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on 127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"llm_server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"
        # The API base the extension is configured with.
        self.url = f"{self.base}/v1"

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        # Never through a proxy: the server is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def reset(self):
        self._call("POST", "/_reset", {})

    def script(self, *entries):
        self._call("POST", "/_script", {"responses": list(entries)})

    def rules(self, *rules):
        self._call("POST", "/_rules", {"rules": list(rules)})

    def requests(self):
        return self._call("GET", "/_requests")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def llm_server():
    server = LlmServer()
    yield server
    server.stop()


def wait_until(predicate, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
