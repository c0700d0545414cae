"""QEMU 7.2's streaming JSON reader for QMP input, with no I/O.

Theory of operation
-------------------
A QMP monitor reads a byte stream, not lines: clients such as `qemu.qmp`
send one request after another without a newline.  QEMU splits the stream
in three stages (qobject/json-lexer.c, json-streamer.c, json-parser.c) and
`JsonStreamer` repeats them:

1. the *lexer* cuts bytes into tokens: the six structural characters,
   strings in double *or single* quotes (any byte 0x20-0xFD inside, an
   escape followed by any such byte), numbers, keywords (``[a-z]+``) and
   whitespace.  Any other byte ends the current token as an *error token*
   holding what was read so far including that byte; the lexer then skips
   input (recovery) up to the next structural character, control character
   or byte 0xFE/0xFF;
2. the *streamer* counts braces and brackets and hands the tokens to the
   parser as soon as they balance (or go negative), so a top-level scalar,
   a lone ``}`` or an unknown keyword is a complete "message".  It refuses
   more than 1024 open levels, 2 Mi tokens or 64 MiB in one message;
3. the *parser* builds the value or names the first problem.

Every message becomes either a value or an error text, which the monitor
answers as ``{"error": {"class": "GenericError", "desc": "JSON parse error,
..."}}``; nothing closes the connection.  A keyword or number at the very
end of the input waits for the byte after it, as in QEMU.

Strings are decoded as QEMU does (modified UTF-8: an overlong ``C0 80`` is
NUL, surrogates and bytes that are not UTF-8 are refused); integers beyond
uint64 become floats.

Fast path: an object in printable ASCII without ``\\u`` escapes, where
Python's `json` and QEMU agree on every input (no duplicate keys, no
NaN/Infinity, no single quotes, no overflowing floats, below Python's
nesting limit), is parsed by `json.JSONDecoder.raw_decode`; anything it
refuses or might read differently goes through the tokens above.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

# token kinds
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA = "{", "}", "[", "]", ":", ","
STRING, INTEGER, FLOAT, KEYWORD = "string", "integer", "float", "keyword"

_STRUCTURAL = b"{}[]:,"
_WS = b" \t\r\n"
# A complete token at the start of the buffer.  Strings are written as runs of
# plain bytes between escapes, so a 64 MiB string is one run, not 64 Mi
# repetitions of a group (which costs the regex engine memory per byte).
# Numbers and keywords need the byte after them (lookahead), so they only
# match when it is present.
_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
  | (?P<struct>[{}\[\]:,])
  | (?P<dq>"[\x20-\x21\x23-\x5b\x5d-\xfd]*(?:\\[\x20-\xfd][\x20-\x21\x23-\x5b\x5d-\xfd]*)*")
  | (?P<sq>'[\x20-\x26\x28-\x5b\x5d-\xfd]*(?:\\[\x20-\xfd][\x20-\x26\x28-\x5b\x5d-\xfd]*)*')
  | (?P<num>-?(?:0|[1-9][0-9]*)(?P<frac>(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))(?=[^0-9.eE])
  | (?P<kw>[a-z]+)(?=[^a-z])
    """,
    re.VERBOSE | re.DOTALL,
)
# A prefix that a later byte could still complete into a token.
_PARTIAL = re.compile(
    rb"""
    "[\x20-\x21\x23-\x5b\x5d-\xfd]*(?:\\[\x20-\xfd][\x20-\x21\x23-\x5b\x5d-\xfd]*)*\\?
  | '[\x20-\x26\x28-\x5b\x5d-\xfd]*(?:\\[\x20-\xfd][\x20-\x26\x28-\x5b\x5d-\xfd]*)*\\?
  | [a-z]+
  | -(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]*)?)?
  | (?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]*)?
    """,
    re.VERBOSE | re.DOTALL,
)
_RECOVERY_END = re.compile(rb"[\x00-\x1f{}\[\]:,\xfe\xff]")


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token of QEMU's JSON lexer (qobject/json-lexer.c): its kind and
    its bytes."""

    kind: str
    text: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One complete message: a parsed value, or the error QEMU answers it with."""

    value: Any = None
    error: str | None = None


class _NotPlain(Exception):
    """The fast path met something only the QEMU-exact path may judge."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _NotPlain
    return out


def _int(text: str) -> Any:
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotPlain
    return value


def _constant(_text: str) -> Any:
    raise _NotPlain


_FAST = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_int=_int, parse_float=_float, parse_constant=_constant
)
_FAST_LIMIT = 1 << 20
_MISS: Any = object()


class JsonStreamer:
    """QEMU's JSONMessageParser: feed bytes, get complete messages (never raises)."""

    def __init__(self, fast: bool = True) -> None:
        self.fast = fast  # False: every message through the QEMU-exact tokens
        self._buf = bytearray()
        self._recovering = False
        self._tokens: list[Token] = []
        self._braces = 0
        self._brackets = 0
        self._size = 0

    @property
    def pending(self) -> int:
        """Bytes and tokens held for a message that is not complete yet."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        ascii_text: str | None = None
        while pos < n:
            if buf[pos] == 0x7B and self.fast and not self._recovering and not self._tokens:
                if ascii_text is None:
                    ascii_text = buf.decode("ascii") if buf.isascii() else ""
                value, end = self._fast(ascii_text, pos)
                if value is not _MISS:
                    out.append(Message(value, None))
                    pos = end
                    continue
            if self._recovering:
                m = _RECOVERY_END.search(buf, pos)
                if m is None:
                    pos = n
                    break
                pos = m.start()
                self._recovering = False
            m = _TOKEN.match(buf, pos)
            if m is not None:
                kind = m.lastgroup or ""
                text = bytes(m.group(kind))
                pos = m.end()
                if kind == "ws":
                    continue
                if kind == "struct":
                    tok = Token(text.decode(), text)
                elif kind in ("dq", "sq"):
                    tok = Token(STRING, text)
                elif kind == "num":
                    tok = Token(FLOAT if m.group("frac") else INTEGER, text)
                else:
                    tok = Token(KEYWORD, text)
                self._token(tok, out)
                continue
            p = _PARTIAL.match(buf, pos)
            if p is not None and p.end() == n and p.end() > pos:
                break  # an incomplete token: wait for more input
            # an error token: the longest valid prefix plus the offending byte
            bad_end = (p.end() if p is not None else pos) + 1
            text = bytes(buf[pos:bad_end])
            pos = bad_end
            self._recovering = True
            self._emit_error(f"JSON parse error, stray '{_c_text(text)}'", out)
        del buf[:pos]
        if len(buf) > MAX_TOKEN_SIZE:  # one token grew past the limit: drop it
            del buf[:]
            self._emit_error("JSON token size limit exceeded", out)
        return out

    @staticmethod
    def _fast(text: str, pos: int) -> tuple[Any, int]:
        if not text:
            return _MISS, pos
        try:
            value, end = _FAST.raw_decode(text, pos)
        except (ValueError, RecursionError, _NotPlain):
            return _MISS, pos
        if end - pos > _FAST_LIMIT or "\\u" in text[pos:end]:
            return _MISS, pos
        return value, end

    def _emit_error(self, text: str, out: list[Message]) -> None:
        self._reset()
        out.append(Message(None, text))

    def _reset(self) -> None:
        self._tokens = []
        self._braces = self._brackets = 0
        self._size = 0

    def _token(self, tok: Token, out: list[Message]) -> None:
        kind = tok.kind
        if kind == LCURLY:
            self._braces += 1
        elif kind == RCURLY:
            self._braces -= 1
        elif kind == LSQUARE:
            self._brackets += 1
        elif kind == RSQUARE:
            self._brackets -= 1
        if self._size + len(tok.text) + 1 > MAX_TOKEN_SIZE:
            self._emit_error("JSON token size limit exceeded", out)
            return
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            self._emit_error("JSON token count limit exceeded", out)
            return
        if self._braces + self._brackets > MAX_NESTING:
            self._emit_error("JSON nesting depth limit exceeded", out)
            return
        self._tokens.append(tok)
        self._size += len(tok.text)
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return
        tokens = self._tokens
        self._reset()
        out.append(parse_tokens(tokens))


def _c_text(raw: bytes) -> str:
    """Bytes as QEMU's JSON writer shows a C string (invalid UTF-8 as U+FFFD)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# The parser (json-parser.c): recursive descent over one message's tokens.
# The first error wins; `_Fail` unwinds to the top.


class _Fail(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.error: str | None = None

    def fail(self, msg: str) -> _Fail:
        if self.error is None:
            self.error = f"JSON parse error, {msg}"
        return _Fail()

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def pop(self) -> Token | None:
        tok = self.peek()
        if tok is not None:
            self.i += 1
        return tok

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.fail("premature EOI")
        kind = tok.kind
        if kind == LCURLY:
            return self.obj()
        if kind == LSQUARE:
            return self.array()
        if kind in (STRING, INTEGER, FLOAT):
            self.pop()
            return self.literal(tok)
        if kind == KEYWORD:
            self.pop()
            word = tok.text.decode("ascii")
            if word == "true":
                return True
            if word == "false":
                return False
            if word == "null":
                return None
            raise self.fail(f"invalid keyword '{word}'")
        raise self.fail("expecting value")

    def obj(self) -> dict[str, Any]:
        self.pop()
        out: dict[str, Any] = {}
        peek = self.peek()
        if peek is None:
            raise self.fail("premature EOI")
        if peek.kind == RCURLY:
            self.pop()
            return out
        self.pair(out)
        while True:
            tok = self.pop()
            if tok is None:
                raise self.fail("premature EOI")
            if tok.kind == RCURLY:
                return out
            if tok.kind != COMMA:
                raise self.fail("expected separator in dict")
            self.pair(out)

    def pair(self, out: dict[str, Any]) -> None:
        if self.peek() is None:
            raise self.fail("premature EOI")
        key = self.value()
        if not isinstance(key, str):
            raise self.fail("key is not a string in object")
        tok = self.pop()
        if tok is None:
            raise self.fail("premature EOI")
        if tok.kind != COLON:
            raise self.fail("missing : in object pair")
        value = self.value()
        if key in out:
            raise self.fail("duplicate key")
        out[key] = value

    def array(self) -> list[Any]:
        self.pop()
        out: list[Any] = []
        peek = self.peek()
        if peek is None:
            raise self.fail("premature EOI")
        if peek.kind == RSQUARE:
            self.pop()
            return out
        out.append(self.value())
        while True:
            tok = self.pop()
            if tok is None:
                raise self.fail("premature EOI")
            if tok.kind == RSQUARE:
                return out
            if tok.kind != COMMA:
                raise self.fail("expected separator in list")
            out.append(self.value())

    def literal(self, tok: Token) -> Any:
        if tok.kind == STRING:
            return self.string(tok.text)
        text = tok.text.decode("ascii")
        # int64/uint64 literals have at most 20 digits and a sign; a longer one is a
        # double (and int() of a very long one would pass Python's conversion limit)
        if tok.kind == INTEGER and len(text) <= 21:
            value = int(text)
            if -(2**63) <= value < 2**64:
                return value
        return float(text)

    def string(self, raw: bytes) -> str:
        body = raw[1:-1]
        out: list[str] = []
        i, n = 0, len(body)
        while i < n:
            c = body[i]
            if c == 0x5C:  # backslash
                i += 1
                e = body[i]
                simple = _ESCAPES.get(e)
                if simple is not None:
                    out.append(simple)
                    i += 1
                    continue
                if e != 0x75:  # 'u'
                    raise self.fail("invalid escape sequence in string")
                start = i - 1
                cp = _hex4(body, i + 1)
                i += 5
                if 0xD800 <= cp <= 0xDBFF and body[i : i + 2] == b"\\u":
                    trail = _hex4(body, i + 2)
                    if 0xDC00 <= trail <= 0xDFFF:
                        cp = 0x10000 + ((cp & 0x3FF) << 10) + (trail & 0x3FF)
                        i += 6
                    else:
                        cp = -1
                if cp < 0 or 0xD800 <= cp <= 0xDFFF:
                    shown = _c_text(body[start:i])
                    raise self.fail(f"{shown} is not a valid Unicode character")
                out.append(chr(cp))
                continue
            if c < 0x80:
                out.append(chr(c))
                i += 1
                continue
            cp, size = _mod_utf8(body, i)
            if cp < 0:
                raise self.fail("invalid UTF-8 sequence in string")
            out.append(chr(cp))
            i += size
        return "".join(out)


_ESCAPES = {
    0x22: '"',
    0x27: "'",
    0x5C: "\\",
    0x2F: "/",
    0x62: "\b",
    0x66: "\f",
    0x6E: "\n",
    0x72: "\r",
    0x74: "\t",
}


def _hex4(body: bytes, i: int) -> int:
    digits = body[i : i + 4]
    if len(digits) != 4 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
        return -1
    return int(digits, 16)


def _mod_utf8(body: bytes, i: int) -> tuple[int, int]:
    """One modified-UTF-8 code point at body[i] (a byte >= 0x80): (cp, size) or (-1, 1)."""
    c = body[i]
    if 0xC0 <= c <= 0xDF:
        size, cp, least = 2, c & 0x1F, 0x80
    elif 0xE0 <= c <= 0xEF:
        size, cp, least = 3, c & 0x0F, 0x800
    elif 0xF0 <= c <= 0xF7:
        size, cp, least = 4, c & 0x07, 0x10000
    else:
        return -1, 1
    if i + size > len(body):
        return -1, 1
    for k in range(1, size):
        b = body[i + k]
        if b & 0xC0 != 0x80:
            return -1, 1
        cp = (cp << 6) | (b & 0x3F)
    if cp == 0 and size == 2:  # C0 80: modified UTF-8's NUL
        return 0, 2
    if cp < least or 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
        return -1, 1
    return cp, size


def parse_tokens(tokens: list[Token]) -> Message:
    """json_parser_parse: one message's tokens -> a value or QEMU's error text."""
    parser = _Parser(tokens)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * MAX_NESTING + 200))
    try:
        value = parser.value()
    except _Fail:
        return Message(None, parser.error)
    finally:
        sys.setrecursionlimit(old)
    return Message(value, None)
