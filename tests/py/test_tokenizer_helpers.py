"""Shared inputs and plumbing for the tokenizer tests (no tests here).

`nibble tokenize` is driven through files: inputs go in as JSON strings (--json-input) so they can hold
newlines; raw-byte inputs (invalid UTF-8) go in as plain lines.
"""
import json
import pathlib
import random
import subprocess

from conftest import SHARED

WIKITEXT = SHARED / "text" / "wikitext-2-raw.test.txt"
NUM_WIKI_LINES = 1200


def wikitext_lines(n=NUM_WIKI_LINES):
    """The first n lines of WikiText-2 test that hold more than whitespace, exactly as in the file
    (leading space and trailing newline included)."""
    out = []
    with open(WIKITEXT, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line)
                if len(out) == n:
                    break
    assert len(out) == n
    return out


ADVERSARIAL = [
    # emoji, skin tones, flags, ZWJ sequences, variation selectors
    "😀", "👍🏽 ok", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇺🇸🇯🇵🇩🇪", "❤️ ❤ ☺️", "🧑🏿‍🚀 to the 🌕",
    # CJK, Korean, Japanese, Thai, Devanagari, Arabic, Hebrew (RTL)
    "日本語のテキストとカタカナ", "中文测试，标点。全角　空格", "한국어 텍스트입니다", "ภาษาไทย ไม่มีช่องว่าง",
    "हिन्दी में लिखा", "مرحبا بالعالم ١٢٣", "שלום עולם", "Ελληνικά και Кириллица",
    # combining marks, precomposed vs decomposed, zalgo
    "e\u0301 vs \u00e9", "a\u0308\u0301\u0323", "Z\u0324\u0354\u0367\u0311a\u0356\u036d\u0308l\u036e\u0312g\u0357o",
    "ﬁ ligature Ⅻ ½ ² ℃ ㍿",
    # whitespace: long runs, tabs/newline mixes, exotic spaces, zero-width characters
    " " * 50, "a" + " " * 100 + "b", "\t\t\tx", "\n\n\n", " \n \n\t \r\n", "line1\r\nline2\rline3\n",
    "x\u00a0\u00a0y", "\u3000full width", "x\u180e y!\u180e", "a\u200bb\u200cc\u200dd\ufeffe", "\u2028\u2029\u0085",
    "trailing spaces   ", "   leading spaces", "  ", " ", "\t", "\v\f",
    # digits
    "1234567890", "3.14159 and 1,000,000", "٣٤٥ ۴۵۶ ३४५ ১২৩", "０１２ full width", "x2y3z4", "2024-01-01T12:00:00Z",
    # contractions and quotes
    "I'm you're he's we've they'll I'd don't", "ISN'T IT'S WE'LL 'S 'T", "rock 'n' roll '''", "‘curly’ “quotes”",
    # code, markup, control characters
    "def f(x):\n    return x ** 2  # comment\n", "<div class=\"a\">&amp;</div>", "a\x00b\x01c\x7f\x1b[0m",
    "ctl\x04\x06\x13\x14\x16\x1dend",  # bytes SmolLM2 has no token for
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
    # special-token text, whole and broken
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>",
    "<|endoftext|><|endoftext|>", "<|im_start", "< |im_start|>", "<|im_start|><|im_end|>", "x<|im_end|>y",
    "<s>Hello</s> <unk>", "<0x41> <0xFF>", "▁ already▁escaped", "Ġhello",
    # empty
    "",
]

# Invalid UTF-8 inputs, as raw bytes (one per line; no b"\n" inside).
INVALID_UTF8 = [
    b"abc\xffdef", b"\xfe\xff", b"\xe2\x82 x", b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98", b"\xf0\x9f\x98 y",
    b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 too big", b"\x80\x80\x80",
    b"ok \xe6\x97\xa5\xe6\x9c \xe8\xaa\x9e", b"\xf5\xf6\xf7\xf8", b"mixed \xc3\xa9\xc3 end",
]


def per_byte_replace(raw: bytes) -> str:
    """bytes -> str with one U+FFFD per invalid byte (the policy nibble's encode documents,
    sentencepiece's and llama.cpp's)."""
    return raw.decode("utf-8", errors="replace_each_byte")


def _replace_each_byte(err):
    return ("\ufffd" * (err.end - err.start), err.end)


import codecs  # noqa: E402

codecs.register_error("replace_each_byte", _replace_each_byte)


def random_multilingual(n, seed, max_len=40):
    """Random strings over a mix of scripts, spaces, digits, punctuation and emoji."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", "   \t\n", ".,;:!?'\"()-_/",
        "日本語中文测试한국어", "αβγδεЖжЯя", "مرحبا", "éèêëçñøåß", "😀👍🏽🇺🇸👨‍👩‍👧", "\u0301\u0308\u200d",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(0, max_len)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


def run_nibble(nibble_bin, args, stdin_lines=None, tmp_path=None, raw_lines=None, check=True):
    """Runs `nibble tokenize ARGS -f FILE`, the file holding stdin_lines as JSON strings (or
    raw_lines as raw bytes). Returns the output lines parsed as JSON."""
    path = pathlib.Path(tmp_path) / f"in_{random.getrandbits(32):08x}.txt"
    if raw_lines is not None:
        path.write_bytes(b"\n".join(raw_lines) + b"\n")
    else:
        path.write_text("".join(json.dumps(s) + "\n" for s in stdin_lines), encoding="utf-8")
        args = list(args) + ["--json-input"]
    proc = subprocess.run([nibble_bin, "tokenize", *args, "-f", str(path)], capture_output=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return _json_lines(proc.stdout)


def decode_with_nibble(nibble_bin, model, id_lists, tmp_path, skip_special=False, stream=False):
    path = pathlib.Path(tmp_path) / f"ids_{random.getrandbits(32):08x}.txt"
    path.write_text("".join(json.dumps(ids) + "\n" for ids in id_lists))
    args = [nibble_bin, "tokenize", "-m", str(model), "--decode", "-f", str(path)]
    if skip_special:
        args.append("--skip-special")
    if stream:
        args.append("--stream")
    proc = subprocess.run(args, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return _json_lines(proc.stdout)


def _json_lines(stdout: bytes):
    # Split on b"\n" only: decoded text may hold U+2028, U+0085 and friends, which str.splitlines()
    # would also split on.
    lines = stdout.decode("utf-8").split("\n")
    assert lines[-1] == ""
    return [json.loads(line) for line in lines[:-1]]
