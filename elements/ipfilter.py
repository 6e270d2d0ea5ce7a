"""IPClassifier and IPFilter: Click's tcpdump-like expressions over IPv4 packets.

Each pattern (IPClassifier) or rule (IPFilter) is parsed into a boolean
formula over word tests (classifier.Test) whose offsets are relative to the
IPv4 header (base `ip`) or the transport header (base `transp`); the
formulas are compiled by the Classifier compiler into one decision program,
run by the Classifier kernel (classifier.c) in its IP mode.

Semantics (Click's IPFilter/IPClassifier, made precise here):

- The packet must carry the `nh` annotation (CheckIPHeader, MarkIPHeader).
  The *datagram* is the bytes from the IPv4 header to the smaller of the
  packet's end and the IP total length; a packet without the annotation or
  whose datagram is shorter than 20 bytes is dropped and counted (`no_ip`).
- The transport header starts IHL * 4 bytes into the datagram.
- A primitive reads some fields; it matches only if every byte it reads lies
  inside the datagram (so bytes past the IP total length, like Ethernet
  padding, are never looked at). Primitives on transport fields (`port`,
  `icmp type`, `tcp opt`, `tcp win`, `transp[..]`, `tcp[..]`, ...) also need
  a first fragment (fragment offset 0) and, for `tcp ..`/`udp ..`/
  `icmp ..`, that protocol (`port` alone: TCP or UDP).
- Relations: `==` (default), `<`, `>` and ranges `A-B` are tested inside
  those conditions; `!=`, `>=` and `<=` are the negations of `==`, `<` and
  `>` inside those conditions, taken after combining `src or dst` /
  `src and dst` (as Click does). So `tcp dst port != 80` matches only
  first-fragment TCP packets that hold a destination port that is not 80,
  and `port != 80` means neither port is 80, while `port >= 1024` means
  neither port is below 1024 (both are at least 1024).
- `not`/`!` negates a whole primitive, conditions included: `not tcp dst
  port 80` matches every packet that is not a (first-fragment, long enough)
  TCP packet to port 80 -- non-first fragments and truncated packets too.
"""

import difflib
import ipaddress
import re

from middlebox.element import Element, List, Param, Str

from .classifier import (BASE_NET, BASE_TRANSP, DENY, FLAG_IP, MAX_OUTPUTS, NBASES,
                         INFINITY, Knowledge, Test, compile_steps, lower_program,
                         program_text)

PROTOCOLS = {"icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "udp": 17}
TCPUDP = "tcpudp"

PORTS = {
    "echo": 7, "discard": 9, "daytime": 13, "chargen": 19, "ftp-data": 20, "ftp": 21,
    "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "dns": 53, "bootps": 67,
    "bootpc": 68, "tftp": 69, "finger": 79, "www": 80, "http": 80, "pop3": 110,
    "sunrpc": 111, "auth": 113, "nntp": 119, "ntp": 123, "netbios-ns": 137,
    "netbios-dgm": 138, "netbios-ssn": 139, "imap": 143, "snmp": 161, "snmp-trap": 162,
    "bgp": 179, "irc": 194, "imap3": 220, "ldap": 389, "https": 443, "rip": 520,
    "route": 520, "imaps": 993, "pop3s": 995,
}

ICMP_TYPES = {
    "echo-reply": 0, "unreachable": 3, "sourcequench": 4, "redirect": 5, "echo": 8,
    "routeradvert": 9, "routersolicit": 10, "timeexceeded": 11, "parameterproblem": 12,
    "timestamp": 13, "timestamp-reply": 14, "inforeq": 15, "inforeq-reply": 16,
    "maskreq": 17, "maskreq-reply": 18,
}

TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}


class Field:
    """NBITS bits starting BITOFF bits (from the most significant bit of
    byte 0) into a base."""

    def __init__(self, base, bitoff, nbits):
        self.base, self.bitoff, self.nbits = base, bitoff, nbits

    @property
    def end(self):
        """Bytes of the base the field needs."""
        return (self.bitoff + self.nbits + 7) // 8

    @property
    def full(self):
        return (1 << self.nbits) - 1


def _ip(bitoff, nbits):
    return Field(BASE_NET, bitoff, nbits)


def _tp(bitoff, nbits):
    return Field(BASE_TRANSP, bitoff, nbits)


# Named fields: type word -> (field, protocol it implies or None, display name)
IP_FIELDS = {
    "vers": _ip(0, 4), "hl": _ip(4, 4), "tos": _ip(8, 8), "dscp": _ip(8, 6),
    "len": _ip(16, 16), "id": _ip(32, 16), "ttl": _ip(64, 8),
}
PROTO_FIELD = _ip(72, 8)
FRAG_FIELD = _ip(48, 16)            # flags and fragment offset
ADDR_FIELDS = (_ip(96, 32), _ip(128, 32))
PORT_FIELDS = (_tp(0, 16), _tp(16, 16))
TCP_WIN = _tp(112, 16)
TCP_FLAGS_FIELD = _tp(104, 8)
ICMP_TYPE = _tp(0, 8)

SRCDST = {"src": "src", "dst": "dst", "dest": "dst"}
TYPES = ("host", "net", "port", "proto", "frag", "unfrag", "opt", "type", "win", "ect",
         "ce") + tuple(IP_FIELDS)
RELOPS = ("==", "=", "!=", "<", ">", "<=", ">=")
CONNECTIVES = ("and", "&&", "or", "||", "not", "!", "(", ")")
ALL_WORDS = ("-", "all", "any")
MAX_DEPTH = 64

VOCABULARY = sorted(set(
    list(PROTOCOLS) + list(PORTS) + list(ICMP_TYPES) + list(TCP_FLAGS) + list(SRCDST)
    + list(TYPES) + ["ip", "transp", "true", "false", "and", "or", "not", "mask", "all",
                     "any"]))


class ExprError(ValueError):
    pass


# --- formulas --------------------------------------------------------------
# ("T", Test) | ("C", bool) | ("N", f) | ("A", [f, ...]) | ("O", [f, ...])

TRUE, FALSE = ("C", True), ("C", False)


def AND(*fs):
    fs = [f for f in fs if f != TRUE]
    if FALSE in fs:
        return FALSE
    return fs[0] if len(fs) == 1 else ("A", fs) if fs else TRUE


def OR(*fs):
    fs = [f for f in fs if f != FALSE]
    if TRUE in fs:
        return TRUE
    return fs[0] if len(fs) == 1 else ("O", fs) if fs else FALSE


def NOT(f):
    if f[0] == "C":
        return ("C", not f[1])
    if f[0] == "N":
        return f[1]
    return ("N", f)


def monotone(f):
    """True if f has no negation and no constant true: then, as every test
    fails on a packet too short for it, so does f."""
    if f[0] == "T":
        return True
    if f[0] == "C":
        return not f[1]
    if f[0] == "N":
        return False
    return all(monotone(g) for g in f[1])


def bit_tests(field, bits, value, need):
    """Tests that the field's bits `bits` (a mask over the field, LSB = bit
    0) equal `value`'s: one test per word they touch, all needing `need`
    bytes of the field's base."""
    words = {}
    for i in range(field.nbits):
        if not bits >> i & 1:
            continue
        pos = field.bitoff + field.nbits - 1 - i
        off, shift = (pos // 32) * 4, 31 - pos % 32
        m, v = words.get(off, (0, 0))
        words[off] = (m | 1 << shift, v | (value >> i & 1) << shift)
    return AND(*[("T", Test(off, need, m, v, field.base)) for off, (m, v) in sorted(words.items())])


def length_test(base, need):
    return ("T", Test(0, need, 0, 0, base))


def field_eq(field, mask, value, need):
    """(field & mask) == value."""
    if value & ~mask:
        return FALSE
    if not mask:
        return length_test(field.base, need)
    return bit_tests(field, mask, value, need)


def _runs(field, mask, bound):
    """Bits of the field from the most significant down, grouped in runs:
    ([(bound's bit, run bits), ...], stop) where stop is None if every bit
    was seen, else the first bit outside the mask where bound has a 1."""
    runs = []
    for i in reversed(range(field.nbits)):
        b = 1 << i
        if not mask & b:
            if bound & b:
                return runs, b
            continue
        one = bool(bound & b)
        if runs and runs[-1][0] == one:
            runs[-1][1] |= b
        else:
            runs.append([one, b])
    return runs, None


def field_ge(field, mask, low, need):
    """(field & mask) >= low, as tests of runs of bits from the top: where
    `low` has zeros, any one bit decides 'greater'; where it has ones, any
    zero bit decides 'less'; all equal: 'equal'."""
    runs, stop = _runs(field, mask, low)
    r = FALSE if stop is not None else TRUE
    for one, bits in reversed(runs):
        if one:
            r = AND(bit_tests(field, bits, bits, need), r)
        else:
            r = OR(NOT(bit_tests(field, bits, 0, need)), r)
    return r


def field_le(field, mask, high, need):
    """(field & mask) <= high, the mirror image of field_ge."""
    runs, stop = _runs(field, mask, high)
    r = TRUE
    for one, bits in reversed(runs):
        if one:
            r = OR(NOT(bit_tests(field, bits, bits, need)), r)
        else:
            r = AND(bit_tests(field, bits, 0, need), r)
    return r


def relation(field, mask, op, value, need):
    """(field & mask) OP value for OP in ==, <, >, range ((lo, hi))."""
    if op == "==":
        return field_eq(field, mask, value, need)
    if op == "<":
        return FALSE if value == 0 else field_le(field, mask, value - 1, need)
    if op == ">":
        return FALSE if value >= mask else field_ge(field, mask, value + 1, need)
    lo, hi = value
    return AND(field_ge(field, mask, lo, need), field_le(field, mask, hi, need))


# --- parsing -----------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(&&|\|\||!=|==|<=|>=|[&|<>=!()\[\]?:,;])|([A-Za-z0-9_.\-/:@]+)|(\S))")


_WORD = re.compile(r"[A-Za-z0-9_.\-/:@]+")


def tokenize(text):
    out = []
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        tok = m.group(1) or m.group(2)
        if m.group(3):
            raise ExprError(f"unexpected character '{m.group(3)}'")
        out.append(tok)
    if text[pos:].strip():
        raise ExprError(f"unexpected character '{text[pos:].strip()[0]}'")
    return out


def parse_int(word):
    if re.fullmatch(r"[0-9]+", word):
        return int(word)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", word):
        return int(word, 16)
    return None


def parse_addr(word):
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", word):
        return None
    try:
        return int(ipaddress.IPv4Address(word))
    except ValueError:
        raise ExprError(f"'{word}' is not an IPv4 address") from None


def parse_prefix(word):
    """ADDR/LEN -> (addr & mask, mask), or None if word is not of that form."""
    m = re.fullmatch(r"([0-9.]+)/([0-9]+)", word)
    if not m:
        return None
    addr = parse_addr(m.group(1))
    if addr is None:
        raise ExprError(f"'{m.group(1)}' is not an IPv4 address")
    n = int(m.group(2))
    if n > 32:
        raise ExprError(f"bad prefix length {n} in '{word}' (0 to 32)")
    mask = (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF
    return addr & mask, mask


def did_you_mean(word, words=VOCABULARY):
    """A hint naming the closest known word; a word with the same letters
    (a transposition, like 'dts') wins."""
    close = difflib.get_close_matches(word, words, n=4)
    same = [w for w in close if sorted(w) == sorted(word)]
    close = same or close
    return f"; did you mean '{close[0]}'?" if close else ""


class Prim:
    """A primitive as parsed: qualifiers and data, before lowering."""

    def __init__(self):
        self.srcdst = None      # 'src' 'dst' 'or' 'and'
        self.proto = None       # protocol number or TCPUDP
        self.header = None      # 'ip' or 'transp'
        self.type = None        # a TYPES word, 'field' (brackets)
        self.field = None       # Field for brackets
        self.mask = None
        self.op = None
        self.data = None        # ('int', n) ('range', lo, hi) ('addr', a)
        #                         ('net', a, m) ('word', w)

    def describe(self):
        parts = []
        if self.srcdst:
            parts.append({"or": "src or dst", "and": "src and dst"}.get(self.srcdst, self.srcdst))
        if self.proto is not None and self.proto != TCPUDP:
            name = {v: k for k, v in PROTOCOLS.items()}.get(self.proto)
            parts.append(name or f"ip proto {self.proto}")
        if self.header and self.type != "field":
            parts.append(self.header)
        if self.type == "field":
            parts.append("[...]")
        elif self.type:
            parts.append(self.type)
        return " ".join(parts)


class Parser:
    """Recursive descent over the tokens of one expression:

        expr   := term (('or' | '||') term)*
        term   := factor (('and' | '&&')? factor)*       juxtaposition is 'and'
        factor := ('not' | '!') factor | '(' expr ')' | test
    """

    def __init__(self, text):
        self.toks = tokenize(text)
        self.pos = 0
        self.prev = None
        self.depth = 0

    def peek(self, k=0):
        i = self.pos + k
        return self.toks[i] if i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def parse(self):
        if not self.toks:
            raise ExprError("empty expression")
        if len(self.toks) == 1 and self.toks[0] in ALL_WORDS:
            return TRUE
        f = self.expr()
        if self.peek() is not None:
            tok = self.peek()
            if tok == ")":
                raise ExprError("unbalanced parentheses: unexpected ')'")
            raise ExprError(f"unexpected '{tok}' after the expression")
        return f

    def expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested too deeply (at most {MAX_DEPTH} levels)")
        fs = [self.term()]
        while self.peek() in ("or", "||"):
            op = self.take()
            if self.peek() in (None, ")", "or", "||", "and", "&&"):
                raise ExprError(f"missing expression after '{op}'")
            fs.append(self.term())
        self.depth -= 1
        return OR(*fs) if len(fs) > 1 else fs[0]

    def term(self):
        fs = [self.factor()]
        while True:
            tok = self.peek()
            if tok in ("and", "&&"):
                self.take()
                if self.peek() in (None, ")", "or", "||", "and", "&&"):
                    raise ExprError(f"missing expression after '{tok}'")
                fs.append(self.factor())
            elif tok is not None and tok not in (")", "or", "||"):
                fs.append(self.factor())
            else:
                break
        return AND(*fs) if len(fs) > 1 else fs[0]

    def factor(self):
        tok = self.peek()
        if tok in ("not", "!"):
            self.take()
            if self.peek() in (None, ")", "or", "||", "and", "&&"):
                raise ExprError(f"missing expression after '{tok}'")
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"expression nested too deeply (at most {MAX_DEPTH} levels)")
            f = NOT(self.factor())
            self.depth -= 1
            return f
        if tok == "(":
            self.take()
            if self.peek() == ")":
                raise ExprError("empty parentheses")
            if self.peek() is None:
                raise ExprError("unbalanced parentheses: missing ')'")
            f = self.expr()
            if self.peek() != ")":
                raise ExprError("unbalanced parentheses: missing ')'")
            self.take()
            return f
        if tok is None:
            raise ExprError("missing expression")
        return self.test()

    # -- primitives --

    def test(self):
        tok = self.peek()
        if tok in ("true",) + ALL_WORDS:
            self.take()
            return TRUE
        if tok == "false":
            self.take()
            return FALSE
        if not _WORD.fullmatch(tok):
            raise ExprError(f"unexpected '{tok}'")
        p = Prim()
        start = self.pos
        self.qualifiers(p)
        quals = self.pos > start
        if self.peek() == "[":
            if p.type is not None or not (p.header or (p.proto is not None and p.proto != TCPUDP)):
                raise ExprError("'[' must follow 'ip', 'transp' or a protocol, as in 'ip[9]'")
            self.brackets(p)
        if self.peek() == "&":
            self.take()
            p.mask = self.mask_word(p)
        if self.peek() in RELOPS:
            p.op = self.take()
        if self.data_follows(p):
            self.data(p)
        elif p.op is not None or p.mask is not None:
            w = self.peek()
            raise ExprError(f"missing value after '{p.op or '&'}'" if w is None
                            else f"bad value '{w}'")
        if not quals and p.data is not None:
            self.inherit(p)
        f = self.lower(p)
        self.prev = p
        return f

    def qualifiers(self, p):
        while True:
            w = self.peek()
            if w in SRCDST:
                if p.srcdst:
                    raise ExprError("'src' or 'dst' given twice")
                nxt, nxt2 = self.peek(1), self.peek(2)
                if w == "src" and nxt in ("and", "&&", "or", "||") and nxt2 in ("dst", "dest"):
                    p.srcdst = "and" if nxt in ("and", "&&") else "or"
                    self.pos += 3
                    continue
                p.srcdst = SRCDST[w]
            elif w in ("ip", "transp") and p.header is None and p.type is None:
                if w == "transp" and self.peek(1) != "[":
                    raise ExprError("'transp' must be followed by '[POS:LEN]'")
                p.header = w
            elif w in PROTOCOLS and p.type is None:
                if p.proto is not None and p.proto != PROTOCOLS[w]:
                    raise ExprError("transport protocol given twice")
                p.proto = PROTOCOLS[w]
            elif w in TYPES and p.type is None:
                p.type = w
            elif w in TYPES:
                raise ExprError(f"'{w}' after '{p.type}': one field per primitive")
            else:
                return
            self.take()

    def brackets(self, p):
        self.take()                         # [
        parts = []
        while self.peek() not in ("]", None):
            parts.append(self.take())
        if self.peek() is None:
            raise ExprError("missing ']'")
        self.take()
        text = "".join(parts)
        m = re.fullmatch(r"(\w+)(?::(\w+))?", text)
        pos = parse_int(m.group(1)) if m else None
        length = 1 if m and m.group(2) is None else parse_int(m.group(2)) if m else None
        if pos is None or length is None:
            raise ExprError(f"bad field '[{text}]' (expected [POS] or [POS:LEN])")
        if not 1 <= length <= 4:
            raise ExprError(f"bad field length {length} in '[{text}]' (1 to 4 bytes)")
        if pos + length > 0xFFFF:
            raise ExprError(f"field position {pos} too large")
        base = BASE_NET if p.header == "ip" else BASE_TRANSP
        p.type = "field"
        p.field = Field(base, 8 * pos, 8 * length)

    def mask_word(self, p):
        w = self.peek()
        if w is None:
            raise ExprError("missing mask after '&'")
        v = parse_int(w)
        if v is None and p.type in ("host", "net"):
            v = parse_addr(w)
        if v is None:
            raise ExprError(f"bad mask '{w}'")
        if v == 0:
            raise ExprError("zero mask")
        self.take()
        return v

    def data_follows(self, p):
        w = self.peek()
        if w is None or w in CONNECTIVES or w in RELOPS or w in ("&", "[", "]"):
            return False
        if p.type in ("frag", "unfrag", "ect", "ce"):
            return False
        if p.type is None and (p.proto is not None or p.header is not None):
            # 'tcp syn', 'icmp echo', 'tcp 10.0.0.1': data words, not new
            # primitives; anything else starts the next primitive.
            return (w in TCP_FLAGS or w in PORTS or w in ICMP_TYPES
                    or re.fullmatch(r"[0-9.]+(/[0-9]+)?", w) is not None)
        return True

    def data(self, p):
        w = self.take()
        if w == "-" and p.data is None:
            raise ExprError("unexpected '-'")
        n = parse_int(w)
        rng = re.fullmatch(r"(\w+)-(\w+)", w)
        if n is not None and self.peek() == "-" and self.peek(1) is not None \
                and parse_int(self.peek(1)) is not None:
            self.take()
            p.data = ("range", n, parse_int(self.take()))
        elif n is not None:
            p.data = ("int", n)
        elif rng and parse_int(rng.group(1)) is not None and parse_int(rng.group(2)) is not None:
            p.data = ("range", parse_int(rng.group(1)), parse_int(rng.group(2)))
        elif (pre := parse_prefix(w)) is not None:
            p.data = ("net",) + pre
        elif (a := parse_addr(w)) is not None:
            if self.peek() == "mask":
                self.take()
                mw = self.take()
                m = parse_addr(mw) if mw is not None else None
                if m is None:
                    raise ExprError(f"bad mask '{mw}' after 'mask' (expected an IPv4 address)"
                                    if mw else "missing mask after 'mask'")
                p.data = ("net", a & m, m)
            else:
                p.data = ("addr", a)
        else:
            p.data = ("word", w)

    def inherit(self, p):
        """Click's shorthand: a bare value repeats the previous primitive's
        kind, as in 'src port 80 or 81' or 'src host 10.0.0.1 or 10.0.0.2'."""
        prev = self.prev
        kind = p.data[0]
        if kind in ("int", "range"):
            if prev is None or prev.type not in ("port", "proto", "field", "type", "win") \
                    and prev.type not in IP_FIELDS and not (prev.type is None and prev.proto is not None):
                raise ExprError(f"bare number '{_data_text(p.data)}' needs a field before it, "
                                "as in 'port 80 or 81'")
            p.type = prev.type or "proto"
            p.field, p.header = prev.field, prev.header
            p.srcdst = prev.srcdst
            if prev.type is not None:
                p.proto = prev.proto
        elif kind in ("addr", "net") and prev is not None and prev.type in ("host", "net", "port"):
            p.srcdst = prev.srcdst
        elif kind == "word" and p.data[1] in PORTS and prev is not None and prev.type == "port":
            p.srcdst = prev.srcdst
            if prev.proto in (6, 17, TCPUDP):
                p.proto = prev.proto

    # -- lowering --

    def lower(self, p):
        typ, data = p.type, p.data
        # Work out the primitive's type from its data where it was left out.
        if typ is None:
            if data is None:
                if p.proto is not None:
                    return self.lower_proto(p, ("int", p.proto))
                if p.header == "ip":
                    return TRUE                     # 'ip': every IPv4 packet
                raise ExprError(f"incomplete primitive '{p.describe()}'")
            if data[0] == "addr":
                typ = "host"
            elif data[0] == "net":
                typ = "net"
            elif data[0] in ("int", "range"):
                raise ExprError(f"bare number '{_data_text(data)}' needs a field before it")
            else:
                typ = self.word_type(p, data[1])
            p.type = typ
        if typ == "proto":
            if data is None and p.proto not in (None, TCPUDP):
                data = ("int", p.proto)
                p.proto = None
            elif p.proto is not None:
                raise ExprError("transport protocol given twice")
            return self.lower_proto(p, data)
        if typ in ("host", "net"):
            return self.lower_addr(p)
        if typ == "port":
            return self.lower_port(p)
        if typ in ("frag", "unfrag"):
            self.no_srcdst(p)
            unfrag = field_eq(FRAG_FIELD, 0x3FFF, 0, 8)
            return AND(self.proto_guard(p), unfrag if typ == "unfrag" else NOT(unfrag))
        if typ in ("ect", "ce"):
            self.no_srcdst(p)
            tos = IP_FIELDS["tos"]
            f = NOT(field_eq(tos, 3, 0, 2)) if typ == "ect" else field_eq(tos, 3, 3, 2)
            return AND(self.proto_guard(p), f)
        if typ == "opt":
            return self.lower_opt(p)
        if typ == "type":
            self.need_proto(p, (1,), "icmp type")
            return self.lower_int(p, [ICMP_TYPE], ICMP_TYPES, "icmp type")
        if typ == "win":
            self.need_proto(p, (6,), "tcp win")
            return self.lower_int(p, [TCP_WIN], None, "tcp win")
        if typ in IP_FIELDS:
            return self.lower_int(p, [IP_FIELDS[typ]], None, f"ip {typ}")
        if typ == "field":
            name = ("ip" if p.field.base == BASE_NET else "transp") + \
                f"[{p.field.bitoff // 8}:{p.field.nbits // 8}]"
            return self.lower_int(p, [p.field], None, name)
        raise ExprError(f"unknown primitive '{p.describe()}'")

    def word_type(self, p, w):
        """The type a bare name stands for: a port, TCP flag or ICMP type."""
        cands = []
        if w in PORTS and p.proto in (None, 6, 17, TCPUDP):
            cands.append(("port", f"port {w}"))
        if w in TCP_FLAGS and p.proto in (None, 6):
            cands.append(("opt", f"tcp opt {w}"))
        if w in ICMP_TYPES and p.proto in (None, 1):
            cands.append(("type", f"icmp type {w}"))
        if len(cands) == 1:
            return cands[0][0]
        if len(cands) > 1:
            raise ExprError(f"'{w}' is ambiguous; try " + " or ".join(f"'{c[1]}'" for c in cands))
        if w in PORTS or w in TCP_FLAGS or w in ICMP_TYPES:
            raise ExprError(f"'{w}' does not go with '{p.describe()}'")
        raise ExprError(f"unknown word '{w}'{did_you_mean(w)}")

    def no_srcdst(self, p):
        if p.srcdst:
            raise ExprError(f"'src'/'dst' does not apply to '{p.type}'")

    def need_proto(self, p, allowed, name):
        if p.proto is None:
            p.proto = allowed[0]
        elif p.proto not in allowed:
            raise ExprError(f"'{name}' cannot go with '{p.describe()}'")

    def proto_guard(self, p):
        if p.proto is None:
            return TRUE
        if p.proto == TCPUDP:
            return OR(field_eq(PROTO_FIELD, 0xFF, 6, 10), field_eq(PROTO_FIELD, 0xFF, 17, 10))
        return field_eq(PROTO_FIELD, 0xFF, p.proto, 10)

    def value(self, p, data, names, name, full):
        """An integer (or range) from data, names allowed, within 0..full."""
        if data is None:
            raise ExprError(f"missing value after '{name}'")
        if data[0] == "word" and names and data[1] in names:
            data = ("int", names[data[1]])
        if data[0] == "int":
            if data[1] > full:
                raise ExprError(f"{name} {data[1]} is out of range (0 to {full})")
            return data[1]
        if data[0] == "range":
            lo, hi = data[1], data[2]
            for v in (lo, hi):
                if v > full:
                    raise ExprError(f"{name} {v} is out of range (0 to {full})")
            if lo > hi:
                raise ExprError(f"empty range {lo}-{hi}")
            return (lo, hi)
        w = _data_text(data)
        if names:
            raise ExprError(f"bad {name} '{w}'{did_you_mean(w, list(names))}")
        raise ExprError(f"bad value '{w}' for '{name}' (expected a number)")

    def combine(self, p, fields, name, names=None, guard_need=None):
        """The primitive over one or two fields (src/dst), Click-style:
        (src OP v) or/and (dst OP v), negated for !=, >=, <=."""
        full = fields[0].full
        mask = full if p.mask is None else p.mask
        if mask & ~full:
            raise ExprError(f"mask {p.mask:#x} is out of range for '{name}' (at most {full:#x})")
        v = self.value(p, p.data, names, name, full)
        op = p.op or "=="
        if isinstance(v, tuple):
            if op not in ("==", "=", "!="):
                raise ExprError(f"operator '{op}' does not apply to a range")
            pos, neg = "range", op == "!="
        else:
            pos, neg = {"==": ("==", False), "=": ("==", False), "!=": ("==", True),
                        "<": ("<", False), ">": (">", False), ">=": ("<", True),
                        "<=": (">", True)}[op]
        need = max(f.end for f in fields)
        rels = [relation(f, mask, pos, v, need) for f in fields]
        body = AND(*rels) if p.srcdst == "and" else OR(*rels)
        if neg:
            body = NOT(body)
        base = fields[0].base
        guards = [self.proto_guard(p)]
        if base == BASE_TRANSP:
            guards.append(field_eq(FRAG_FIELD, 0x1FFF, 0, 8))
        if not monotone(body) and not (base == BASE_NET and need <= 20):
            guards.append(length_test(base, need))
        return AND(*guards, body)

    def lower_int(self, p, fields, names, name):
        self.no_srcdst(p)
        if fields[0].base == BASE_TRANSP and p.proto is None and p.type != "field":
            raise ExprError(f"'{name}' needs a protocol")
        return self.combine(p, fields, name, names)

    def lower_proto(self, p, data):
        self.no_srcdst(p)
        p.type, p.proto, p.data = "proto", None, data
        return self.combine(p, [PROTO_FIELD], "ip proto", PROTOCOLS)

    def lower_addr(self, p):
        data = p.data
        typ = p.type
        if data is None:
            raise ExprError(f"missing address after '{typ}'")
        if typ == "host" and data[0] != "addr":
            raise ExprError(f"'host' needs an IPv4 address, not '{_data_text(data)}'")
        if typ == "net" and data[0] != "net":
            raise ExprError(f"'net' needs ADDR/LEN or ADDR mask MASK, not '{_data_text(data)}'")
        if p.op not in (None, "==", "=", "!="):
            raise ExprError(f"operator '{p.op}' does not apply to '{typ}'")
        addr, mask = (data[1], 0xFFFFFFFF) if data[0] == "addr" else (data[1], data[2])
        if p.mask is not None:
            mask &= p.mask
        fields = {"src": ADDR_FIELDS[:1], "dst": ADDR_FIELDS[1:]}.get(p.srcdst, ADDR_FIELDS)
        rels = [field_eq(f, mask, addr & mask, f.end) for f in fields]
        body = AND(*rels) if p.srcdst == "and" else OR(*rels)
        if p.op == "!=":
            body = NOT(body)
        return AND(self.proto_guard(p), body)

    def lower_port(self, p):
        if p.proto is None:
            p.proto = TCPUDP
        elif p.proto not in (6, 17, TCPUDP):
            raise ExprError(f"'port' needs tcp or udp, not '{p.describe()}'")
        if p.data is None:
            raise ExprError("missing value after 'port'")
        fields = {"src": PORT_FIELDS[:1], "dst": PORT_FIELDS[1:]}.get(p.srcdst, PORT_FIELDS)
        return self.combine(p, list(fields), "port", PORTS)

    def lower_opt(self, p):
        self.no_srcdst(p)
        self.need_proto(p, (6,), "tcp opt")
        if p.op is not None or p.mask is not None:
            raise ExprError("'tcp opt' takes no operator or mask")
        data = p.data
        if data is None:
            raise ExprError("missing TCP flag after 'opt' (syn, ack, fin, rst, psh or urg)")
        if data[0] == "word" and data[1] in TCP_FLAGS:
            bits = TCP_FLAGS[data[1]]
        elif data[0] == "int" and 0 < data[1] <= 0xFF:
            bits = data[1]
        else:
            w = _data_text(data)
            raise ExprError(f"bad TCP flag '{w}' (syn, ack, fin, rst, psh or urg)"
                            f"{did_you_mean(w, list(TCP_FLAGS))}")
        return AND(self.proto_guard(p), field_eq(FRAG_FIELD, 0x1FFF, 0, 8),
                   field_eq(TCP_FLAGS_FIELD, bits, bits, TCP_FLAGS_FIELD.end))


def _data_text(data):
    if data[0] == "int":
        return str(data[1])
    if data[0] == "range":
        return f"{data[1]}-{data[2]}"
    if data[0] == "addr":
        return str(ipaddress.IPv4Address(data[1]))
    if data[0] == "net":
        return f"{ipaddress.IPv4Address(data[1])} mask {ipaddress.IPv4Address(data[2])}"
    return data[1]


def parse_expr(text):
    """The formula of one expression; raises ExprError(message)."""
    try:
        return Parser(text).parse()
    except RecursionError:
        raise ExprError("expression nested too deeply") from None


# --- formulas to steps ---------------------------------------------------------

MATCH, FAIL = "match", "fail"


def formula_steps(f):
    """Lower a formula to the step list the Classifier compiler takes
    (None: never matches; []: always matches). Each test occurrence becomes
    one step; 'and', 'or' and 'not' only route the yes/no targets."""
    nodes, ids = [], {}

    def node(t, yes, no):
        if yes == no:
            return yes
        key = (t, yes, no)
        if key not in ids:
            ids[key] = len(nodes)
            nodes.append(key)
        return ids[key]

    def comp(f, yes, no):
        kind = f[0]
        if kind == "C":
            return yes if f[1] else no
        if kind == "T":
            return node(f[1], yes, no)
        if kind == "N":
            return comp(f[1], no, yes)
        r = yes if kind == "A" else no
        for g in reversed(f[1]):
            r = comp(g, r, no) if kind == "A" else comp(g, yes, r)
        return r

    entry = comp(f, MATCH, FAIL)
    if entry == MATCH:
        return []
    if entry == FAIL:
        return None
    # Nodes are made children first: the entry is the last reachable one.
    reach = {entry}
    for i in reversed(range(len(nodes))):
        if i in reach:
            reach.update(x for x in nodes[i][1:] if isinstance(x, int))
    order = [i for i in reversed(range(len(nodes))) if i in reach]
    index = {nid: k for k, nid in enumerate(order)}
    n = len(order)

    def target(x):
        return n if x == MATCH else None if x == FAIL else index[x]

    return [(nodes[i][0], target(nodes[i][1]), target(nodes[i][2])) for i in order]


def ip_start():
    """What every packet an IP program sees is known to have: a datagram
    of at least 20 bytes."""
    lmin = [0] * NBASES
    lmin[BASE_NET] = 20
    return Knowledge(tuple(lmin), (INFINITY,) * NBASES)


# --- elements ------------------------------------------------------------------

class _IPProgram(Element):
    """Shared by IPClassifier and IPFilter: compile and lower."""

    kernel = None           # set by the subclasses (both run 'classifier')
    inputs = 1
    SHARED_MAX_STEPS = 400

    def compile(self, formulas, targets, nout):
        steps = [formula_steps(f) for f in formulas]
        self.nout = nout
        self.entry, self.nodes, self.shared = compile_steps(
            steps, targets, ip_start(), self.SHARED_MAX_STEPS)

    def lower(self, ctx):
        return lower_program(self.nout, FLAG_IP, self.entry, self.nodes)

    def program_text(self):
        """The compiled decision program, one test per line."""
        return program_text(self.entry, self.nodes, self.shared)

    def _fail(self, param, i, label, e):
        self.error(f"{label} {i + 1}: {e}", (param, i) if (param, i) in self.lines else param)


_SEMANTICS_DOC = """
    Expressions (Click's IPClassifier syntax): `ip proto N|NAME`, `tcp`,
    `udp`, `icmp`; `[src|dst|src or dst|src and dst] host ADDR`, `... net
    ADDR/LEN` or `net ADDR mask MASK` (or just `ADDR`, `ADDR/LEN`); `[src|dst]
    [tcp|udp] port N|NAME|A-B` (or just `NAME`); `icmp type N|NAME`; `tcp opt
    syn|ack|fin|rst|psh|urg` (also `tcp syn`, `syn`); `tcp win N`; `ip ttl`,
    `ip len`, `ip tos`, `ip dscp`, `ip id`, `ip vers`, `ip hl`; `ip frag`,
    `ip unfrag`, `ip ect`, `ip ce`; `ip[POS:LEN]`, `transp[POS:LEN]`,
    `tcp[..]`, `udp[..]`, `icmp[..]` (LEN 1 to 4, default 1). Integer fields
    take `& MASK` and a relation `==` (default), `!=`, `<`, `>`, `<=`, `>=`,
    or a range `A-B`. Connectives: `and`/`&&` (or nothing: juxtaposition),
    `or`/`||`, `not`/`!`, parentheses; `true`, `false`; `-`, `all`, `any`
    alone match everything. A bare value repeats the previous primitive:
    `src port 80 or 443`.

    A packet needs the `nh` annotation (CheckIPHeader, MarkIPHeader); its
    datagram runs from there to the smaller of the packet's end and the IP
    total length. Packets without it, or with fewer than 20 bytes of
    datagram, are dropped and counted (`no_ip`). A primitive matches only
    if every byte it reads is in the datagram; transport primitives (ports,
    `icmp type`, `tcp opt`, `transp[..]`, ...) match only first fragments
    (fragment offset 0). `!=`, `>=`, `<=` and other relations hold inside
    those conditions (`tcp dst port != 80` never matches a fragment), while
    `not` negates the whole primitive (`not tcp dst port 80` matches every
    fragment). With `src or dst`, `!=`, `>=` and `<=` negate `==`, `<` and
    `>` after combining both fields, as in Click: `port != 80` is "neither
    port is 80". See elements/ipfilter.py for the details.

    The expressions compile to one decision program of 32-bit word tests,
    shared with Classifier (`middlebox show --programs` prints it); many
    rules on one field (ports, protocols, addresses) become switch nodes
    that decide all their values in one lookup, keeping every length and
    first-fragment condition.
"""


class IPClassifier(_IPProgram):
    """Send each IPv4 packet to the output of the first expression it matches.

        ipc: {class: IPClassifier, patterns: ["tcp dst port 80", "udp", "-"]}

    One output per pattern; patterns are tried in order and the first match
    wins; packets matching none are dropped and counted (`no_match`).
    """

    __doc__ += _SEMANTICS_DOC
    kernel = "classifier"
    outputs_doc = "one per pattern"
    xstats = ("no_ip", "no_match")
    patterns = Param(List(Str(), min_len=1),
                     doc="expressions, e.g. 'tcp dst port 80' or '-'; one output each")

    def configure(self):
        if len(self.patterns) > MAX_OUTPUTS:
            self.error(f"too many patterns ({len(self.patterns)}; at most {MAX_OUTPUTS})",
                       "patterns")
        formulas = []
        for i, text in enumerate(self.patterns):
            try:
                formulas.append(parse_expr(str(text)))
            except ExprError as e:
                self._fail("patterns", i, "pattern", e)
        self.compile(formulas, None, len(self.patterns))

    def noutputs(self, connected=0):
        return len(self.patterns)


class IPFilter(_IPProgram):
    """Filter IPv4 packets by rules `ACTION EXPRESSION`; the first match decides.

        fw: {class: IPFilter, rules: ["allow tcp dst port 80", "allow udp dst port 53", "deny all"]}

    ACTION is `allow` (output 0), `deny` or `drop` (the packet is dropped
    and counted in `denied`), or an output number N. A rule with no
    expression (`allow`) matches everything. Outputs: 1 + the highest
    output a rule names (at least 1). Packets matching no rule are dropped
    and counted (`no_match`).
    """

    __doc__ += _SEMANTICS_DOC
    kernel = "classifier"
    outputs_doc = "1 + highest output number in the rules"
    xstats = ("no_ip", "no_match", "denied")
    rules = Param(List(Str(), min_len=1),
                  doc="rules 'allow|deny|drop|N EXPRESSION', e.g. 'allow tcp dst port 80'")

    ACTIONS = ("allow", "deny", "drop")

    def configure(self):
        formulas, targets = [], []
        highest = 0
        for i, text in enumerate(self.rules):
            text = str(text)
            try:
                words = text.split(None, 1)
                if not words:
                    raise ExprError("empty rule (expected 'allow|deny|drop|N EXPRESSION')")
                action, rest = words[0], (words[1] if len(words) > 1 else "")
                n = parse_int(action)
                if action == "allow":
                    target = -1
                elif action in ("deny", "drop"):
                    target = DENY
                elif n is not None and re.fullmatch(r"[0-9]+", action):
                    if n >= MAX_OUTPUTS:
                        raise ExprError(f"output {n} is too large (at most {MAX_OUTPUTS - 1})")
                    target, highest = -(n + 1), max(highest, n)
                else:
                    raise ExprError(f"unknown action '{action}' (expected allow, deny, drop "
                                    f"or an output number){did_you_mean(action, self.ACTIONS)}")
                formulas.append(parse_expr(rest) if rest.strip() else TRUE)
                targets.append(target)
            except ExprError as e:
                self._fail("rules", i, "rule", e)
        self.compile(formulas, targets, highest + 1)

    def noutputs(self, connected=0):
        return self.nout
