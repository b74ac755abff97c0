"""Go's encoding/json error words for bad bodies (emu.apiserver.gojson), checked
against Go itself: kubectl (Go) parsing the same bytes from a file."""

from __future__ import annotations

import re

import pytest

from emu.apiserver.gojson import kind_of, quote_char, syntax_error

# What Go 1.23's encoding/json (kubectl 1.32) says for each.
GO_SAYS = {
    b"{not json": "invalid character 'n' looking for beginning of object key string",
    b'{"a":1 "b":2}': "invalid character '\"' after object key:value pair",
    b'{"a" 1}': "invalid character '1' after object key",
    b"[1,]": "invalid character ']' looking for beginning of value",
    b'{"a":tru}': "invalid character '}' in literal true (expecting 'e')",
    b'{"a":-}': "invalid character '}' in numeric literal",
    b'{"a":1.}': "invalid character '}' after decimal point in numeric literal",
    b'{"a":"\\q"}': "invalid character 'q' in string escape code",
    b'{"a":1}x': "invalid character 'x' after top-level value",
    b'{"a":"\\u12G4"}': "invalid character 'G' in \\u hexadecimal character escape",
    b'{"a":1e}': "invalid character '}' in exponent of numeric literal",
    b'{"kind":"ConfigMap","a":01}': "invalid character '1' after object key:value pair",
    b'{"a":1,}': "invalid character '}' looking for beginning of object key string",
    b'{"a":NaN}': "invalid character 'N' looking for beginning of value",
    b'{"a":"x\ny"}': "invalid character '\\n' in string literal",
    b'{"a":[1 2]}': "invalid character '2' after array element",
    b'{"a":{"b":1}': "unexpected end of JSON input",
    b"": "unexpected end of JSON input",
    b"t": "invalid character ' ' in literal true (expecting 'r')",  # Go's end of input is a space
    b"-": "invalid character ' ' in numeric literal",
    b"\x00": "invalid character '\\x00' looking for beginning of value",
    b"'a'": "invalid character '\\'' looking for beginning of value",
}


@pytest.mark.parametrize("body", list(GO_SAYS))
def test_syntax_errors_in_go_words(body):
    assert syntax_error(body) == GO_SAYS[body]


@pytest.mark.parametrize("body", [b'{"a":[1,2.5e-3,true,false,null,"\\u00e9\\n"],"b":{}}', b" 1 ", b"null", b"[]"])
def test_valid_json_has_no_error(body):
    assert syntax_error(body) == ""


def test_quote_char_and_kinds():
    assert [quote_char(c) for c in (0x61, 0x22, 0x5C, 0x09, 0x7F, 0xE9, 0xA0)] == \
        ["'a'", "'\"'", "'\\\\'", "'\\t'", "'\\x7f'", "'é'", "'\\u00a0'"]  # fmt: skip
    assert [kind_of(v) for v in ([], "x", 1, 2.5, True, None)] == ["array", "string", "number", "number", "bool",
                                                                  "null"]  # fmt: skip


@pytest.mark.parametrize("body", [b for b, said in GO_SAYS.items() if b.startswith(b"{") and not b.endswith(b"}x")
                                  and said != "unexpected end of JSON input"])  # fmt: skip
def test_go_itself_says_the_same(kubectl_default, tmp_path, body):
    # kubectl reads a manifest with Go's encoding/json when it starts with "{" (a stream
    # decoder: at the end of the input it says "unexpected EOF" where Unmarshal does not).
    path = tmp_path / "bad.json"
    path.write_bytes(body)
    p = kubectl_default.run("apply", "--dry-run=client", "-f", str(path), check=False)
    said = re.search(r"error parsing .*?: (?:json: offset \d+: )?(.*)", p.stderr)
    assert said, p.stderr
    assert syntax_error(body) == said.group(1).strip()
