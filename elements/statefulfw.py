"""StatefulFirewall: connection tracking with IPFilter rules for new connections.

Kernel in statefulfw.c (which documents the table layout and the plan
bytes). The rules are compiled by the IPFilter compiler (ipfilter.py) into
two decision programs (elements/program.h), one per side.
"""

import ipaddress
import struct

from middlebox.element import Element, Int, List, Param, Str, read_handler, write_handler

from .classifier import DENY, FLAG_IP, compile_steps, lower_program, program_text
from .ipfilter import ExprError, TRUE, did_you_mean, formula_steps, ip_start, parse_expr
from .nat import Seconds

MAGIC = 0x31574653          # "SFW1"
MAX_CAPACITY = 1 << 22
QUERY_DONE = 0xFFFFFFFF
NOPORT = 0x10000
ALLOW = -1                  # program target: output 0
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 132: "sctp"}
TCP_STATES = {1: "syn_sent", 2: "syn_recv", 3: "established", 4: "fin_wait", 5: "closed"}


class StatefulFirewall(Element):
    """Stateful IPv4 firewall: IPFilter rules decide new connections; their packets pass.

        fw: {class: StatefulFirewall, rules: ["allow tcp dst port 80", "allow udp dst port 53", "allow icmp type echo", "deny all"], capacity: 65536}

    Input 0 takes packets from the inside, input 1 from the outside (as
    NAT's); passed packets leave unchanged on output 0 (inside -> outside)
    and output 1 (outside -> inside). Each input needs the `nh` annotation
    (CheckIPHeader); packets without a usable IPv4 header there are dropped
    (`malformed`).

    Connections. A packet of a live connection passes without the rules
    being looked at, in either direction, and refreshes it. A packet of no
    connection is the first packet of a new one: the rules of its side
    decide (`rules` for packets from the inside, `outside_rules` for
    packets from the outside; IPFilter syntax, `allow|deny|drop EXPRESSION`,
    first match wins, no match denies). Allowed: a connection is made and
    the packet passes; denied: it is dropped and counted (`denied`).
    TCP connections start only with a SYN without ACK (no RST, FIN): any
    other TCP packet of no connection is dropped and counted (`no_conn`),
    rules or not, so mid-stream packets after a flush or an expiry are cut.
    UDP connections are (addresses, ports); ICMP echo ones are (requester,
    responder, identifier): the request opens it, echo replies of the
    other side pass, an echo reply of no connection is `no_conn`. Other IP
    protocols (GRE, ESP, ...) are tracked by (protocol, addresses). Replies
    match the reversed 5-tuple and must come from the other side (a packet
    with a live connection's tuple from the wrong side is `no_conn`).

    TCP state: SYN sent -> SYN+ACK seen (syn_recv) -> the opener's ACK
    (established); a FIN either way -> fin_wait; FINs both ways or an RST
    -> closed. A SYN (without ACK) on a closed connection starts a new one
    (the rules decide again). No sequence or window checks. Idle timeouts
    (NAT's names and defaults): `tcp_timeout` established (7440 s),
    `tcp_transitory_timeout` (240 s) while opening and half closed,
    `tcp_closing_timeout` (10 s) once closed, `udp_timeout` (300 s, also
    other protocols), `icmp_timeout` (60 s). Time comes from packet
    timestamps (pcap times when replaying; the clock when live).

    ICMP errors (unreachable, source quench, time exceeded, parameter
    problem) that quote a packet of a live connection, come from the side
    that packet went to and are addressed to its source pass (`related`)
    without refreshing it; other ICMP errors and other ICMP messages
    (timestamp, redirect, ...) are judged by the rules and never make
    connections.

    Fragments: the first fragment (offset 0) carries the ports and is
    handled like a whole packet. Later fragments carry no ports, so, as in
    Click, the rules of their side judge each one: transport tests (ports,
    flags, `icmp type`) never match them, address tests can (`allow ip frag
    and src net 10.0.0.0/8`); allowed ones pass without touching any
    connection, others are dropped and counted (`fragments`), as are TCP
    fragments at offset 8 bytes (RFC 1858). There is no reassembly.

    Table: `capacity` connections, all memory set up at start. When it is
    full, the packet of a new connection is dropped and counted
    (`table_full`) after up to 64 entries were checked for expiry; live
    connections keep working. Expired entries are reclaimed when met, by a
    sweep of 8 entries per batch, and on demand.

    Counters: `new_conns`, `expired`, `related`; drops, each counted once:
    `denied`, `no_conn`, `table_full`, `fragments`, `malformed` (no IPv4
    header at the annotation, TCP header under 20 bytes, UDP or ICMP under
    8). Handlers: read `connections` (one line per live connection:
    protocol, inside and outside endpoints, which side opened it, state,
    seconds left), `count` and `flows` (live connections); write `flush`
    (forget every connection).
    """

    kernel = "statefulfw"
    inputs = 2
    outputs = 2
    inputs_doc = "2 (0: from the inside, 1: from the outside)"
    outputs_doc = "2 (0: inside -> outside, 1: outside -> inside)"
    xstats = ("new_conns", "expired", "related", "denied", "no_conn", "table_full",
              "fragments", "malformed")

    rules = Param(List(Str(), min_len=1),
                  doc="rules for connections opened from the inside: 'allow|deny|drop EXPRESSION'")
    outside_rules = Param(List(Str(), min_len=1), default=["deny all"],
                          doc="rules for connections opened from the outside")
    capacity = Param(Int(min=1, max=MAX_CAPACITY), default=65536,
                     doc="connection table size")
    udp_timeout = Param(Seconds(), default=300, doc="UDP (and other protocols) idle timeout")
    tcp_timeout = Param(Seconds(), default=7440, doc="established TCP idle timeout")
    tcp_transitory_timeout = Param(Seconds(), default=240,
                                   doc="TCP idle timeout while opening and half closed")
    tcp_closing_timeout = Param(Seconds(), default=10,
                                doc="TCP timeout after FINs both ways or an RST")
    icmp_timeout = Param(Seconds(), default=60, doc="ICMP echo idle timeout")

    ACTIONS = ("allow", "deny", "drop")

    def configure(self):
        self.programs = [self._compile("rules"), self._compile("outside_rules")]

    def _compile(self, param):
        formulas, targets = [], []
        for i, text in enumerate(getattr(self, param)):
            text = str(text)
            try:
                words = text.split(None, 1)
                if not words:
                    raise ExprError("empty rule (expected 'allow|deny|drop EXPRESSION')")
                action, rest = words[0], (words[1] if len(words) > 1 else "")
                if action == "allow":
                    target = ALLOW
                elif action in ("deny", "drop"):
                    target = DENY
                elif action.isdigit():
                    raise ExprError(f"output actions like '{action}' do not apply here "
                                    f"(expected allow, deny or drop)")
                else:
                    raise ExprError(f"unknown action '{action}' (expected allow, deny or "
                                    f"drop){did_you_mean(action, self.ACTIONS)}")
                formulas.append(parse_expr(rest) if rest.strip() else TRUE)
                targets.append(target)
            except ExprError as e:
                where = (param, i) if (param, i) in self.lines else param
                self.error(f"{param.replace('_', ' ')[:-1]} {i + 1}: {e}", where)
        steps = [formula_steps(f) for f in formulas]
        return compile_steps(steps, targets, ip_start(), 400)

    def lower(self, ctx):
        progs = [lower_program(1, FLAG_IP, entry, nodes) for entry, nodes, _ in self.programs]
        ns = [round(t * 1e9) for t in (self.udp_timeout, self.tcp_timeout,
                                       self.tcp_transitory_timeout, self.tcp_closing_timeout,
                                       self.icmp_timeout)]
        return (struct.pack("<II5QII", MAGIC, self.capacity, *ns, len(progs[0]), len(progs[1]))
                + progs[0] + progs[1])

    def program_text(self):
        """Both compiled rule programs (`middlebox show --programs`)."""
        out = []
        for name, (entry, nodes, shared) in zip(("rules (inside)", "outside_rules"),
                                                self.programs):
            out.append(f"{name}: " + program_text(entry, nodes, shared).replace("out 0", "allow"))
        return "\n".join(out)

    # -- handlers ---------------------------------------------------------------

    @staticmethod
    def _records(ctx):
        """(now_ns, [connection dicts]) from the kernel's query."""
        cursor, out, now = 0, [], 0
        while True:
            data = ctx.query(cursor)
            if len(data) < 16:
                raise ValueError("the firewall kernel gave no connection table")
            nxt, _live, now = struct.unpack_from("<IIQ", data)
            for off in range(16, len(data) - 31, 32):
                proto, state, side, replied, a, b, ap, bp, _z, exp = struct.unpack_from(
                    "<BBBBIIIIIQ", data, off)
                out.append(dict(proto=proto, state=state, side=side, replied=bool(replied),
                                a=(a, ap), b=(b, bp), expires=exp))
            if nxt == QUERY_DONE:
                return now, out
            if nxt <= cursor and len(data) == 16:
                raise ValueError("the connection table does not fit the query buffer")
            cursor = nxt

    @staticmethod
    def _endpoint(proto, addr, port):
        a = str(ipaddress.IPv4Address(addr))
        if proto in (6, 17) or (proto == 1 and port != NOPORT):
            return f"{a}:{port}"
        return a

    @read_handler("connections")
    def read_connections(self, ctx):
        now, recs = self._records(ctx)
        rows = [("proto", "inside", "outside", "opened_by", "state", "expires")]
        for r in recs:
            p = r["proto"]
            a, b = self._endpoint(p, *r["a"]), self._endpoint(p, *r["b"])
            inside, outside = (a, b) if r["side"] == 0 else (b, a)
            if p == 6:
                state = TCP_STATES.get(r["state"], "?")
            else:
                state = "replied" if r["replied"] else "unreplied"
            rows.append((PROTOCOLS.get(p, str(p)), inside, outside,
                         "inside" if r["side"] == 0 else "outside", state,
                         f"{max(r['expires'] - now, 0) / 1e9:.3f}s"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                         for row in rows)

    @read_handler("count")
    def read_count(self, ctx):
        return str(len(self._records(ctx)[1]))

    @read_handler("flows")
    def read_flows(self, ctx):
        return self.read_count(ctx)

    @write_handler("flush")
    def write_flush(self, value):
        if str(value).strip() not in ("", "1", "true", "yes"):
            raise ValueError(f"flush takes no value (got {value!r})")
        return b"\x01"
