"""Classifier: sort packets by byte patterns (Click's Classifier).

The patterns are compiled, once, into a decision program: a forward DAG of
word tests that the C kernel (classifier.c) walks for every packet. Each test
reads one aligned 4-byte big-endian word and compares it under a mask; it
also carries the length the original clauses need, so a clause that reaches
past the end of a packet never matches.

The same program format, compiler and kernel serve IPClassifier and IPFilter
(elements/ipfilter.py): a test's offset is relative to a *base*:

    0  BASE_DATA    the packet data (Classifier); length = packet length
    1  BASE_NET     the IPv4 header at the `nh` annotation; length = the
                    datagram: min(bytes after nh, IP total length)
    2  BASE_TRANSP  the transport header, IHL * 4 bytes after the IPv4
                    header (IHL read from the packet); length = what is left
                    of the datagram after it (0 if IHL < 5 or past its end)

Programs with the FLAG_IP flag need a valid IP header: packets whose `nh`
annotation is unset, or whose datagram is shorter than 20 bytes, are dropped
and counted in xstat[0]. Every program counts packets that match no pattern
in xstat[1] and packets sent to DENY in xstat[2].

Plan layout (little-endian), read by classifier_init():

    header  u32 version (3)
            u16 noutputs, u16 flags     (FLAG_IP = 1)
            u32 nnodes, i32 entry
    node    u32 where       bits 0-23 offset, aligned down to 4;
                            bits 24-31 base (0 unless FLAG_IP)
            u32 need        the test fails unless the base's length >= need
            u32 mask        big-endian word semantics: byte offset+0 is the
            u32 value           most significant byte; value & ~mask == 0
            i32 yes, no     targets: >= 0 a later node, -(k+1) output k,
                            DROP (INT32_MIN) no pattern matched: dropped,
                            DENY (INT32_MIN + 1) dropped by a rule

A node's targets always point to later nodes, so a walk ends after at most
nnodes tests; the kernel checks that (and every other field) at init.
(Version 2 was never used: it is the "unknown version" the Classifier tests
probe with.)
"""

import bisect
import struct

from middlebox.element import Element, List, Param, Str

VERSION = 3
DROP = -0x80000000
DENY = -0x80000000 + 1
FLAG_IP = 1
MAX_OUTPUTS = 0xFFFF
BASE_DATA, BASE_NET, BASE_TRANSP = 0, 1, 2
NBASES = 3
BASE_NAMES = ("", "ip", "transp")
INFINITY = float("inf")
MAX_OFFSET = 65535
HEADER = struct.Struct("<IIIi")
NODE = struct.Struct("<IIIIii")
_HEX = frozenset("0123456789abcdefABCDEF")


class Test(tuple):
    """One word test: (offset, need, mask, value, base); offset is 4-aligned.

    It holds when the base's length is at least `need` and the word at
    `offset` from the base, ANDed with `mask`, equals `value`."""

    __slots__ = ()

    def __new__(cls, off, need, mask, value, base=BASE_DATA):
        return tuple.__new__(cls, (off, need, mask, value & mask, base))

    off = property(lambda t: t[0])
    need = property(lambda t: t[1])
    mask = property(lambda t: t[2])
    value = property(lambda t: t[3])
    base = property(lambda t: t[4])
    where = property(lambda t: (t[4], t[0]))


class Clause:
    """One parsed OFFSET/VALUE[%MASK] clause, maybe negated."""

    def __init__(self, negated, offset, value, mask):
        self.negated = negated
        self.offset = offset
        self.value = value        # bytes, already ANDed with mask
        self.mask = mask          # bytes: the bits the clause looks at

    @property
    def end(self):
        return self.offset + len(self.value)

    def words(self):
        """The clause as word tests, one per aligned word it touches.

        Every word test needs the whole clause present (need = end)."""
        words = {}
        for i, (v, m) in enumerate(zip(self.value, self.mask)):
            pos = self.offset + i
            off = pos & ~3
            shift = 8 * (3 - (pos - off))
            wm, wv = words.get(off, (0, 0))
            words[off] = (wm | (m << shift), wv | ((v & m) << shift))
        return [Test(off, self.end, wm, wv) for off, (wm, wv) in sorted(words.items())]


def parse_clause(text):
    """Parse one clause; returns a Clause or raises ValueError(message)."""
    negated = text.startswith("!")
    body = text[1:] if negated else text
    if "/" not in body:
        raise ValueError(f"bad clause '{text}' (expected OFFSET/VALUE or OFFSET/VALUE%MASK)")
    off_s, rest = body.split("/", 1)
    if not off_s.isascii() or not off_s.isdigit():
        raise ValueError(f"bad offset '{off_s}' in clause '{text}'")
    offset = int(off_s)
    if offset > MAX_OFFSET:
        raise ValueError(f"offset {offset} too large (at most {MAX_OFFSET})")
    value_s, mask_s = rest.split("%", 1) if "%" in rest else (rest, None)
    if not value_s:
        raise ValueError(f"missing value in clause '{text}'")
    if any(c not in _HEX and c != "?" for c in value_s):
        raise ValueError(f"bad hex value '{value_s}'")
    if len(value_s) % 2:
        raise ValueError(f"hex value '{value_s}' has an odd number of digits")
    if mask_s is not None:
        if not mask_s:
            raise ValueError(f"missing mask in clause '{text}'")
        if any(c not in _HEX for c in mask_s):
            raise ValueError(f"bad hex mask '{mask_s}'")
        if len(mask_s) != len(value_s):
            raise ValueError("mask length differs from value")
    else:
        mask_s = "f" * len(value_s)
    # '?' is a wildcard nibble: it clears those mask bits.
    wild = "".join("0" if c == "?" else "f" for c in value_s)
    value = bytes.fromhex(value_s.replace("?", "0"))
    mask = bytes(a & b for a, b in zip(bytes.fromhex(mask_s), bytes.fromhex(wild)))
    value = bytes(v & m for v, m in zip(value, mask))
    return Clause(negated, offset, value, mask)


def parse_pattern(text):
    """A pattern's clauses ([] for '-'); raises ValueError(message)."""
    clauses = text.split()
    if not clauses:
        raise ValueError("empty pattern (use '-' to match every packet)")
    if "-" in clauses:
        if len(clauses) > 1:
            raise ValueError("'-' must stand alone")
        return []
    return [parse_clause(c) for c in clauses]


def pattern_steps(clauses):
    """Lower one pattern to a sequence of steps, or None if it never matches.

    A step is (test, yes, no): `yes`/`no` is the index of the next step (len
    of the list means "the pattern matched") or None ("the pattern failed").
    Positive clauses are merged into one test per aligned word; a negated
    clause NOT(w1 and ... and wk) becomes k steps that fail only if every
    word test holds.
    """
    merged = {}                     # aligned offset -> (need, mask, value)
    negs = []
    for c in clauses:
        words = c.words()
        if c.negated:
            live = [w for w in words if w.mask] or [max(words, key=lambda w: w.need)]
            negs.append(live)
            continue
        for w in words:
            need, mask, value = merged.get(w.off, (0, 0, 0))
            if (value ^ w.value) & mask & w.mask:
                return None         # two clauses want different bits
            merged[w.off] = (max(need, w.need), mask | w.mask, value | w.value)
    pos = [Test(off, need, mask, value) for off, (need, mask, value) in sorted(merged.items())]
    # Length-only words (all mask bits wild) fold into one length test,
    # kept only if it asks for more than the other tests already do.
    live = [t for t in pos if t.mask]
    lengths = [t.need for t in pos if not t.mask]
    if lengths and max(lengths) > max((t.need for t in live), default=0):
        live.insert(0, Test(0, max(lengths), 0, 0))
    steps = []
    for t in live:
        steps.append((t, len(steps) + 1, None))
    for group in negs:
        after = len(steps) + len(group)
        for j, t in enumerate(group):
            last = j == len(group) - 1
            # holds -> test the clause's next word (or, after the last, the
            # whole negated clause held: fail); fails -> the negation holds.
            steps.append((t, None if last else len(steps) + 1, after))
    return steps


class Knowledge:
    """What the tests on one path through the program have shown.

    Lengths and bits are tracked per base (a base's length says nothing about
    another's; bits of one packet stay what they are along a path).

    lmin   -- per base: its length is at least this (a true test needed it)
    lmax   -- per base: its length is below this (a false test whose bits
              were all known to hold)
    known  -- {(base, aligned offset): (mask, value)}: bits shown by true tests
    false  -- tests shown false that none of the above explains
    Only sound deductions are made; 'unknown' is always a safe answer.
    """

    __slots__ = ("lmin", "lmax", "known", "false")

    def __init__(self, lmin=(0,) * NBASES, lmax=(INFINITY,) * NBASES, known=None, false=()):
        known = known or {}
        lmax = list(lmax)
        kept = []
        for f in false:
            km, kv = known.get(f.where, (0, 0))
            if f.need >= lmax[f.base] or (kv ^ f.value) & km & f.mask:
                continue                    # length or known bits explain it
            if not (f.mask & ~km):
                lmax[f.base] = min(lmax[f.base], f.need)   # its bits hold: too short
                continue
            kept.append(f)
        self.lmin, self.lmax = tuple(lmin), tuple(lmax)
        self.known, self.false = known, frozenset(kept)

    def implies(self, t):
        """True/False if t's outcome follows from what is known, else None."""
        b = t.base
        if t.need >= self.lmax[b]:
            return False
        km, kv = self.known.get(t.where, (0, 0))
        if (kv ^ t.value) & km & t.mask:
            return False            # known bits contradict t
        if t.need <= self.lmin[b] and not (t.mask & ~km):
            return True             # long enough, and all of t's bits known
        # If t held, the base would be at least `reach` long and t's bits
        # would join the known ones: a test shown false would then hold.
        reach = max(t.need, self.lmin[b])
        fm, fv = km | t.mask, kv | t.value
        for f in self.false:
            if (f.where == t.where and f.need <= reach and not (f.mask & ~fm)
                    and not ((fv ^ f.value) & f.mask)):
                return False
        return None

    def holds(self, t):
        known = dict(self.known)
        km, kv = known.get(t.where, (0, 0))
        if t.mask:
            known[t.where] = (km | t.mask, kv | t.value)
        lmin = list(self.lmin)
        lmin[t.base] = max(lmin[t.base], t.need)
        return Knowledge(lmin, self.lmax, known, self.false)

    def fails(self, t):
        return Knowledge(self.lmin, self.lmax, self.known, self.false | {t})

    def key(self, wheres, needs):
        """A key equal for two states that decide every test left alike.

        wheres/needs: the (base, offset)s of the tests still to come, and
        per base the sorted needs of those tests. Facts about other words
        are dropped, and lmin/lmax are rounded to the needs that can still
        be compared with them.
        """
        false = frozenset(f for f in self.false if f.where in wheres)
        lmins, lmaxs = [], []
        for b in range(NBASES):
            nb = needs[b]
            extra = [f.need for f in false if f.base == b]
            if extra:
                nb = sorted(set(nb).union(extra))
            i = bisect.bisect_right(nb, self.lmin[b])
            lmins.append(nb[i - 1] if i else 0)
            j = bisect.bisect_left(nb, self.lmax[b])
            lmaxs.append(nb[j] if j < len(nb) else INFINITY)
        known = frozenset((o, mv) for o, mv in self.known.items() if o in wheres)
        return tuple(lmins), tuple(lmaxs), known, false


class _TooBig(Exception):
    pass


class Program:
    """Builds a decision program from per-pattern steps.

    While building, a target is an int: >= 0 a node id (ids are given in
    post-order, children before parents), -(k+1) output k, or DROP.
    """

    def __init__(self, steps, targets=None, start=None):
        self.steps = steps          # per pattern: list of steps, or None
        # where a packet goes when pattern p matches (default: output p)
        self.targets = targets or [-(p + 1) for p in range(len(steps))]
        self.start = start or Knowledge()   # what holds for every packet
        self.nodes = []             # (Test, yes, no) in post-order
        self._ids = {}

    def _node(self, test, yes, no):
        if yes == no:
            return yes
        key = (test, yes, no)
        nid = self._ids.get(key)
        if nid is None:
            nid = self._ids[key] = len(self.nodes)
            self.nodes.append(key)
        return nid

    def build_chain(self):
        """One node per step, pattern after pattern: size linear in the input."""
        nxt = DROP
        for p in reversed(range(len(self.steps))):
            steps = self.steps[p]
            if steps is None:
                continue
            fail = nxt
            targets = [None] * len(steps) + [self.targets[p]]
            for s in reversed(range(len(steps))):
                test, yes, no = steps[s]
                y = fail if yes is None else targets[yes]
                n = fail if no is None else targets[no]
                targets[s] = self._node(test, y, n)
            nxt = targets[0]
        return nxt

    def build_shared(self, limit):
        """A decision DAG that never repeats a test whose outcome is known.

        Each path carries what its tests have shown (Knowledge); a test whose
        outcome follows is skipped. Subprograms reached with equivalent
        knowledge are shared, and identical nodes are merged. Raises _TooBig
        past `limit` nodes or 4 x `limit` steps of work.
        """
        npat = len(self.steps)
        # Words and needs of the tests from (pattern p, step s) on.
        rest = {}
        wheres, needs = frozenset(), ((),) * NBASES
        for p in reversed(range(npat)):
            for s in reversed(range(len(self.steps[p] or ()))):
                t = self.steps[p][s][0]
                if t.where not in wheres:
                    wheres = wheres | {t.where}
                if t.need not in needs[t.base]:
                    nb = tuple(sorted(needs[t.base] + (t.need,)))
                    needs = needs[:t.base] + (nb,) + needs[t.base + 1:]
                rest[p, s] = (wheres, needs)
        memo = {}
        work = [4 * limit]

        def build(p, s, k):
            while p < npat and self.steps[p] is None:
                p, s = p + 1, 0
            if p == npat:
                return DROP
            steps = self.steps[p]
            if s == len(steps):
                return self.targets[p]
            key = (p, s, k.key(*rest[p, s]))
            if key in memo:
                return memo[key]
            work[0] -= 1
            if work[0] < 0:
                raise _TooBig()
            test, yes, no = steps[s]
            outcome = k.implies(test)
            if outcome is True:
                r = build(p, yes, k) if yes is not None else build(p + 1, 0, k)
            elif outcome is False:
                r = build(p, no, k) if no is not None else build(p + 1, 0, k)
            else:
                kt, kf = k.holds(test), k.fails(test)
                y = build(p, yes, kt) if yes is not None else build(p + 1, 0, kt)
                n = build(p, no, kf) if no is not None else build(p + 1, 0, kf)
                r = self._node(test, y, n)
                if len(self.nodes) > limit:
                    raise _TooBig()
            memo[key] = r
            return r

        return build(0, 0, self.start)

    def finish(self, entry):
        """Renumber so targets only point forward, dropping unreachable nodes.

        Returns (entry, [(Test, yes, no), ...]) with final targets."""
        order = list(reversed(range(len(self.nodes))))   # parents first
        reach = {entry} if entry >= 0 else set()
        for nid in order:
            if nid in reach:
                _, y, n = self.nodes[nid]
                reach.update(t for t in (y, n) if t >= 0)
        final = {nid: i for i, nid in enumerate(x for x in order if x in reach)}

        def target(t):
            return final[t] if t >= 0 else t

        nodes = [(test, target(y), target(n))
                 for test, y, n in (self.nodes[nid] for nid in order if nid in reach)]
        return target(entry), nodes


def compile_steps(steps, targets=None, start=None, max_shared_steps=300, limit=None):
    """Compile per-pattern steps to (entry, nodes, shared?).

    The shared compiler is used when there are at most `max_shared_steps`
    steps (it recurses once per step) and it stays within `limit` nodes
    (default: four times the chain's size); otherwise the chain is used.
    `targets` maps patterns to targets; `start` is the Knowledge every
    packet begins with."""
    total = sum(len(s) for s in steps if s)
    if total + len(steps) <= max_shared_steps:
        prog = Program(steps, targets, start)
        try:
            entry = prog.build_shared(limit or max(64, 4 * total))
            return prog.finish(entry) + (True,)
        except (_TooBig, RecursionError):
            pass
    prog = Program(steps, targets, start)
    return prog.finish(prog.build_chain()) + (False,)


def compile_patterns(patterns, max_shared_steps=300, limit=None):
    """Compile parsed patterns (lists of Clause) to (entry, nodes, shared?)."""
    return compile_steps([pattern_steps(c) for c in patterns],
                         max_shared_steps=max_shared_steps, limit=limit)


def lower_program(noutputs, flags, entry, nodes):
    """The plan bytes of a compiled program (layout in the module docs)."""
    out = [HEADER.pack(VERSION, noutputs | (flags << 16), len(nodes), entry)]
    for test, yes, no in nodes:
        out.append(NODE.pack(test.off | (test.base << 24), test.need, test.mask,
                             test.value, yes, no))
    return b"".join(out)


def describe_test(t):
    """One test as text: the length it needs and the word it compares."""
    name = BASE_NAMES[t.base]
    cond = f"{name + '.' if name else ''}len >= {t.need}"
    if t.mask:
        cond += f" and {name}[{t.off}..{t.off + 3}] & {t.mask:08x} == {t.value:08x}"
    return cond


def program_text(entry, nodes, shared):
    """A compiled program, one test per line."""
    kind = "shared tests" if shared else "chain of tests"
    lines = [f"{len(nodes)} node(s), {kind}; start: {_target_text(entry)}"]
    width = len(str(max(len(nodes) - 1, 0)))
    for i, (t, yes, no) in enumerate(nodes):
        lines.append(f"{i:>{width}}: if {describe_test(t)} then {_target_text(yes)} "
                     f"else {_target_text(no)}")
    return "\n".join(lines)


def _target_text(t):
    if t == DROP:
        return "drop"
    if t == DENY:
        return "deny"
    if t < 0:
        return f"out {-t - 1}"
    return f"{t}"


class Classifier(Element):
    """Send each packet to the output of the first byte pattern it matches.

        cls: {class: Classifier, patterns: ["12/0806 20/0001", "12/0800", "-"]}

    One output per pattern. A pattern is clauses separated by spaces, all of
    which must match. A clause is OFFSET/VALUE or OFFSET/VALUE%MASK: a decimal
    byte offset (0 to 65535) from the start of the packet, a value written as
    hex digits (an even number of them; `?` is a digit that matches anything)
    and an optional hex mask of the same length; the clause matches when the
    packet's bytes ANDed with the mask equal the value ANDed with the mask.
    `!` before a clause negates it. The pattern `-` matches every packet.

    A clause that reaches past the end of the packet does not match (so its
    negation does): `12/0800` never matches a 13-byte packet, even with a
    mask of zeros. Patterns are tried in order and the first match wins;
    packets that match no pattern are dropped and counted.

    The patterns are compiled into a decision program of aligned 32-bit word
    tests (shown by `middlebox show`); a test whose outcome is already known
    on a path is not repeated.
    """

    kernel = "classifier"
    inputs = 1
    outputs = 1
    outputs_doc = "one per pattern"
    patterns = Param(List(Str(), min_len=1),
                     doc="byte patterns, e.g. '12/0800 23/11' or '-'; one output each")

    # The shared compiler (tests whose outcome a path already knows are left
    # out) is tried when the patterns make at most this many steps; past it,
    # or past its node budget, the program is a plain chain of tests, whose
    # size is linear in the patterns.
    SHARED_MAX_STEPS = 300

    def configure(self):
        if len(self.patterns) > MAX_OUTPUTS:
            self.error(f"too many patterns ({len(self.patterns)}; at most {MAX_OUTPUTS})",
                       "patterns")
        parsed = []
        for i, text in enumerate(self.patterns, 1):
            try:
                parsed.append(parse_pattern(text))
            except ValueError as e:
                self.error(f"pattern {i}: {e}", "patterns")
        self.entry, self.nodes, self.shared = compile_patterns(parsed, self.SHARED_MAX_STEPS)

    def noutputs(self, connected=0):
        return len(self.patterns)

    def lower(self, ctx):
        return lower_program(len(self.patterns), 0, self.entry, self.nodes)

    def program_text(self):
        """The compiled decision program, one test per line."""
        return program_text(self.entry, self.nodes, self.shared)
