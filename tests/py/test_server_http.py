"""`nibble serve` at the HTTP level: bad requests (each a 4xx with OpenAI's error object, the server
still healthy afterwards), auth, garbage bytes, HTTP/1.0 streaming, client disconnects (the request is
cancelled and its KV blocks freed), and the Prometheus /metrics page."""
import json
import math
import re
import socket
import time

import pytest

from test_server_common import API_KEY, MODEL, PROMPT, start_server, stop_server, wait_for_idle


@pytest.fixture(scope="module")
def server(nibble_bin):
    srv = start_server(nibble_bin)
    yield srv
    stop_server(srv)


def assert_openai_error(status, data, expected_status):
    assert status == expected_status, data
    body = json.loads(data)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] in ("invalid_request_error", "server_error")
    return err


BAD_REQUESTS = [
    # (name, method, path, body, headers, status, param)
    ("malformed json", "POST", "/v1/completions", '{"model": "smollm2", "prompt": ', {}, 400, None),
    ("not an object", "POST", "/v1/completions", "[1, 2, 3]", {}, 400, None),
    ("prompt wrong type", "POST", "/v1/completions", {"prompt": {"a": 1}}, {}, 400, "prompt"),
    ("max_tokens string", "POST", "/v1/completions", {"prompt": "hi", "max_tokens": "10"}, {}, 400, "max_tokens"),
    ("max_tokens negative", "POST", "/v1/completions", {"prompt": "hi", "max_tokens": -5}, {}, 400, "max_tokens"),
    ("max_tokens huge", "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, {}, 400, "prompt"),
    ("temperature wrong type", "POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}, {}, 400, "temperature"),
    ("unknown model", "POST", "/v1/chat/completions",
     {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, {}, 404, "model"),
    ("empty messages", "POST", "/v1/chat/completions", {"model": MODEL, "messages": []}, {}, 400, "messages"),
    ("bad role", "POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, {}, 400,
     "messages[0].role"),
    ("prompt over context", "POST", "/v1/completions", {"prompt": "hello " * 9000, "max_tokens": 4}, {}, 400, "prompt"),
    ("token id outside vocab", "POST", "/v1/completions", {"prompt": [1, 2, 10**8]}, {}, 400, "prompt"),
    ("echo", "POST", "/v1/completions", {"prompt": "x", "echo": True}, {}, 400, "echo"),
    ("oversized body", "POST", "/v1/completions", '{"prompt": "' + "a" * (2 << 20) + '"}', {}, 413, None),
    ("unknown route", "GET", "/v1/engines", None, {}, 404, None),
    ("wrong method", "GET", "/v1/completions", None, {}, 405, None),
    ("wrong method health", "POST", "/health", "{}", {}, 405, None),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(server, case):
    name, method, path, body, headers, status, param = case
    got_status, _, data = server.request(method, path, body, headers)
    err = assert_openai_error(got_status, data, status)
    if param is not None:
        assert err["param"] == param
    if name == "prompt over context":
        assert "8192" in err["message"] and "context" in err["message"]
        assert err["code"] == "context_length_exceeded"
    assert server.request("GET", "/health", auth=False)[0] == 200


def test_auth(server):
    body = {"prompt": "x", "max_tokens": 1}
    err = assert_openai_error(*server.request("POST", "/v1/completions", body, auth=False)[::2], 401)
    assert err["code"] == "invalid_api_key"
    status, headers, data = server.request("POST", "/v1/completions", body, {"Authorization": "Bearer nope"})
    assert_openai_error(status, data, 401)
    assert headers.get("WWW-Authenticate") == "Bearer"
    # /health and /metrics need no key.
    assert server.request("GET", "/health", auth=False)[0] == 200
    assert server.request("GET", "/metrics", auth=False)[0] == 200


def test_raw_garbage_does_not_kill_the_server(server):
    for junk in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 5\r\n\r\n{\"a\"", b"G" * 70000):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert server.request("GET", "/health", auth=False)[0] == 200


def test_http10_stream_is_close_delimited(server):
    body = json.dumps({"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}).encode()
    req = (f"POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head
    events = [l for l in payload.decode().split("\n\n") if l]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_disconnect_cancels_and_frees_blocks(server):
    before, _ = server.metrics()
    # Greedy continuation of this prompt runs far past the point where the client hangs up.
    body = json.dumps({"prompt": "Once upon a time, in a land far away, there lived a dragon who", "max_tokens": 2000,
                       "temperature": 0, "stream": True}).encode()
    req = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    s.sendall(req)
    got = b""
    while b"data: {" not in got:
        chunk = s.recv(4096)
        assert chunk, "connection closed before the first chunk"
        got += chunk
    # Engine stats are refreshed at the end of a step, so they may lag the first chunk by a step.
    deadline = time.time() + 10
    while True:
        mid, _ = server.metrics()
        if mid[("nibble_num_requests_running", ())] >= 1 and mid[("nibble_kv_blocks_used", ())] >= 1:
            break
        assert time.time() < deadline, "the request never showed as running"
        time.sleep(0.02)
    t0 = time.time()
    s.close()
    after = wait_for_idle(server, timeout=5.0)
    freed_in = time.time() - t0
    cancelled = ("nibble_requests_total", (("status", "cancelled"),))
    assert after[cancelled] == before[cancelled] + 1
    generated = after[("nibble_engine_generated_tokens_total", ())] - before[("nibble_engine_generated_tokens_total", ())]
    assert generated < 2000  # it really stopped
    assert freed_in < 2.0, freed_in


def test_metrics_format_and_accounting(server):
    before, _ = server.metrics()
    r = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    after, types = server.metrics()
    ok = ("nibble_requests_total", (("status", "success"),))
    assert after[ok] == before[ok] + 1
    assert after[("nibble_prompt_tokens_total", ())] - before[("nibble_prompt_tokens_total", ())] == r.usage.prompt_tokens
    assert (after[("nibble_generation_tokens_total", ())] - before[("nibble_generation_tokens_total", ())]
            == r.usage.completion_tokens)
    for h in ("nibble_time_to_first_token_seconds", "nibble_time_per_output_token_seconds",
              "nibble_e2e_request_latency_seconds"):
        assert types[h] == "histogram"
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in after.items() if k[0] == h + "_bucket"))
        counts = [v for _, v in buckets]
        assert buckets[-1][0] == math.inf and counts == sorted(counts)  # cumulative
        assert counts[-1] == after[(h + "_count", ())]
        assert after[(h + "_sum", ())] >= 0
    assert after[("nibble_e2e_request_latency_seconds_count", ())] == before[("nibble_e2e_request_latency_seconds_count", ())] + 1
    for name in ("nibble_kv_blocks_used", "nibble_kv_blocks_free", "nibble_prefix_cache_hit_rate",
                 "nibble_num_requests_waiting", "nibble_num_requests_running"):
        assert types[name] == "gauge"
    assert types["nibble_preemptions_total"] == "counter"
    assert after[("nibble_kv_blocks_used", ())] + after[("nibble_kv_blocks_free", ())] == after[("nibble_kv_blocks_total", ())]
    assert 0 <= after[("nibble_prefix_cache_hit_rate", ())] <= 1
    # Every sample belongs to a declared metric family.
    for (name, _), _ in after.items():
        assert re.sub(r"_(bucket|sum|count)$", "", name) in types or name in types, name
