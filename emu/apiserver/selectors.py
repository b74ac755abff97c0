"""Label and field selectors, parsed and matched as k8s.io/apimachinery parses them.

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
`a>1`, `a<1`, comma-separated (all must hold). Field selectors: `k=v`, `k==v`,
`k!=v`, comma-separated, with `\\,` `\\=` `\\\\` escapes."""

from __future__ import annotations

import re
from dataclasses import dataclass


class SelectorError(ValueError):
    """A selector that does not parse; the message says where."""


# The characters that end an identifier in a label selector (labels.Lexer's special symbols).
_SPECIAL = set("!=(),<> \t\n")


def _lex(text: str) -> list[tuple[str, str]]:
    """Tokens (kind, text): kind is "id", or the operator/punctuation itself."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            i += 1
            continue
        two = text[i:i + 2]
        if two in ("==", "!="):
            out.append((two, two))
            i += 2
            continue
        if c in "!=(),<>":
            out.append((c, c))
            i += 1
            continue
        j = i
        while j < n and text[j] not in _SPECIAL:
            j += 1
        word = text[i:j]
        out.append((word if word in ("in", "notin") else "id", word))
        i = j
    return out


_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def valid_label_key(key: str) -> str:
    """'' when `key` is a valid label key (an optional DNS prefix, '/', a qualified name), else why not."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return ("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
                "or '.', and must start and end with an alphanumeric character")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return ""


def valid_label_value(value: str) -> str:
    """'' when `value` is a valid label value, else why not."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
                "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return ""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and v in self.values
        if self.op in ("!=", "notin"):
            return not has or v not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            n, bound = int(v), int(self.values[0])
        except ValueError:
            return False
        return n > bound if self.op == ">" else n < bound


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches every object."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> "LabelSelector":
        """Parse Kubernetes' label selector syntax; raise SelectorError when it does not parse."""
        text = (text or "").strip()
        if not text:
            return cls()
        toks = _lex(text)
        reqs: list[Requirement] = []
        i = 0

        def expect(kind: str) -> str:
            nonlocal i
            if i >= len(toks) or toks[i][0] != kind:
                found = toks[i][1] if i < len(toks) else ""
                raise SelectorError(f"found '{found}', expected: {kind if kind != 'id' else 'identifier'}")
            i += 1
            return toks[i - 1][1]

        while True:
            negate = False
            if i < len(toks) and toks[i][0] == "!":
                negate = True
                i += 1
            key = expect("id")
            why = valid_label_key(key)
            if why:
                raise SelectorError(f'key: Invalid value: "{key}": {why}')
            if negate:
                reqs.append(Requirement(key, "!"))
            elif i >= len(toks) or toks[i][0] == ",":
                reqs.append(Requirement(key, "exists"))
            else:
                op = toks[i][0]
                i += 1
                if op in ("=", "==", "!="):
                    val = toks[i][1] if i < len(toks) and toks[i][0] == "id" else ""
                    if val:
                        i += 1
                    reqs.append(Requirement(key, "!=" if op == "!=" else "=", (val,)))
                elif op in ("in", "notin"):
                    expect("(")
                    vals: list[str] = []
                    while True:
                        if i < len(toks) and toks[i][0] == "id":
                            vals.append(toks[i][1])
                            i += 1
                        else:
                            vals.append("")
                        if i < len(toks) and toks[i][0] == ",":
                            i += 1
                            continue
                        expect(")")
                        break
                    reqs.append(Requirement(key, op, tuple(vals)))
                elif op in (">", "<"):
                    val = expect("id")
                    if not re.fullmatch(r"-?\d+", val):
                        raise SelectorError("for 'Gt', 'Lt' operators, the value must be an integer")
                    reqs.append(Requirement(key, op, (val,)))
                else:
                    raise SelectorError(f"found '{toks[i - 1][1]}', expected: in, notin, =, ==, !=, gt, lt")
            for r in reqs[-1:]:
                for v in r.values:
                    if r.op not in (">", "<") and valid_label_value(v):
                        raise SelectorError(f"values[0][{r.key}]: Invalid value: \"{v}\": {valid_label_value(v)}")
            if i >= len(toks):
                break
            expect(",")
        return cls(tuple(reqs))

    @classmethod
    def from_match(cls, selector: dict | None) -> "LabelSelector":
        """From a metav1.LabelSelector object ({matchLabels, matchExpressions})."""
        selector = selector or {}
        reqs = [Requirement(k, "=", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for e in selector.get("matchExpressions") or []:
            reqs.append(Requirement(e["key"], ops[e["operator"]], tuple(e.get("values") or ())))
        return cls(tuple(reqs))

    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: dict | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclass(frozen=True)
class FieldTerm:
    field: str
    op: str  # "=" or "!="
    value: str

    def matches(self, fields: dict) -> bool:
        v = fields.get(self.field, "")
        return (v == self.value) if self.op == "=" else (v != self.value)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector; the server checks its field labels against the kind's."""

    terms: tuple[FieldTerm, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> "FieldSelector":
        """Parse `k=v,k!=v,...`; raise SelectorError as fields.ParseSelector does."""
        text = (text or "").strip()
        if not text:
            return cls()
        terms = []
        for part in _split_unescaped(text, ","):
            m = None
            for op in ("!=", "==", "="):
                # the first unescaped operator in the term
                idx = _find_unescaped(part, op)
                if idx >= 0 and (m is None or idx < m[0]):
                    m = (idx, op)
            if m is None:
                raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
            idx, op = m
            terms.append(FieldTerm(_unescape(part[:idx]).strip(), "!=" if op == "!=" else "=",
                                   _unescape(part[idx + len(op):])))
        return cls(tuple(terms))

    def empty(self) -> bool:
        return not self.terms

    def fields(self) -> list[str]:
        return [t.field for t in self.terms]

    def value_of(self, field: str) -> str | None:
        """The value an `=` term requires of `field` (e.g. metadata.name for a watch of one object)."""
        for t in self.terms:
            if t.field == field and t.op == "=":
                return t.value
        return None

    def matches(self, fields: dict | None) -> bool:
        fields = fields or {}
        return all(t.matches(fields) for t in self.terms)


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1
