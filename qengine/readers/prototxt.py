"""A reader for protobuf text format, as Caffe's prototxt files use it.

parse() turns the text into nested dicts: every field maps to a list of values
(fields may repeat), a value being a str, int, float, bool, an enum name (str)
or a nested dict.  It knows nothing of Caffe; graph.py interprets the result.
"""
import re

from ..errors import FormatError

MAX_TEXT = 16 * 1024 * 1024
MAX_DEPTH = 64

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
    pos, n = 0, len(text)
    line = 1
    while pos < n:
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormatError(f"{source}: line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        val = m.group(kind)
        if kind != "ws":
            yield kind, val, line
        line += val.count("\n")
        pos = m.end()


def parse(text, source="<prototxt>"):
    """Parse protobuf text format into {field: [values]} dicts."""
    if len(text) > MAX_TEXT:
        raise FormatError(f"{source}: text larger than {MAX_TEXT} bytes")
    toks = list(_tokens(text, source))
    i = 0
    root = {}
    stack = [root]
    closers = []
    while i < len(toks):
        kind, val, line = toks[i]
        if kind == "punct" and val in "}>":
            if not closers or closers[-1] != val:
                raise FormatError(f"{source}: line {line}: unbalanced {val!r}")
            closers.pop()
            stack.pop()
            i += 1
            continue
        if kind == "punct" and val in ",;":
            i += 1
            continue
        if kind != "ident":
            raise FormatError(f"{source}: line {line}: expected a field name, got {val!r}")
        name = val
        i += 1
        if i < len(toks) and toks[i][1] == ":":
            i += 1
        if i >= len(toks):
            raise FormatError(f"{source}: line {line}: field {name!r} has no value")
        kind, val, line = toks[i]
        if kind == "punct" and val in "{<":
            if len(stack) >= MAX_DEPTH:
                raise FormatError(f"{source}: line {line}: nesting deeper than {MAX_DEPTH}")
            child = {}
            stack[-1].setdefault(name, []).append(child)
            stack.append(child)
            closers.append("}" if val == "{" else ">")
            i += 1
        elif kind == "punct" and val == "[":
            # repeated scalar list: name: [1, 2, 3]
            i += 1
            vals = []
            while i < len(toks) and toks[i][1] != "]":
                k2, v2, l2 = toks[i]
                if k2 == "punct" and v2 == ",":
                    i += 1
                    continue
                vals.append(_scalar(k2, v2, l2, source))
                i += 1
            if i >= len(toks):
                raise FormatError(f"{source}: unterminated list for field {name!r}")
            i += 1
            stack[-1].setdefault(name, []).extend(vals)
        else:
            stack[-1].setdefault(name, []).append(_scalar(kind, val, line, source))
            i += 1
            # adjacent string literals concatenate
            while kind == "str" and i < len(toks) and toks[i][0] == "str":
                stack[-1][name][-1] += _unquote(toks[i][1])
                i += 1
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
