"""Shared support for the `nibble serve` tests (no tests here): starting and stopping a server on a
free port, raw HTTP requests, a Prometheus text parser, and `nibble generate` as a reference."""
import http.client
import json
import re
import signal
import subprocess
import time

import openai
import pytest

from conftest import SMOLLM2

API_KEY = "test-key-123"
MODEL = "smollm2"


class Server:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def client(self, **kw):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=kw.pop("api_key", API_KEY), max_retries=0,
                             timeout=300, **kw)

    def request(self, method, path, body=None, headers=None, auth=True):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = dict(headers or {})
        if auth:
            h.setdefault("Authorization", f"Bearer {API_KEY}")
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), data

    def metrics(self):
        status, _, data = self.request("GET", "/metrics", auth=False)
        assert status == 200
        return parse_prometheus(data.decode())


def start_server(nibble_bin, *extra):
    proc = subprocess.Popen(
        [nibble_bin, "serve", "-m", str(SMOLLM2), "--port", "0", "--api-key", API_KEY, "--served-model-name", MODEL,
         "-t", "2", "--kv-cache-memory", "256MiB", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+) \(model smollm2", line)
    if m is None:
        proc.kill()
        pytest.fail(f"no ready line from nibble serve: {line!r} {proc.stderr.read()}")
    srv = Server(proc, int(m.group(1)))
    deadline = time.time() + 60
    while srv.request("GET", "/health", auth=False)[0] != 200:
        assert time.time() < deadline, "server did not become healthy"
        time.sleep(0.1)
    return srv


def stop_server(srv):
    srv.proc.send_signal(signal.SIGINT)
    out, err = srv.proc.communicate(timeout=60)
    assert srv.proc.returncode == 0, err  # SIGINT shuts it down cleanly
    assert "nibble serve: stopped" in out


def generate_cli(nibble_bin, prompt, n, chat=False, system=None):
    args = [nibble_bin, "generate", "-m", str(SMOLLM2), "-p", prompt, "-n", str(n), "--temp", "0", "--quiet", "-t", "1"]
    if chat:
        args.append("--chat")
    if system is not None:
        args += ["--system", system]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.endswith("\n")
    out = out[:-1]
    if not chat:  # plain generation echoes the prompt first
        assert out.startswith(prompt)
        out = out[len(prompt):]
    return out


def parse_prometheus(text):
    """Minimal parser for the text format 0.0.4: {(name, labels): value}, and the declared types."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)', line)
        assert m, f"bad sample line {line!r}"
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def wait_for_idle(server, timeout=10.0):
    """Polls /metrics until nothing runs or waits and no KV block is referenced."""
    deadline = time.time() + timeout
    while True:
        samples, _ = server.metrics()
        running = samples[("nibble_num_requests_running", ())]
        waiting = samples[("nibble_num_requests_waiting", ())]
        used = samples[("nibble_kv_blocks_used", ())]
        if running == 0 and waiting == 0 and used == 0:
            return samples
        assert time.time() < deadline, f"engine not idle: running={running} waiting={waiting} blocks_used={used}"
        time.sleep(0.05)


PROMPT = "The three primary colors are"
