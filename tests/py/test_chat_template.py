"""Chat templates: nibble's Jinja interpreter against the jinja2 package.

The reference renderer is jinja2 configured exactly as Hugging Face transformers configures it for
apply_chat_template (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, HF's tojson). Both render THE SAME template source with the same variables; the
outputs must be byte-identical, and where jinja2 raises, nibble must fail too.
"""
import json
import subprocess

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest

from conftest import SMOLLM2

BOS, EOS = "<s>", "</s>"


def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


ENV = hf_environment()


def reference(source, messages, add_generation_prompt=True, bos=BOS, eos=EOS, **extra):
    """jinja2's rendering, or the exception it raised."""
    try:
        return ENV.from_string(source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, **extra)
    except Exception as e:  # noqa: BLE001 - any jinja2 failure is a failure nibble must reproduce
        return e


def nibble(nibble_bin, tmp_path, source, messages, add_generation_prompt=True, bos=BOS, eos=EOS, extra=None,
           name=None):
    cmd = [nibble_bin, "template", "--messages-json", json.dumps(messages), "--bos", bos, "--eos", eos]
    if name is not None:
        cmd += ["--name", name]
    else:
        path = tmp_path / "template.jinja"
        path.write_text(source, encoding="utf-8")
        cmd += ["--template-file", str(path)]
    if not add_generation_prompt:
        cmd.append("--no-generation-prompt")
    if extra:
        cmd += ["--vars-json", json.dumps(extra)]
    return subprocess.run(cmd, capture_output=True, timeout=60)


def check_same(nibble_bin, tmp_path, source, messages, add_generation_prompt=True, extra=None, name=None):
    want = reference(source, messages, add_generation_prompt, **(extra or {}))
    got = nibble(nibble_bin, tmp_path, source, messages, add_generation_prompt, extra=extra, name=name)
    if isinstance(want, Exception):
        assert got.returncode != 0, f"jinja2 raised {want!r} but nibble printed {got.stdout!r}"
        if isinstance(want, jinja2.exceptions.TemplateError) and not isinstance(
                want, (jinja2.exceptions.UndefinedError, jinja2.exceptions.TemplateSyntaxError)):
            assert str(want) in got.stderr.decode(), got.stderr.decode()
        return
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode("utf-8") == want


# ---- templates ------------------------------------------------------------------------------

def smollm2_template():
    reader = gguf.GGUFReader(str(SMOLLM2))
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

MISTRAL_V03 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

# Llama-3.1-style: namespace-free but with tools (tojson with indent), `is defined`, message.attr.
LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen2.5-style: tools loop, message.attr on dicts, loop.index0 arithmetic on neighbours.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen3-style: reversed slice, namespace carried out of a loop, str methods chained on split().
QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

TEMPLATES = {
    "smollm2": smollm2_template(),
    "chatml": CHATML,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "mistral_v01": MISTRAL_V01,
    "mistral_v03": MISTRAL_V03,
    "zephyr": ZEPHYR,
    "phi3": PHI3,
    "llama31": LLAMA31,
    "qwen25": QWEN25,
    "qwen3": QWEN3,
}

# Which Python-side template each built-in name must reproduce.
BUILTINS = {"chatml": CHATML, "llama2": LLAMA2, "llama3": LLAMA3, "mistral": MISTRAL_V03, "zephyr": ZEPHYR,
            "phi3": PHI3}

SYSTEM = {"role": "system", "content": "You are a helpful assistant.\nBe brief."}
CONVERSATIONS = {
    "system_user_assistant_user": [SYSTEM, {"role": "user", "content": "Hello! What's 2+2?"},
                                   {"role": "assistant", "content": "  It's 4.  "},
                                   {"role": "user", "content": "And \"3+3\"?\n"}],
    "user_assistant_user": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                            {"role": "user", "content": "Tell me a joke"}],
    "single_user": [{"role": "user", "content": "héllo wörld — ünïcode ✓ 日本語"}],
    "system_only": [SYSTEM],
    "tool_turn": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Checking."},
                  {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "sunny"},
                  {"role": "user", "content": "Thanks {{ not a tag }} {% neither %}"}],
    "thinking": [{"role": "user", "content": "Q1"},
                 {"role": "assistant", "content": "<think>\nstep 1\nstep 2\n</think>\n\nA1"},
                 {"role": "user", "content": "Q2"},
                 {"role": "assistant", "content": "<think>\nmore\n</think>\n\nA2"}],
    "bad_alternation": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_jinja2(nibble_bin, tmp_path, template, conversation, add_generation_prompt):
    check_same(nibble_bin, tmp_path, TEMPLATES[template], CONVERSATIONS[conversation], add_generation_prompt)


@pytest.mark.parametrize("template", ["llama31", "qwen25", "qwen3"])
@pytest.mark.parametrize("extra", [{"tools": TOOLS}, {"tools": TOOLS, "tools_in_user_message": False},
                                   {"builtin_tools": ["brave_search", "code_interpreter", "wolfram"],
                                    "date_string": "01 Jan 2025"},
                                   {"enable_thinking": False}, {"enable_thinking": True}])
def test_matches_jinja2_with_tools(nibble_bin, tmp_path, template, extra):
    check_same(nibble_bin, tmp_path, TEMPLATES[template], CONVERSATIONS["system_user_assistant_user"], True, extra)


@pytest.mark.parametrize("name", sorted(BUILTINS))
@pytest.mark.parametrize("conversation", ["system_user_assistant_user", "user_assistant_user", "single_user"])
def test_builtin_templates_match_published_ones(nibble_bin, tmp_path, name, conversation):
    check_same(nibble_bin, tmp_path, BUILTINS[name], CONVERSATIONS[conversation], True, name=name)


def test_gguf_template_and_special_tokens(nibble_bin):
    reader = gguf.GGUFReader(str(SMOLLM2))

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]]

    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[int(i)]]).decode("utf-8")  # noqa: E731
    bos, eos = token(field("tokenizer.ggml.bos_token_id")[0]), token(field("tokenizer.ggml.eos_token_id")[0])
    messages = CONVERSATIONS["user_assistant_user"]
    want = reference(smollm2_template(), messages, True, bos=bos, eos=eos)
    got = subprocess.run([nibble_bin, "template", "--gguf", str(SMOLLM2), "--messages-json", json.dumps(messages)],
                         capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode() == want


def test_unsupported_template_is_reported(nibble_bin, tmp_path):
    # --template-file renders exactly the given template (no fallback; the loader path, --gguf,
    # falls back by name): the error names the construct and its position.
    source = "{% filter upper %}x{% endfilter %}" + CHATML
    got = nibble(nibble_bin, tmp_path, source, CONVERSATIONS["single_user"])
    assert got.returncode != 0
    assert "filter" in got.stderr.decode() and "line 1, column" in got.stderr.decode()
