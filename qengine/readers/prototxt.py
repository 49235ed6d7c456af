"""A reader for protobuf text format, as Caffe's prototxt files use it.

parse() turns the text into nested dicts: every field maps to a list of values
(fields may repeat), a value being a str, int, float, bool, an enum name (str)
or a nested dict.  It knows nothing of Caffe; graph.py interprets the result.
"""
import re

from ..errors import FormatError

MAX_TEXT = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_MESSAGES = 1 << 18   # real networks: a few thousand
# tokens, whitespace and comments included (VGG-16's deploy file: ~2,000): a
# 16 MB file of tiny fields or comments is refused in well under a second (ResNet-152:
# ~50,000)
MAX_TOKENS = 1 << 18

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?|[-+]?inf(?:inity)?|nan)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}:<>\[\],;])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def _unquote(s):
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _number(s):
    t = s.rstrip("fF") if not s.lower().startswith(("inf", "-inf", "+inf")) else s
    try:
        if re.fullmatch(r"[-+]?\d+", t):
            return int(t)
        return float(t)
    except ValueError:
        raise FormatError(f"bad number {s!r}") from None


def _tokens(text, source):
    """(kind, value, line) for every token but whitespace and comments: one C-level
    regex scan; at most MAX_TOKENS tokens (whitespace and comments included)."""
    pos, line, n = 0, 1, 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            raise FormatError(f"{source}: line {line}: unexpected character {text[pos]!r}")
        n += 1
        if n > MAX_TOKENS:
            raise FormatError(f"{source}: more than {MAX_TOKENS} tokens (not a real network "
                              f"description)")
        kind = m.lastgroup
        val = m.group(kind)
        if kind != "ws":
            yield kind, val, line
        elif "\n" in val:
            line += val.count("\n")
        if kind == "str" and "\n" in val:
            line += val.count("\n")
        pos = m.end()
    if pos != len(text):
        raise FormatError(f"{source}: line {line}: unexpected character {text[pos]!r}")


class _Stream:
    """The tokens one at a time with one of lookahead: the parser never holds
    the token list (a 16 MB file of tiny fields would cost gigabytes)."""

    def __init__(self, text, source):
        self._it = _tokens(text, source)
        self._next = next(self._it, None)

    def peek(self):
        return self._next

    def take(self):
        tok = self._next
        self._next = next(self._it, None)
        return tok


def parse(text, source="<prototxt>"):
    """Parse protobuf text format into {field: [values]} dicts.  Memory stays a
    small multiple of the text (at most MAX_MESSAGES nested messages)."""
    if len(text) > MAX_TEXT:
        raise FormatError(f"{source}: text larger than {MAX_TEXT} bytes")
    toks = _Stream(text, source)
    root = {}
    stack = [root]
    closers = []
    messages = 0
    while toks.peek() is not None:
        kind, val, line = toks.take()
        if kind == "punct" and val in "}>":
            if not closers or closers[-1] != val:
                raise FormatError(f"{source}: line {line}: unbalanced {val!r}")
            closers.pop()
            stack.pop()
            continue
        if kind == "punct" and val in ",;":
            continue
        if kind != "ident":
            raise FormatError(f"{source}: line {line}: expected a field name, got {val!r}")
        name = val
        if toks.peek() is not None and toks.peek()[1] == ":":
            toks.take()
        if toks.peek() is None:
            raise FormatError(f"{source}: line {line}: field {name!r} has no value")
        kind, val, line = toks.take()
        if kind == "punct" and val in "{<":
            if len(stack) >= MAX_DEPTH:
                raise FormatError(f"{source}: line {line}: nesting deeper than {MAX_DEPTH}")
            messages += 1
            if messages > MAX_MESSAGES:
                raise FormatError(f"{source}: line {line}: more than {MAX_MESSAGES} messages")
            child = {}
            stack[-1].setdefault(name, []).append(child)
            stack.append(child)
            closers.append("}" if val == "{" else ">")
        elif kind == "punct" and val == "[":
            # repeated scalar list: name: [1, 2, 3]
            vals = stack[-1].setdefault(name, [])
            while toks.peek() is not None and toks.peek()[1] != "]":
                k2, v2, l2 = toks.take()
                if k2 == "punct" and v2 == ",":
                    continue
                vals.append(_scalar(k2, v2, l2, source))
            if toks.peek() is None:
                raise FormatError(f"{source}: unterminated list for field {name!r}")
            toks.take()
        else:
            value = _scalar(kind, val, line, source)
            # adjacent string literals concatenate
            if kind == "str" and toks.peek() is not None and toks.peek()[0] == "str":
                parts = [value]
                while toks.peek() is not None and toks.peek()[0] == "str":
                    parts.append(_unquote(toks.take()[1]))
                value = "".join(parts)
            stack[-1].setdefault(name, []).append(value)
    if closers:
        raise FormatError(f"{source}: unexpected end of text, {len(closers)} block(s) not closed")
    return root


def _scalar(kind, val, line, source):
    if kind == "str":
        return _unquote(val)
    if kind == "num":
        return _number(val)
    if kind == "ident":
        if val == "true":
            return True
        if val == "false":
            return False
        return val
    raise FormatError(f"{source}: line {line}: unexpected {val!r}")
