"""`nibble serve` against the official `openai` client, unmodified: completions and chat, streamed
and not, with n, stop, logprobs and seed, and many concurrent streams.

References are independent of the server: `nibble generate` (a separate code path: one sequence,
no engine, no HTTP) for greedy text, Python's str.find for stop strings, the mathematical
properties of logprobs, and OpenAI's response formats as the openai package parses them.
"""
import math
import threading
import time

import openai
import pytest

from test_server_common import MODEL, PROMPT, generate_cli, start_server, stop_server, wait_for_idle


@pytest.fixture(scope="module")
def server(nibble_bin):
    srv = start_server(nibble_bin)
    yield srv
    stop_server(srv)


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert server.client().models.retrieve(MODEL).id == MODEL


def test_completion_greedy_equals_generate(server, nibble_bin):
    r = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == generate_cli(nibble_bin, PROMPT, 40)
    assert r.usage.completion_tokens <= 40
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("length", "stop")
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 40


def test_chat_greedy_equals_generate_chat(server, nibble_bin):
    # A system message of its own: the first request with this prompt has no prefix-cache hits (the
    # cached case is test_greedy_is_independent_of_prefix_cache).
    system = "You answer geography questions tersely (chat test)."
    q = "What is the capital of France? Answer in one sentence."
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
    r = server.client().chat.completions.create(model=MODEL, messages=msgs, max_tokens=48, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == generate_cli(nibble_bin, q, 48, chat=True, system=system)
    # Content given as a list of text parts renders the same prompt.
    parts = [{"type": "text", "text": q[:10]}, {"type": "text", "text": q[10:]}]
    r2 = server.client().chat.completions.create(model=MODEL, messages=[msgs[0], {"role": "user", "content": parts}],
                                                 max_tokens=48, temperature=0)
    assert r2.usage.prompt_tokens == r.usage.prompt_tokens
    assert r2.usage.prompt_tokens_details.cached_tokens > 0  # same prompt: its full blocks came from the cache


def test_greedy_is_independent_of_prefix_cache(server):
    """A prefill that starts after cached blocks must give the same logits as a whole-prompt prefill
    (batch-invariant kernels; before they were, this diverged after a few tokens)."""
    msgs = [{"role": "user", "content": "Name two fruits."}]
    c = server.client()
    first = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32, temperature=0)
    again = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert first.choices[0].message.content == again.choices[0].message.content


def test_logprobs_are_independent_of_batch_size(server):
    """Eight identical prompts share steps (M = 32 rows: the wide kernels); each must see exactly the
    logits of the prompt alone (M = 4)."""
    c = server.client()
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=1, temperature=0, logprobs=0)
    alone = c.completions.create(n=1, **kw).choices[0].logprobs.token_logprobs[0]
    batch = [ch.logprobs.token_logprobs[0] for ch in c.completions.create(n=8, **kw).choices]
    assert batch == [alone] * 8


def test_streamed_concatenation_equals_non_streamed(server):
    # Each comparison runs after a warm-up of the same prompt, so both sides see the same prefix-cache
    # hits (the comparison is about framing; cache independence has its own test).
    c = server.client()
    full = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0)
    chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert all(ch.object == "text_completion" and ch.id == chunks[0].id for ch in chunks)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens

    msgs = [{"role": "user", "content": "Name two fruits."}]
    c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1, temperature=0)  # warm-up
    full = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32, temperature=0)
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # Without include_usage there is no usage chunk.
    plain = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0, stream=True))
    assert all(ch.usage is None for ch in plain) and all(ch.choices for ch in plain)


def token_boundary_stop(server):
    """A stop string that spans a token boundary in the greedy completion, and that completion."""
    r = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, logprobs=0)
    text, tokens = r.choices[0].text, r.choices[0].logprobs.tokens
    assert "".join(tokens) == text
    pos = 0
    for i in range(len(tokens) - 1):
        pos += len(tokens[i])
        a, b = tokens[i], tokens[i + 1]
        if len(a) >= 2 and len(b) >= 2 and pos > 4:
            stop = a[-2:] + b[:2]
            if text.find(stop) == pos - 2:  # its first occurrence is this boundary
                return stop, text
    pytest.fail(f"no usable token boundary in {tokens}")


def test_stop_string_across_tokens(server):
    stop, text = token_boundary_stop(server)
    expect = text[:text.find(stop)]
    c = server.client()
    for extra_stop in ([], ["zzzq"]):
        r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop] + extra_stop)
        assert r.choices[0].text == expect and stop not in r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
    chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == expect
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stop_string(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Write a short sentence about the sea."}]
    c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1, temperature=0)  # warm-up, see above
    full = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, temperature=0).choices[0].message.content
    words = full.split(" ")
    assert len(words) > 4, full
    stop = " " + words[3][:3]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[:full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_n_choices_and_seeds(server):
    c = server.client()
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=1.0, top_p=0.95)
    a = c.completions.create(n=4, seed=1234, **kw)
    texts = [ch.text for ch in sorted(a.choices, key=lambda ch: ch.index)]
    assert sorted(ch.index for ch in a.choices) == [0, 1, 2, 3]
    assert len(set(texts)) == 4  # the choices use different seeds
    b = c.completions.create(n=4, seed=1234, **kw)
    assert [ch.text for ch in sorted(b.choices, key=lambda ch: ch.index)] == texts  # same seed, same response
    # Choice i is sampled with seed + i (alone, it must give the same text as inside the batch of 4).
    assert c.completions.create(n=1, seed=1237, **kw).choices[0].text == texts[3]
    assert 4 <= a.usage.completion_tokens <= 4 * 24
    # Streamed n: every index appears, each finishes once, and the texts match.
    chunks = list(c.completions.create(n=4, seed=1234, stream=True, **kw))
    streamed, finished = [""] * 4, [0] * 4
    for ch in chunks:
        for choice in ch.choices:
            streamed[choice.index] += choice.text
            finished[choice.index] += choice.finish_reason is not None
    assert streamed == texts and finished == [1] * 4
    many = c.completions.create(n=5, seed=9, **kw)
    assert sorted(ch.index for ch in many.choices) == [0, 1, 2, 3, 4]
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a joke."}], n=3,
                                     seed=7, max_tokens=16, temperature=1.0)
    assert sorted(ch.index for ch in chat.choices) == [0, 1, 2]


def test_completion_logprobs(server):
    r = server.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert v <= 0
        values = list(top.values())
        assert 3 <= len(values) <= 4 and values == sorted(values, reverse=True)
        assert sum(math.exp(x) for x in values) <= 1 + 1e-4  # a distribution's top entries
        assert math.isclose(v, values[0], abs_tol=1e-5) and tok in top  # greedy: the sampled token is the top one


def test_chat_logprobs(server):
    server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=1, temperature=0)  # warm-up, see above
    r = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                                max_tokens=12, temperature=0, logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and e.bytes == list(e.token.encode())
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True)
        assert math.isclose(e.logprob, tops[0], abs_tol=1e-5) and e.top_logprobs[0].token == e.token
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-4
    # Streamed logprobs cover the same tokens.
    chunks = list(server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=4, stream=True))
    streamed = [e.token for ch in chunks for choice in ch.choices if choice.logprobs for e in choice.logprobs.content]
    assert streamed == [e.token for e in content]


def test_client_errors_through_the_openai_client(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=[], max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()


def test_greedy_under_load_equals_generate(server, nibble_bin):
    """Issue acceptance: 32 sampled streams in flight; the greedy request sharing their steps must be
    token-identical to `nibble generate`."""
    c = server.client()
    expected = generate_cli(nibble_bin, PROMPT, 24)
    errors = []
    started = threading.Barrier(33)

    def background(i):
        try:
            stream = c.completions.create(model=MODEL, prompt=f"Story number {i}: once", max_tokens=48,
                                          temperature=1.0, seed=i, stream=True)
            started.wait(timeout=120)
            for _ in stream:
                pass
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=background, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    started.wait(timeout=120)  # every stream has its response head: all 32 are submitted
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert r.choices[0].text == expected


def test_many_concurrent_streams_complete_and_free_everything(server):
    """32 concurrent streaming clients: each gets a complete, well-formed stream; afterwards the
    engine is idle with every KV block free."""
    c = server.client()
    results, errors = {}, []
    started = threading.Barrier(33)

    def client(i):
        try:
            stream = c.completions.create(model=MODEL, prompt=f"Story number {i}: once", max_tokens=32,
                                          temperature=1.0, seed=i, stream=True, stream_options={"include_usage": True})
            started.wait(timeout=120)
            chunks = list(stream)
            text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
            finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            results[i] = (text, finals, chunks[-1].usage)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    deadline, peak = time.time() + 30, 0
    while time.time() < deadline and peak < 16:  # engine stats lag a step behind
        samples, _ = server.metrics()
        peak = max(peak, samples[("nibble_num_requests_running", ())] + samples[("nibble_num_requests_waiting", ())])
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert peak >= 16, peak  # they really were in the engine together
    assert len(results) == 32
    for text, finals, usage in results.values():
        assert len(finals) == 1 and finals[0] in ("stop", "length")
        assert usage is not None and 1 <= usage.completion_tokens <= 32
        if finals[0] == "length":
            assert usage.completion_tokens == 32
    wait_for_idle(server)


def test_ignore_eos_runs_to_max_tokens(server):
    """The vLLM `ignore_eos` extension (nibble bench serve sends it): end-of-turn tokens do not stop."""
    c = server.client()
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=40, temperature=0)
    plain = c.chat.completions.create(**kw)
    forced = c.chat.completions.create(extra_body={"ignore_eos": True}, **kw)
    assert forced.usage.completion_tokens == 40 and forced.choices[0].finish_reason == "length"
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens < 40
