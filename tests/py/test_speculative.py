"""Speculative decoding end to end: greedy output of `nibble generate --speculative` is identical to
plain greedy generation for every drafter (n-gram, a draft model, the self-draft) on SmolLM2 and
stories260K; `nibble serve --speculative` reports usage.speculative and the /metrics counters, and
per-request "speculative": false turns it off."""
import json
import subprocess

import pytest

from conftest import SHARED, SMOLLM2
from test_server_common import MODEL, start_server, stop_server

STORIES = SHARED / "stories260K" / "stories260K.bin"

COPY = ("Rewrite the following sentence exactly: The Eiffel Tower is a wrought-iron lattice tower on the "
        "Champ de Mars in Paris, France, named after the engineer Gustave Eiffel.")

SMOL_PROMPTS = [(COPY, True), ("List the days of the week, one per line.", True),
                ("The capital of France is", False), ("def fibonacci(n):", False)]
STORY_PROMPTS = ["Once upon a time", "Lily and Tom went to the park. Lily and Tom", "The cat sat on the"]

DRAFTERS = [["--speculative", "ngram", "--num-speculative-tokens", "5"],
            ["--speculative", "self", "--draft-layers", "20", "--num-speculative-tokens", "3"],
            ["--speculative", "draft", "--draft-model", "{model}", "--num-speculative-tokens", "4"]]


def generate(nibble_bin, model, prompt, n, chat, extra):
    args = [nibble_bin, "generate", "-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0", "-t", "1"]
    if chat:
        args.append("--chat")
    args += [a.replace("{model}", str(model)) for a in extra]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stderr


@pytest.mark.parametrize("drafter", DRAFTERS, ids=["ngram", "self", "draft"])
def test_greedy_identical_smollm2(nibble_bin, drafter):
    accepted_any = False
    for prompt, chat in SMOL_PROMPTS:
        plain, _ = generate(nibble_bin, SMOLLM2, prompt, 48, chat, [])
        spec, err = generate(nibble_bin, SMOLLM2, prompt, 48, chat, drafter)
        assert spec == plain, (prompt, drafter)
        accepted_any |= " 0 of " not in err
    assert accepted_any, "no draft was ever accepted: the multi-token path went untested"


@pytest.mark.parametrize("drafter", DRAFTERS, ids=["ngram", "self", "draft"])
def test_greedy_identical_stories260k(nibble_bin, drafter):
    drafter = [("2" if a == "20" else a) for a in drafter]  # stories260K has 5 layers
    for prompt in STORY_PROMPTS:
        plain, _ = generate(nibble_bin, STORIES, prompt, 80, False, [])
        spec, _ = generate(nibble_bin, STORIES, prompt, 80, False, drafter)
        assert spec == plain, (prompt, drafter)


def test_draft_vocab_mismatch_is_an_error(nibble_bin):
    r = subprocess.run([nibble_bin, "generate", "-m", str(SMOLLM2), "-p", "hi", "-n", "4", "--speculative", "draft",
                        "--draft-model", str(STORIES)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "vocabulary" in r.stderr and "tokenizer" in r.stderr


@pytest.fixture(scope="module")
def spec_server(nibble_bin):
    srv = start_server(nibble_bin, "--speculative", "ngram", "--num-speculative-tokens", "6")
    yield srv
    stop_server(srv)


def test_server_usage_metrics_and_opt_out(nibble_bin, spec_server):
    srv = spec_server
    msgs = [{"role": "user", "content": COPY}]
    plain, _ = generate(nibble_bin, SMOLLM2, COPY, 40, True, [])
    body = {"model": MODEL, "messages": msgs, "max_tokens": 40, "temperature": 0}
    status, _, data = srv.request("POST", "/v1/chat/completions", body)
    assert status == 200

    r = json.loads(data)
    assert r["choices"][0]["message"]["content"] == plain.rstrip("\n")
    sp = r["usage"]["speculative"]
    assert 0 < sp["accepted_tokens"] <= sp["draft_tokens"]
    # Accepted drafts are emitted tokens: fewer than the completion.
    assert sp["accepted_tokens"] < r["usage"]["completion_tokens"]

    samples, types = srv.metrics()
    drafted = samples[("nibble_spec_draft_tokens_total", ())]
    accepted = samples[("nibble_spec_accepted_tokens_total", ())]
    steps = samples[("nibble_spec_verification_steps_total", ())]
    assert drafted >= sp["draft_tokens"] and accepted >= sp["accepted_tokens"] and steps > 0
    assert types["nibble_spec_acceptance_rate"] == "gauge"
    assert 0 < samples[("nibble_spec_acceptance_rate", ())] <= 1
    assert samples[("nibble_spec_mean_accepted_length", ())] == pytest.approx(1 + accepted / steps, rel=1e-6)

    # Opt out per request: same text, no speculative usage, counters unchanged.
    status, _, data = srv.request("POST", "/v1/chat/completions", dict(body, speculative=False))
    assert status == 200
    r2 = json.loads(data)
    assert r2["choices"][0]["message"]["content"] == plain.rstrip("\n")
    assert "speculative" not in r2["usage"]
    assert srv.metrics()[0][("nibble_spec_draft_tokens_total", ())] == drafted
    status, _, data = srv.request("POST", "/v1/chat/completions", dict(body, speculative="yes"))
    assert status == 400
