"""Jinja features one at a time: nibble's interpreter against jinja2 (HF's configuration) on small
templates, so a divergence points at the construct. Variables are passed through --vars-json."""
import json

import pytest

from test_chat_template import check_same, nibble, reference

MSGS = [{"role": "system", "content": "  Sys prompt  "}, {"role": "user", "content": "Hi 'there'"},
        {"role": "assistant", "content": "Hello\n\"you\""}]
VARS = {
    "n": 7, "neg": -7, "f": 2.5, "zero": 0, "big": 12345678901234, "s": "  Hello World  ", "e": "",
    "l": [3, 1, 2], "ls": ["a", "b", "c"], "d": {"b": 1, "a": [1, 2, {"x": None}], "c": "q"}, "t": True,
    "none": None, "u8": "héllo wörld", "nested": [[1, 2], [3, 4]], "people": [
        {"name": "ann", "age": 31, "admin": True}, {"name": "bob", "age": 25, "admin": False}],
}

SNIPPETS = [
    # output of values (Python str/repr)
    "{{ n }}|{{ f }}|{{ 1.0 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ 0.1 + 0.2 }}|{{ 10 / 4 }}|{{ 10 / 5 }}|{{ 3.0 * 2 }}",
    "{{ none }}|{{ t }}|{{ false }}|{{ l }}|{{ ls }}|{{ d }}|{{ undefined_thing }}|{{ [] }}|{{ {} }}",
    "{{ [1, 'a', none, true, 2.0, [\"x'y\"]] }}|{{ 'it\\'s' }}|{{ \"say \\\"hi\\\"\" }}|{{ ['a\\nb', \"q'\"] }}",
    # arithmetic with Python semantics
    "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}",
    "{{ n + f }} {{ n - 10 }} {{ -n }} {{ +n }} {{ n * 'ab' }} {{ 'ab' * 3 }} {{ l + [4] }} {{ big * 3 }}",
    "{{ 'a' ~ 1 ~ none ~ t ~ undefined_thing ~ 2.0 }}|{{ 'x' + 'y' }}|{{ 1 + 2 * 3 - 4 / 2 }}|{{ (1 + 2) * 3 }}",
    # comparisons, logic, membership
    "{{ 1 == 1.0 }} {{ 1 == true }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 3 > 2 > 1 }} {{ 1 < 2 > 3 }} {{ none == none }}",
    "{{ 'ell' in s }} {{ 2 in l }} {{ 'a' in d }} {{ 'z' not in d }} {{ 5 not in l }} {{ not t }} {{ not none }}",
    "{{ t and 'yes' }}|{{ none or 'dflt' }}|{{ 0 or e or 'last' }}|{{ 'x' and '' }}|{{ t and n and l }}",
    "{{ 'a' if t else 'b' }}|{{ 'a' if none else 'b' }}|{{ 'a' if none }}|{{ 1 if 0 else 2 if 0 else 3 }}",
    # subscripts, slices, attributes
    "{{ l[0] }} {{ l[-1] }} {{ l[5] }} {{ ls[1:] }} {{ ls[:-1] }} {{ ls[::-1] }} {{ ls[::2] }} {{ ls[-2:] }} {{ ls[5:] }}",
    "{{ d['a'][2]['x'] }} {{ d.a[1] }} {{ d.c }} {{ d.missing }} {{ d['missing'] is defined }} {{ nested[1][0] }}",
    "{{ s[2:7] }}|{{ u8[1] }}|{{ u8[1:4] }}|{{ u8[::-1] }}|{{ u8 | length }}|{{ ls.0 }}",
    # filters
    "{{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ s | length }}|{{ l | length }}|{{ d | length }}|{{ 'abc' | count }}",
    "{{ ls | join(', ') }}|{{ l | join }}|{{ ls | first }}|{{ ls | last }}|{{ l | list }}|{{ 'abc' | list }}",
    "{{ undefined_thing | default('dflt') }}|{{ e | default('dflt') }}|{{ e | default('dflt', true) }}|{{ none | d('x') }}",
    "{{ 'hello world' | capitalize }}|{{ 'hello wORLD-x (y' | title }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}",
    "{{ d | tojson }}|{{ ls | tojson }}|{{ 'é\"\\n<>' | tojson }}|{{ none | tojson }}|{{ 2.5 | tojson }}|{{ d | tojson(indent=2) }}",
    "{{ neg | abs }}|{{ '42' | int }}|{{ 'x' | int }}|{{ 3.9 | int }}|{{ '2.5' | float }}|{{ n | float }}|{{ n | string }}",
    "{{ l | reverse | list }}|{{ 'abc' | reverse }}|{{ d | items | list }}|{{ s | trim | upper | length }}",
    "{{ people | selectattr('admin') | map(attribute='name') | join(',') }}|{{ people | rejectattr('admin') | list | length }}",
    "{{ people | selectattr('age', 'gt', 26) | map(attribute='name') | list }}|{{ l | select('odd') | list }}|{{ l | reject('even') | list }}",
    "{{ people | map(attribute='age') | list }}|{{ ls | map('upper') | join }}|{{ people | join(', ', attribute='name') }}",
    # tests
    "{{ n is defined }} {{ nope is defined }} {{ nope is undefined }} {{ none is none }} {{ s is string }} {{ n is number }}",
    "{{ n is integer }} {{ f is float }} {{ d is mapping }} {{ l is iterable }} {{ l is sequence }} {{ t is boolean }} {{ n is odd }}",
    "{{ n is even }} {{ 9 is divisibleby 3 }} {{ n is not none }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ n is eq 7 }} {{ n is gt(3) }}",
    "{{ t is true }} {{ t is false }} {{ none is sameas none }} {{ 1 is in l }} {{ s is not defined }}",
    # methods
    "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.upper() }}|{{ s.lower() }}|{{ 'a b'.title() }}",
    "{{ s.strip().startswith('Hello') }} {{ s.endswith('  ') }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'hello world'.capitalize() }}",
    "{{ 'a,b,,c'.split(',') }}|{{ '  a  b c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abcabc'.replace('b', 'X') }}",
    "{{ 'hello'.find('l') }}|{{ 'hello'.find('z') }}|{{ 'hello'.count('l') }}|{{ '-'.join(ls) }}|{{ d.get('c') }}|{{ d.get('zz', 5) }}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{{ d.keys() | list }}|{{ d.values() | list | length }}",
    # loops
    "{% for x in l %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }} {% endfor %}",
    "{% for x in l %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }} {% endfor %}",
    "{% for x in l if x > 1 %}{{ x }}:{{ loop.index }}:{{ loop.length }} {% endfor %}",
    "{% for x in [] %}never{% else %}empty{% endfor %}|{% for c in 'abc' %}{{ c }}.{% endfor %}|{% for k in d %}{{ k }}{% endfor %}",
    "{% for row in nested %}{% for x in row %}{{ loop.index }}{{ x }}{% endfor %};{{ loop.index }}|{% endfor %}",
    "{% for x in l %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}end",
    "{% for a, b in nested %}{{ a + b }} {% endfor %}|{% for x in range(3) %}{{ x }}{% endfor %}|{{ range(10, 0, -3) | list }}",
    # scoping of set
    "{% set x = 1 %}{% for m in [1, 2] %}{{ x }}{% set x = m * 10 %}{{ x }}{% endfor %}{{ x }}",
    "{% for m in [1, 2] %}{% if m == 2 %}[{{ y }}]{% endif %}{% set y = m %}{% endfor %}[{{ y }}]",
    "{% if t %}{% set z = 5 %}{% endif %}{{ z }}|{% set ns = namespace(c=0, s='') %}{% for x in l %}{% set ns.c = ns.c + x %}{% set ns.s = ns.s ~ x %}{% endfor %}{{ ns.c }} {{ ns.s }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}",
    "{% set blk %}inner {{ n }}{% endset %}[{{ blk }}]|{% set messages = messages[1:] %}{{ messages | length }}",
    "{% for message in messages %}{{ message.role }}:{{ message['content'] | trim }};{% endfor %}{{ messages[0].content.strip() }}",
    # whitespace control
    "a  {{- n -}}  b\n  {%- if t -%}  c  {%- endif -%}\n d",
    "line1\n    {% if t %}\n    indented\n    {% endif %}\nline2\n{# comment #}\nline3\n  {# indented comment #}\nend",
    "x {% if t %}y{% endif %} z\n{% for i in l %}\n  - {{ i }}\n{% endfor %}\ndone",
    "{%+ if t %}  keep{% endif +%}\nafter\n  {%+ if t %}x{% endif %}",
    "a\n\n{% if t %}\n\nb\n{% endif %}\n\n",
    "{{ 'x' }}\n{{ 'y' }}\n",
    "{% raw %}{{ not rendered }}{% endraw %}",
    "  {%- raw -%}  \n {{ x }}  \n  {%- endraw %}\nafter",
    # macros
    "{% macro m(a, b='B', c=n) %}<{{ a }}|{{ b }}|{{ c }}|{{ n }}>{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m(a=3, c=4) }}{{ m('x', c='y') }}",
    "{% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k }}*{{ fact(k - 1) }}{% endif %}{% endmacro %}{{ fact(5) }}",
    "{% macro show(x) %}[{{ x }}{{ item }}]{% endmacro %}{% for item in ls %}{{ show(loop.index) }}{% endfor %}|{{ show('z') | upper }}",
    "{%- macro render(msg) -%}\n  {{ msg.role }}: {{ msg.content | trim }}\n{%- endmacro -%}\n{% for m in messages %}{{ render(m) }};{% endfor %}",
    # literals and misc
    "{{ 'a' 'b' }}|{{ \"\\t\\x41\\u00e9\\U0001F600\\101\" }}|{{ 'unknown \\d escape' }}|{{ 1_000 }}|{{ 0.5e1 }}|{{ (1, 2) | length }}",
    "{{ {'k': [1, {'z': none}], 'j': 'v'} }}|{{ {'k': 1}['k'] }}|{{ [1, 2, 3][1:][0] }}|{{ 'abc'[-1] }}",
    "{{ raise_exception('custom failure: ' ~ n) }}",
    "{{ d.a.b.c }}",
    "{{ nope.attr }}",
    "{{ n + 'x' }}",
    "{{ 1 / 0 }}",
    "{% for x in n %}{% endfor %}",
    "{% if t %}unclosed",
    "{{ 'unterminated }}",
    "{% endfor %}",
    "{{ l | no_such_filter }}",
]

# Valid Jinja that nibble's subset rejects: the error must say so (the caller then falls back to a
# built-in template by name).
UNSUPPORTED = [
    "{% macro m() %}x{{ caller() }}{% endmacro %}{% call m() %}y{% endcall %}",
    "{% filter upper %}x{% endfilter %}",
    "{% for x in l recursive %}{{ x }}{% endfor %}",
    "{{ '%s-%d' % ('a', 1) }}",
    "{{ l | sort | list }}",
]


@pytest.mark.parametrize("source", UNSUPPORTED)
def test_unsupported_constructs_are_reported(nibble_bin, tmp_path, source):
    assert not isinstance(reference(source, MSGS, True, **VARS), Exception)
    got = nibble(nibble_bin, tmp_path, source, MSGS, extra=VARS)
    assert got.returncode != 0 and "not supported" in got.stderr.decode(), got.stderr.decode()


# One snippet deliberately holds an unknown escape ('\d'), which Python itself warns about.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_matches_jinja2(nibble_bin, tmp_path, index):
    check_same(nibble_bin, tmp_path, SNIPPETS[index], MSGS, True, VARS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_snippet_is_meaningful():
    # Guard against a snippet that both sides render to nothing (it would test nothing) - except
    # the ones that exist to fail.
    for source in SNIPPETS:
        want = reference(source, MSGS, True, **VARS)
        assert isinstance(want, Exception) or want.strip() != "", source


def test_error_messages_name_the_position(nibble_bin, tmp_path):
    got = nibble(nibble_bin, tmp_path, "line one\n  {{ nope.attr }}", MSGS, extra=VARS)
    err = got.stderr.decode()
    assert got.returncode != 0 and "line 2, column 11" in err and "'nope' is undefined" in err, err
    got = nibble(nibble_bin, tmp_path, "{% for x in l %}{{ x }}", MSGS, extra=VARS)
    assert got.returncode != 0 and "endfor" in got.stderr.decode(), got.stderr.decode()
    # messages is JSON from the caller; a hostile template still returns, with a clear error
    got = nibble(nibble_bin, tmp_path, "{% for a in range(1000000) %}{% for b in range(1000000) %}{% endfor %}{% endfor %}",
                 MSGS)
    assert got.returncode != 0 and "iterations" in got.stderr.decode(), got.stderr.decode()


def test_vars_cannot_override_conversation(nibble_bin, tmp_path):
    got = nibble(nibble_bin, tmp_path, "{{ messages | length }} {{ bos_token }}", MSGS, extra={"messages": [], "bos_token": "X"})
    assert got.returncode == 0 and got.stdout.decode() == f"{len(MSGS)} <s>", got.stdout
    assert json.loads("[]") == []


# ---- generated templates: random nesting of text, tags, whitespace control and expressions ------

def _ws(r):
    return r.choice(["", " ", "  ", "\n", " \n ", "\n\n", "\t", "x", "ab \n", " \n", "\n  "])


def _sign(r):
    return r.choice(["", "", "-", "+"])


def _expr(r, depth=0):
    atoms = ["n", "f", "s", "l", "d", "t", "e", "none", "1", "2.0", "'q'", "\"w\"", "true", "[1, 2]", "nope", "d.b",
             "l[0]", "s[1:3]", "loop.index", "ls"]
    if depth > 2 or r.random() < 0.4:
        return r.choice(atoms)
    a, b = _expr(r, depth + 1), _expr(r, depth + 1)
    return r.choice([
        f"{a} ~ {b}", f"({a} + {b})", f"{a} {r.choice(['==', '!=', '<', '>', 'in', 'not in'])} {b}",
        f"{a} {r.choice(['and', 'or'])} {b}", f"not {a}",
        f"{a} | {r.choice(['length', 'trim', 'upper', 'string', 'first', 'tojson', 'default(1)', 'list'])}",
        f"{a} if {b} else {_expr(r, depth + 1)}",
        f"{a} is {r.choice(['defined', 'none', 'string', 'number', 'mapping', 'not defined'])}", f"({a} * 2)"])


def _block(r, depth=0):
    out = []
    for _ in range(r.randrange(1, 4)):
        k = r.randrange(6 if depth < 2 else 3)
        s = lambda: _sign(r)  # noqa: E731
        v = lambda: _sign(r).replace("+", "")  # noqa: E731 - {{+ is not valid Jinja
        if k == 0:
            out.append(_ws(r))
        elif k == 1:
            out.append("{{" + v() + " " + _expr(r) + " " + v() + "}}")
        elif k == 2:
            out.append("{#" + s() + " c " + s() + "#}")
        elif k == 3:
            out.append("{%" + s() + " if " + _expr(r) + " " + s() + "%}" + _block(r, depth + 1) + _ws(r) + "{%" + s() +
                       " else " + s() + "%}" + _block(r, depth + 1) + "{%" + s() + " endif " + s() + "%}")
        elif k == 4:
            out.append("{%" + s() + " for x in " + r.choice(["l", "d", "s", "[]", "messages"]) + " " + s() + "%}" +
                       _ws(r) + "{{ x }}" + _block(r, depth + 1) + "{%" + s() + " endfor " + s() + "%}")
        else:
            out.append("{%" + s() + " set v = " + _expr(r) + " " + s() + "%}" + _ws(r) + "{{ v }}")
        out.append(_ws(r))
    return "".join(out)


def test_generated_templates_match_jinja2(nibble_bin, tmp_path):
    import random
    rng = random.Random(2024)
    for _ in range(250):
        check_same(nibble_bin, tmp_path, _block(rng), MSGS, True, VARS)
