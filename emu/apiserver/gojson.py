"""The words of Go's encoding/json for a bad body, which kube-apiserver answers
with ("couldn't get version/kind; json parse error: <Go's error>") and kubectl
prints: a syntax error as Go's scanner finds it (the same state machine,
written again from its documented behaviour), and the JSON type names of an
UnmarshalTypeError. Pure functions; standard library only."""

from __future__ import annotations

_SPACE = b" \t\r\n"
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
_NAMED = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v"}


class _Invalid(Exception):
    pass


def quote_char(c: int) -> str:
    """Go's quoteChar: the byte as a quoted Go character ('x', '\\n', '\\x00', '"', '\\'')."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c == 0x5C:
        return "'\\\\'"
    if c in _NAMED:
        return f"'{_NAMED[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    if c < 0x80 or chr(c).isprintable():  # Go turns the byte into the rune U+00XX
        return f"'{chr(c)}'"
    return f"'\\u{c:04x}'"


class _Scanner:
    """Go's encoding/json scanner (scanner.go): one step a byte, a stack of open containers."""

    def __init__(self) -> None:
        self.step = self.begin_value
        self.stack: list[str] = []  # "key", "value" (in an object), "array"
        self.end_top = False

    def fail(self, c: int, context: str) -> None:
        raise _Invalid(f"invalid character {quote_char(c)} {context}")

    def begin_value_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x5D:  # ]
            return self.end_value(c)
        self.begin_value(c)

    def begin_value(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7B:  # {
            self.stack.append("key")
            self.step = self.begin_string_or_empty
        elif c == 0x5B:  # [
            self.stack.append("array")
            self.step = self.begin_value_or_empty
        elif c == 0x22:
            self.step = self.in_string
        elif c == 0x2D:  # -
            self.step = self.neg
        elif c == 0x30:
            self.step = self.zero
        elif 0x31 <= c <= 0x39:
            self.step = self.digits
        elif c in (0x74, 0x66, 0x6E):  # t f n
            self.step = self.literal({0x74: "true", 0x66: "false", 0x6E: "null"}[c], 1)
        else:
            self.fail(c, "looking for beginning of value")

    def begin_string_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7D:  # }
            self.stack[-1] = "value"
            return self.end_value(c)
        self.begin_string(c)

    def begin_string(self, c: int) -> None:
        if c in _SPACE:
            return
        if c != 0x22:
            self.fail(c, "looking for beginning of object key string")
        self.step = self.in_string

    def end_value(self, c: int) -> None:
        if not self.stack:
            self.step, self.end_top = self.end_of_top, True
            return self.end_of_top(c)
        if c in _SPACE:
            self.step = self.end_value
            return
        top = self.stack[-1]
        if top == "key":
            if c != 0x3A:  # :
                self.fail(c, "after object key")
            self.stack[-1], self.step = "value", self.begin_value
        elif top == "value":
            if c == 0x2C:  # ,
                self.stack[-1], self.step = "key", self.begin_string
            elif c == 0x7D:
                self.pop()
            else:
                self.fail(c, "after object key:value pair")
        else:
            if c == 0x2C:
                self.step = self.begin_value
            elif c == 0x5D:
                self.pop()
            else:
                self.fail(c, "after array element")

    def pop(self) -> None:
        self.stack.pop()
        if not self.stack:
            self.step, self.end_top = self.end_of_top, True
        else:
            self.step = self.end_value

    def end_of_top(self, c: int) -> None:
        if c not in _SPACE:
            self.fail(c, "after top-level value")

    def in_string(self, c: int) -> None:
        if c == 0x22:
            self.step = self.end_value
        elif c == 0x5C:
            self.step = self.in_escape
        elif c < 0x20:
            self.fail(c, "in string literal")

    def in_escape(self, c: int) -> None:
        if c in b'bfnrt\\/"':
            self.step = self.in_string
        elif c == 0x75:  # u
            self.step = self.hex_digits(4)
        else:
            self.fail(c, "in string escape code")

    def hex_digits(self, left: int):
        def step(c: int) -> None:
            if c not in _HEX:
                self.fail(c, "in \\u hexadecimal character escape")
            self.step = self.in_string if left == 1 else self.hex_digits(left - 1)
        return step

    def neg(self, c: int) -> None:
        if c == 0x30:
            self.step = self.zero
        elif 0x31 <= c <= 0x39:
            self.step = self.digits
        else:
            self.fail(c, "in numeric literal")

    def digits(self, c: int) -> None:
        if c in _DIGITS:
            return
        self.zero(c)

    def zero(self, c: int) -> None:
        if c == 0x2E:  # .
            self.step = self.dot
        elif c in (0x65, 0x45):  # e E
            self.step = self.exponent
        else:
            self.end_value(c)

    def dot(self, c: int) -> None:
        if c not in _DIGITS:
            self.fail(c, "after decimal point in numeric literal")
        self.step = self.fraction

    def fraction(self, c: int) -> None:
        if c in _DIGITS:
            return
        if c in (0x65, 0x45):
            self.step = self.exponent
        else:
            self.end_value(c)

    def exponent(self, c: int) -> None:
        if c in (0x2B, 0x2D):  # + -
            self.step = self.exponent_sign
        else:
            self.exponent_sign(c)

    def exponent_sign(self, c: int) -> None:
        if c not in _DIGITS:
            self.fail(c, "in exponent of numeric literal")
        self.step = self.exponent_digits

    def exponent_digits(self, c: int) -> None:
        if c not in _DIGITS:
            self.end_value(c)

    def literal(self, word: str, at: int):
        def step(c: int) -> None:
            if c != ord(word[at]):
                self.fail(c, f"in literal {word} (expecting {quote_char(ord(word[at]))})")
            self.step = self.end_value if at + 1 == len(word) else self.literal(word, at + 1)
        return step


def syntax_error(data: bytes | str) -> str:
    """Go's json.Unmarshal error for a body that is not valid JSON, or "" if it is."""
    if isinstance(data, str):
        data = data.encode()
    scanner = _Scanner()
    try:
        for c in data:
            scanner.step(c)
        if not scanner.end_top:
            scanner.step(0x20)  # Go's scanner.eof: a space ends a number at the top level
        if not scanner.end_top:
            return "unexpected end of JSON input"
    except _Invalid as error:
        return str(error)
    return ""


def refuse_constant(name: str) -> None:
    """json.loads' parse_constant: NaN and Infinity are not JSON, and Go refuses them."""
    raise ValueError(f"{name} is not JSON")


def kind_of(value: object) -> str:
    """The JSON type of a parsed value as Go's UnmarshalTypeError names it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")
