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

    header  u32 version (4)
            u16 noutputs, u16 flags     (FLAG_IP = 1)
            u32 nnodes, i32 entry
    node    u32 where       bits 0-23 offset, aligned down to 4;
                            bits 24-30 base (0 unless FLAG_IP);
                            bit 31: a switch node (below), else a test
            u32 need        the test fails unless the base's length >= need
            u32 mask        big-endian word semantics: byte offset+0 is the
            u32 value           most significant byte; value & ~mask == 0
            i32 yes, no     targets: >= 0 a later node, -(k+1) output k,
                            DROP (INT32_MIN) no pattern matched: dropped,
                            DENY (INT32_MIN + 1) dropped by a rule
    cases   the rest of the bytes: u32 value, i32 target per case

A switch node (bit 31 of `where`) decides many equalities of one masked
word at once: `value` is the index of its first case, `yes` the number of
cases (at least 1), `no` the target when the base is shorter than `need`
or the masked word equals no case's value. Its cases have strictly
increasing values inside the mask and targets that, like every target,
point forward; switches take the cases in node order, each the run after
the previous one's, all of them. The kernel builds each switch a hash
table when it loads the program.

A node's targets always point to later nodes, so a walk ends after at most
nnodes nodes; the kernel checks that (and every other field) at init.
(Version 2 was never used: it is the "unknown version" the Classifier tests
probe with. Version 3 was the same layout without switch nodes and cases.)
"""

import bisect
import struct

from middlebox.element import Element, List, Param, Str

VERSION = 4
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
CASE = struct.Struct("<Ii")
SWITCH_BIT = 1 << 31
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


class Switch(tuple):
    """A multiway test on one word: (offset, need, mask, base, values).

    It goes to the target of the value the masked word equals, or to its
    default when the base is shorter than `need` or no value is equal: so
    case v holds exactly when Test(offset, need, mask, v, base) would, and
    the default exactly when every such test fails. `values` are sorted."""

    __slots__ = ()

    def __new__(cls, off, need, mask, base, values):
        return tuple.__new__(cls, (off, need, mask, base, tuple(values)))

    off = property(lambda t: t[0])
    need = property(lambda t: t[1])
    mask = property(lambda t: t[2])
    base = property(lambda t: t[3])
    values = property(lambda t: t[4])
    where = property(lambda t: (t[3], t[0]))

    def test(self, value):
        """The equality test case `value` stands for."""
        return Test(self.off, self.need, self.mask, value, self.base)


def successors(node):
    """The targets of a node (Test, yes, no) or (Switch, targets, default)."""
    test, yes, no = node
    if isinstance(test, Switch):
        return yes + (no,)
    return (yes, no)


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

    def key(self, wheres, needs, tests=None):
        """A key equal for two states that decide every test left alike.

        wheres/needs: the (base, offset)s of the tests still to come, and
        per base the sorted needs of those tests; tests: per such word, the
        tests still to come on it. Facts about other words are dropped, and
        lmin/lmax are rounded to the needs that can still be compared with
        them. A word whose tests left are all decided is keyed by their
        outcomes, not by the facts that decide them: no test will read it
        again, so nothing more is learnt about it (after a switch, every
        case whose value no test left asks for meets the same key).
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
        known = {o: mv for o, mv in self.known.items() if o in wheres}
        decided = {}
        if tests:
            for w in set(known).union(f.where for f in false):
                outcomes = tuple(self.implies(t) for t in tests[w])
                if None not in outcomes:
                    decided[w] = outcomes
                    known.pop(w, None)
            if decided:
                false = frozenset(f for f in false if f.where not in decided)
        return (tuple(lmins), tuple(lmaxs), frozenset(known.items()), false,
                frozenset(decided.items()))


class _TooBig(Exception):
    pass


class Program:
    """Builds a decision program from per-pattern steps.

    While building, a target is an int: >= 0 a node id (ids are given in
    post-order, children before parents), -(k+1) output k, or DROP.
    """

    def __init__(self, steps, targets=None, start=None, switch_min=0):
        self.steps = steps          # per pattern: list of steps, or None
        # where a packet goes when pattern p matches (default: output p)
        self.targets = targets or [-(p + 1) for p in range(len(steps))]
        self.start = start or Knowledge()   # what holds for every packet
        # (Test, yes, no) or (Switch, (target per value), default), in post-order
        self.nodes = []
        self.size = 0               # nodes plus switch cases
        # the shared compiler makes a switch where a word is compared with
        # at least this many values still undecided (0: never)
        self.switch_min = switch_min
        self._ids = {}

    def _node(self, test, yes, no):
        if yes == no:
            return yes
        key = (test, yes, no)
        nid = self._ids.get(key)
        if nid is None:
            nid = self._ids[key] = len(self.nodes)
            self.nodes.append(key)
            self.size += 1 + (len(yes) if isinstance(test, Switch) else 0)
        return nid

    def _switch(self, sw, targets, default):
        """A switch node, without the cases that go where the default goes
        (a single case left is an equality test; none, the default)."""
        cases = [(v, t) for v, t in zip(sw.values, targets) if t != default]
        if not cases:
            return default
        if len(cases) == 1:
            (v, t), = cases
            return self._node(sw.test(v), t, default)
        sw = Switch(sw.off, sw.need, sw.mask, sw.base, [v for v, _ in cases])
        return self._node(sw, tuple(t for _, t in cases), default)

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
        outcome follows is skipped. With switch_min, where the patterns left
        compare the word of the next test with at least that many values the
        path has not decided, a Switch decides them all at once: each case
        (and the default) goes on knowing what it showed, so every later
        test of those values is skipped. Subprograms reached with equivalent
        knowledge are shared, and identical nodes are merged. Raises _TooBig
        past `limit` nodes and switch cases, or 4 x `limit` steps looked at
        (256 x with switches).
        """
        npat = len(self.steps)
        # Words, needs and (per word) tests of the steps from (pattern p,
        # step s) on.
        rest = {}
        wheres, needs, tests = frozenset(), ((),) * NBASES, {}
        for p in reversed(range(npat)):
            for s in reversed(range(len(self.steps[p] or ()))):
                t = self.steps[p][s][0]
                if t.where not in wheres:
                    wheres = wheres | {t.where}
                if t.need not in needs[t.base]:
                    nb = tuple(sorted(needs[t.base] + (t.need,)))
                    needs = needs[:t.base] + (nb,) + needs[t.base + 1:]
                if t not in tests.get(t.where, ()):
                    tests = dict(tests)
                    tests[t.where] = tests.get(t.where, ()) + (t,)
                rest[p, s] = (wheres, needs, tests)
        # Per pattern p: {(base, offset, need): {(mask, value), ...}} of the
        # tests in patterns p and after (what a switch can decide).
        fields = [None] * (npat + 1)
        acc = {}
        fields[npat] = acc
        if self.switch_min:
            for p in reversed(range(npat)):
                acc = {f: set(vs) for f, vs in acc.items()}
                for t, _, _ in self.steps[p] or ():
                    if t.mask:
                        acc.setdefault((t.base, t.off, t.need), set()).add((t.mask, t.value))
                fields[p] = acc
        memo = {}
        # A unit of work is one step looked at. Switches split a path in
        # many, each of which walks the patterns left (mostly steps its case
        # decides, which cost no node): much more work for the same size of
        # program.
        work = [(256 if self.switch_min else 4) * limit]

        def build(p, s, k):
            # Steps whose outcome k decides are followed without a node (or
            # a memo entry: the next undecided step has one).
            while True:
                while p < npat and self.steps[p] is None:
                    p, s = p + 1, 0
                if p == npat:
                    return DROP
                steps = self.steps[p]
                if s == len(steps):
                    return self.targets[p]
                work[0] -= 1
                if work[0] < 0:
                    raise _TooBig()
                test, yes, no = steps[s]
                outcome = k.implies(test)
                if outcome is None:
                    break
                nxt = yes if outcome else no
                p, s = (p, nxt) if nxt is not None else (p + 1, 0)
            key = (p, s, k.key(*rest[p, s]))
            if key in memo:
                return memo[key]
            sw = switch(p, test, k)
            if sw is not None:
                # Each case, then the default, knowing what it shows; the
                # test at (p, s) is decided in every one of them.
                cases = [sw.test(v) for v in sw.values]
                targets = tuple(build(p, s, k.holds(c)) for c in cases)
                kd = k
                for c in cases:
                    kd = kd.fails(c)
                r = self._switch(sw, targets, build(p, s, kd))
            else:
                kt, kf = k.holds(test), k.fails(test)
                y = build(p, yes, kt) if yes is not None else build(p + 1, 0, kt)
                n = build(p, no, kf) if no is not None else build(p + 1, 0, kf)
                r = self._node(test, y, n)
            if self.size > limit:
                raise _TooBig()
            memo[key] = r
            return r

        def switch(p, test, k):
            """A Switch on test's word, if patterns p and after compare it
            with enough values this path has not decided: under test's mask
            if they are enough, else under the bits that test shares with
            every undecided test it overlaps (a prefix shared by networks
            of several lengths, say). None if there is no such switch."""
            if not self.switch_min or not test.mask:
                return None
            tests = fields[p].get((test.base, test.off, test.need), ())
            if len(tests) < self.switch_min:
                return None

            def undecided(mask, value):
                return k.implies(Test(test.off, test.need, mask, value, test.base)) is None

            live = [(m, v) for m, v in tests if m & test.mask and undecided(m, v)]
            values = sorted({v for m, v in live if m == test.mask})
            mask = test.mask
            if len(values) < self.switch_min:
                for m, _ in live:
                    mask &= m
                values = sorted(c for c in {v & mask for _, v in live} if undecided(mask, c))
            if not mask or len(values) < self.switch_min:
                return None
            return Switch(test.off, test.need, mask, test.base, values)

        return build(0, 0, self.start)

    def finish(self, entry):
        """Renumber so targets only point forward, dropping unreachable nodes.

        Returns (entry, [(Test, yes, no), ...]) with final targets."""
        order = list(reversed(range(len(self.nodes))))   # parents first
        reach = {entry} if entry >= 0 else set()
        for nid in order:
            if nid in reach:
                reach.update(t for t in successors(self.nodes[nid]) if t >= 0)
        final = {nid: i for i, nid in enumerate(x for x in order if x in reach)}

        def target(t):
            if isinstance(t, tuple):
                return tuple(target(x) for x in t)
            return final[t] if t >= 0 else t

        nodes = [(test, target(y), target(n))
                 for test, y, n in (self.nodes[nid] for nid in order if nid in reach)]
        return target(entry), nodes


# A switch is made where a word is compared with at least this many values:
# a switch costs about two tests to walk, and decides every one of them.
SWITCH_MIN = 3


def compile_steps(steps, targets=None, start=None, max_shared_steps=300, limit=None,
                  switch_min=None):
    """Compile per-pattern steps to (entry, nodes, shared?).

    The shared compiler is used when there are at most `max_shared_steps`
    steps (it recurses once per step) and it stays within `limit` nodes and
    switch cases (default: four times the chain's size): first with switch
    nodes wherever a word is compared with at least `switch_min` values
    (0: never), then, if that is too big, without; otherwise the chain is
    used. `targets` maps patterns to targets; `start` is the Knowledge
    every packet begins with."""
    total = sum(len(s) for s in steps if s)
    if switch_min is None:
        switch_min = SWITCH_MIN
    if total + len(steps) <= max_shared_steps:
        for smin in dict.fromkeys((switch_min, 0)):
            prog = Program(steps, targets, start, smin)
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
    cases = []
    for test, yes, no in nodes:
        if isinstance(test, Switch):
            out.append(NODE.pack(test.off | (test.base << 24) | SWITCH_BIT, test.need,
                                 test.mask, len(cases) // 2, len(yes), no))
            for v, t in zip(test.values, yes):
                cases += (v, t)
        else:
            out.append(NODE.pack(test.off | (test.base << 24), test.need, test.mask,
                                 test.value, yes, no))
    out += [CASE.pack(cases[i], cases[i + 1]) for i in range(0, len(cases), 2)]
    return b"".join(out)


def describe_test(t):
    """One test as text: the length it needs and the word it compares."""
    name = BASE_NAMES[t.base]
    cond = f"{name + '.' if name else ''}len >= {t.need}"
    if t.mask:
        cond += f" and {name}[{t.off}..{t.off + 3}] & {t.mask:08x} == {t.value:08x}"
    return cond


def describe_switch(sw):
    """A switch node's word and the length it needs, as text."""
    name = BASE_NAMES[sw.base]
    return (f"switch {name}[{sw.off}..{sw.off + 3}] & {sw.mask:08x} "
            f"if {name + '.' if name else ''}len >= {sw.need}")


def _case_value(sw, v):
    """A case value in hex, and in decimal when the mask is one run of bits
    (a field such as a port or a protocol)."""
    low = (sw.mask & -sw.mask).bit_length() - 1
    run = sw.mask >> low
    text = f"{v:08x}"
    if run & (run + 1) == 0 and run > 1:
        text += f" ({v >> low})"
    return text


def program_text(entry, nodes, shared):
    """A compiled program, one test per line (a switch: one line per case)."""
    kind = "shared tests" if shared else "chain of tests"
    nsw = sum(isinstance(t, Switch) for t, _, _ in nodes)
    sws = f" ({nsw} switch{'es' if nsw != 1 else ''})" if nsw else ""
    lines = [f"{len(nodes)} node(s){sws}, {kind}; start: {_target_text(entry)}"]
    width = len(str(max(len(nodes) - 1, 0)))
    for i, (t, yes, no) in enumerate(nodes):
        if isinstance(t, Switch):
            lines.append(f"{i:>{width}}: {describe_switch(t)}:")
            for v, target in zip(t.values, yes):
                lines.append(f"{'':>{width}}    == {_case_value(t, v)} then {_target_text(target)}")
            lines.append(f"{'':>{width}}    else {_target_text(no)}")
        else:
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
    on a path is not repeated, and where several patterns compare one word
    with different values, one switch node (a hash lookup) decides them all.
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
