"""`nibble bench serve` end to end.

Against a fake OpenAI server written here (known delays, known failures, every request recorded):
the measured TTFT / ITL / TPOT / E2E must match the delays the fake slept, the concurrency limit
must hold, failures must be counted by kind, and prompts must have exactly the requested token
lengths by HF `tokenizers` (an independent tokenizer built from the GGUF vocabulary).
Against the real `nibble serve` with SmolLM2: 16 streamed requests complete, each generates exactly
its max_tokens (ignore_eos), percentiles are ordered, and the KV cache is empty afterwards.
"""
import json
import re
import select
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import SHARED, SMOLLM2
from test_tokenizer_smollm2 import gguf_vocab, hf  # noqa: F401  (fixtures: the independent tokenizer)

FIRST_DELAY = 0.08   # fake server: seconds before the first token
TOKEN_DELAY = 0.03   # fake server: seconds between tokens


class FakeOpenAI:
    """A streaming /v1/completions server. mode(k) picks how the k-th request (by arrival) ends."""

    def __init__(self, mode=lambda k: "ok"):
        self.mode = mode
        self.lock = threading.Lock()
        self.bodies, self.arrivals = [], []
        self.in_flight = self.max_in_flight = 0
        self.num_done = 0  # streams that reached [DONE]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                elif self.path == "/metrics":
                    with fake.lock:
                        n = fake.in_flight
                    body = ("# TYPE nibble_num_requests_running gauge\n"
                            f"nibble_num_requests_running {n}\n"
                            f"nibble_kv_blocks_used {3 * n}\n"
                            f'nibble_time_to_first_token_seconds_bucket{{le="+Inf"}} 999\n'
                            f'nibble_requests_total{{status="success"}} {fake.num_done}\n')
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    k = len(fake.bodies)
                    fake.bodies.append(body)
                    fake.arrivals.append(time.monotonic())
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                self.counted_out = False
                try:
                    fake.stream(self, body, fake.mode(k))
                finally:
                    if not self.counted_out:
                        with fake.lock:
                            fake.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # listen() backlog: read in __init__, so it must be a class attribute

            def handle_error(self, request, client_address):
                pass  # clients that stop reading early (malformed streams) are expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def stream(self, h, body, mode):
        if mode == "http500":
            data = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
            h.send_response(500)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def write(b):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
            h.wfile.flush()

        def event(obj):
            return ("data: " + json.dumps(obj) + "\n\n").encode()

        n = body["max_tokens"]
        time.sleep(FIRST_DELAY)
        for i in range(n):
            if i:
                time.sleep(TOKEN_DELAY)
            e = event({"id": "c", "object": "text_completion", "model": body.get("model"),
                       "choices": [{"index": 0, "text": " tok", "finish_reason": "length" if i == n - 1 else None}]})
            cut = (7 * i) % len(e)  # split events across HTTP chunks at shifting offsets
            if cut:
                write(e[:cut])
            write(e[cut:])
            if mode == "malformed" and i == 1:
                write(b"data: {this is not json\n\n")
                break
            if mode == "drop" and i == 1:
                h.close_connection = True
                return  # the connection closes without the last chunk
        usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n, "total_tokens": 0}
        write(event({"id": "c", "object": "text_completion", "choices": [], "usage": usage}))
        with self.lock:  # out of flight before [DONE], so a scrape right after the run sees 0
            self.in_flight -= 1
            self.num_done += 1
        h.counted_out = True
        write(b"data: [DONE]\n\n")
        h.wfile.write(b"0\r\n\r\n")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def bench(nibble_bin, url, tmp_path, *args, name="out.json"):
    out = tmp_path / name
    r = subprocess.run([nibble_bin, "bench", "serve", "--url", url, "--json", str(out), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    return r, json.loads(out.read_text())


def assert_ordered(summary):
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"], summary


def test_measurements_match_the_servers_delays(nibble_bin, tmp_path):
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", 16, "--max-concurrency", 4,
                     "--input-len", 20, "--output-len-range", "4:12", "--seed", 3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert j["completed"] == 16 and j["failed"] == 0
    assert j["model"] == "fake-model"  # asked GET /v1/models
    reqs = j["requests"]
    # What the server saw: streamed completions with usage and ignore_eos, lengths from the range.
    assert len(fake.bodies) == 16
    for b in fake.bodies:
        assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
        assert b["ignore_eos"] is True and b["model"] == "fake-model" and b["temperature"] == 0
        assert 4 <= b["max_tokens"] <= 12
    assert sorted(b["max_tokens"] for b in fake.bodies) == sorted(q["max_tokens"] for q in reqs)
    assert len({b["max_tokens"] for b in fake.bodies}) > 1
    for q in reqs:
        assert q["output_tokens"] == q["max_tokens"] and q["usage_reported"]
        assert q["num_content_chunks"] == q["max_tokens"]
        assert q["prompt_tokens"] == 20  # the fake counts words
        # E2E >= the time the fake slept for this request; TTFT >= its first delay.
        assert q["ttft_ms"] >= FIRST_DELAY * 1e3 - 1
        assert q["e2e_ms"] >= (FIRST_DELAY + TOKEN_DELAY * (q["max_tokens"] - 1)) * 1e3 - 1
    assert j["total_output_tokens"] == sum(b["max_tokens"] for b in fake.bodies)
    assert j["num_short_of_max_tokens"] == 0
    # Aggregates vs the delays (upper bounds loose: CI machines are busy).
    assert FIRST_DELAY * 1e3 - 1 <= j["ttft_ms"]["p50"] < FIRST_DELAY * 1e3 + 150
    assert 0.8 * TOKEN_DELAY * 1e3 <= j["itl_ms"]["mean"] < TOKEN_DELAY * 1e3 + 30
    assert 0.8 * TOKEN_DELAY * 1e3 <= j["tpot_ms"]["mean"] < TOKEN_DELAY * 1e3 + 30
    assert j["itl_ms"]["count"] == sum(q["max_tokens"] - 1 for q in reqs)
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert_ordered(j[key])
    # Throughput is what it says: completed / duration, tokens / duration.
    assert j["request_throughput"] == pytest.approx(16 / j["duration_s"])
    assert j["output_throughput"] == pytest.approx(j["total_output_tokens"] / j["duration_s"])
    # The concurrency limit held on both sides; /metrics peaks are consistent with the fake's gauges.
    assert j["peak_in_flight_client"] == 4
    assert fake.max_in_flight <= 4
    assert 1 <= j["peak_running_requests"] <= fake.max_in_flight
    assert j["peak_kv_blocks_used"] == 3 * j["peak_running_requests"]
    assert 0 < j["mean_running_requests"] <= j["peak_running_requests"]
    assert j["kv_blocks_used_after"] == 0
    assert set(j["metrics_peaks"]) == {"nibble_num_requests_running", "nibble_kv_blocks_used"}
    assert j["counter_deltas"] == {'nibble_requests_total{status="success"}': 16}
    # The text report carries the same figures.
    assert re.search(r"Successful requests:\s+16\n", r.stdout)
    assert re.search(r"P99 ITL \(ms\):\s+[0-9.]+\n", r.stdout)


def test_request_max_tokens_closes_streams_at_their_output_length(nibble_bin, tmp_path):
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", 8, "--input-len", 4,
                     "--output-len-range", "2:6", "--request-max-tokens", 64)
        time.sleep(0.3)  # the fake notices the closed connections at its next write
        num_done = fake.num_done
    assert r.returncode == 0, r.stdout + r.stderr
    assert j["completed"] == 8 and j["num_stopped_by_client"] == 8
    assert all(b["max_tokens"] == 64 for b in fake.bodies)
    for q in j["requests"]:
        assert q["stopped_by_client"] and 2 <= q["target_tokens"] <= 6
        assert q["output_tokens"] == q["num_content_chunks"] == q["target_tokens"]
        # Closed at its length: far sooner than the 64 tokens the server was asked for.
        assert q["e2e_ms"] < (FIRST_DELAY + TOKEN_DELAY * 32) * 1e3
    assert num_done == 0  # no stream ran to its end


def test_duration_limit_stops_sending(nibble_bin, tmp_path):
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", 200, "--max-concurrency", 2,
                     "--input-len", 4, "--output-len", 3, "--duration-s", 1.0)
    assert r.returncode == 0, r.stdout + r.stderr
    # Each request takes >= 0.14 s, two at a time: at most ~15 start within 1 s.
    assert 2 <= j["num_sent"] <= 16
    assert j["completed"] == j["num_sent"] == len(fake.bodies) == len(j["requests"])
    assert all(q["start_s"] < 1.0 for q in j["requests"])
    assert "Requests sent (before --duration-s):" in r.stdout


def test_failures_are_counted_by_kind(nibble_bin, tmp_path):
    modes = ["ok", "http500", "malformed", "drop"]
    with FakeOpenAI(lambda k: modes[k % 4]) as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", 16, "--max-concurrency", 1,
                     "--input-len", 8, "--output-len", 4)
    assert r.returncode == 1  # some requests failed
    assert j["completed"] == 4 and j["failed"] == 12
    errors = [q["error"] for q in j["requests"] if not q["success"]]
    assert sum("HTTP 500" in e and "boom" in e for e in errors) == 4
    assert sum("malformed SSE" in e for e in errors) == 4
    assert sum("chunked" in e for e in errors) == 4
    assert j["ttft_ms"]["count"] == 4


def test_unreachable_server_fails_every_request_cleanly(nibble_bin, tmp_path):
    with FakeOpenAI() as fake:
        url = fake.url  # the port is closed again when the block ends
    r, j = bench(nibble_bin, url, tmp_path, "--model", "m", "--num-prompts", 5, "--input-len", 4, "--output-len", 2)
    assert r.returncode == 1
    assert j["completed"] == 0 and j["failed"] == 5
    assert all("cannot connect" in q["error"] for q in j["requests"])
    assert j["ttft_ms"]["p50"] is None


@pytest.mark.parametrize("args,words", [
    (["--input-len", "5", "--input-len-range", "1:3"], "not both"),
    (["--request-rate", "0"], "--request-rate"),
    (["--url", "ftp://x"], "--url"),
    (["--output-len-range", "9:3"], "--output-len-range"),
    (["--bogus"], "unknown option"),
])
def test_bad_options_are_one_line_errors(nibble_bin, args, words):
    r = subprocess.run([nibble_bin, "bench", "serve", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr


@pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 GGUF missing: run scripts/setup.sh")
def test_prompts_have_exact_token_lengths_and_a_shared_prefix(nibble_bin, hf, tmp_path):
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "-m", SMOLLM2, "--num-prompts", 24, "--input-len-range", "1:300",
                     "--shared-prefix-len", 40, "--output-len", 1, "--seed", 11)
    assert r.returncode == 0, r.stdout + r.stderr
    assert j["exact_prompt_lengths"] is True
    by_prompt = {b["prompt"]: b for b in fake.bodies}
    assert len(by_prompt) == 24  # all distinct
    ids = {p: hf.encode(p, add_special_tokens=False).ids for p in by_prompt}
    # Each request's prompt has exactly the length the report says it built, within the range.
    built = sorted(q["prompt_len"] for q in j["requests"])
    assert sorted(len(v) for v in ids.values()) == built
    assert all(41 <= n <= 340 for n in built)
    assert len(set(built)) > 5
    # The first 40 tokens are shared by every prompt; token 41 is not.
    prefixes = {tuple(v[:40]) for v in ids.values()}
    assert len(prefixes) == 1
    assert len({v[40] for v in ids.values()}) > 1


LLAMA2_SPM = SHARED / "llama2-tokenizer.model"


@pytest.mark.skipif(not LLAMA2_SPM.exists(), reason="llama2 tokenizer.model missing: run scripts/setup.sh")
def test_prompts_have_exact_lengths_with_a_sentencepiece_tokenizer(nibble_bin, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_SPM))
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--tokenizer", LLAMA2_SPM, "--num-prompts", 12,
                     "--input-len-range", "1:200", "--shared-prefix-len", 17, "--output-len", 1, "--seed", 4)
    assert r.returncode == 0, r.stdout + r.stderr
    lengths = {b["prompt"]: len(sp.encode(b["prompt"])) for b in fake.bodies}  # dummy prefix on, no BOS
    assert sorted(lengths.values()) == sorted(q["prompt_len"] for q in j["requests"])
    assert all(18 <= n <= 217 for n in lengths.values())


def test_same_seed_same_workload(nibble_bin, tmp_path):
    def workload(seed, name):
        with FakeOpenAI() as fake:
            r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", 12, "--input-len-range", "3:30",
                         "--output-len-range", "1:5", "--request-rate", 200, "--seed", seed, name=name)
        assert r.returncode == 0, r.stderr
        return sorted((b["prompt"], b["max_tokens"]) for b in fake.bodies)

    a, b, c = workload(7, "a.json"), workload(7, "b.json"), workload(8, "c.json")
    assert a == b
    assert a != c


def test_poisson_arrivals_reach_the_server_at_the_rate(nibble_bin, tmp_path):
    rate, n = 40.0, 60
    with FakeOpenAI() as fake:
        r, j = bench(nibble_bin, fake.url, tmp_path, "--num-prompts", n, "--request-rate", rate, "--input-len", 4,
                     "--output-len", 1, "--seed", 1)
    assert r.returncode == 0, r.stderr
    gaps = [b - a for a, b in zip(fake.arrivals, fake.arrivals[1:])]
    mean = sum(gaps) / len(gaps)
    # Exponential gaps with mean 1/rate; with 59 gaps the sample mean is within +-50% at > 4 sigma.
    assert 0.5 / rate < mean < 1.5 / rate, mean
    starts = sorted(q["start_s"] for q in j["requests"])
    assert starts[-1] > 0.5 * n / rate  # not sent all at once


# ---- the real server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nibble_server(nibble_bin):
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 GGUF missing: run scripts/setup.sh")
    p = subprocess.Popen([nibble_bin, "serve", "-m", str(SMOLLM2), "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)
        line = p.stdout.readline() if ready else ""
        m = re.search(r"listening on (http://\S+)", line)
        assert m, f"nibble serve did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
        yield m.group(1)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_real_server_16_streamed_requests(nibble_bin, nibble_server, tmp_path):
    r, j = bench(nibble_bin, nibble_server, tmp_path, "-m", SMOLLM2, "--num-prompts", 16, "--request-rate", 20,
                 "--input-len-range", "16:96", "--output-len-range", "8:40", "--seed", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert j["completed"] == 16 and j["failed"] == 0
    for q in j["requests"]:
        assert q["usage_reported"]
        assert q["prompt_tokens"] == q["prompt_len"]  # the server tokenized our prompt to the built length
        assert q["output_tokens"] == q["max_tokens"], q  # ignore_eos: exactly max_tokens
        assert q["ttft_ms"] <= q["e2e_ms"]
    assert j["total_output_tokens"] == sum(q["max_tokens"] for q in j["requests"])
    assert j["total_input_tokens"] == sum(q["prompt_len"] for q in j["requests"])
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert j[key]["count"] > 0
        assert_ordered(j[key])
    assert j["ttft_ms"]["count"] == 16 and j["e2e_ms"]["count"] == 16
    assert j["peak_running_requests"] >= 1 and j["peak_kv_blocks_used"] >= 1
    assert j["kv_blocks_used_after"] == 0  # every block freed once the streams ended
