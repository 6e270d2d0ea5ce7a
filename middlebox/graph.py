"""The graph: element instances and their connections, and the checks that
make a graph safe to compile.

Built from YAML by middlebox.loader, or directly:

    g = Graph("demo")
    g.add("src", FromDevice(device="lan"))
    g.add("cls", Classifier(patterns=["12/0800", "-"]))
    g.connect("src", "cls")
    g.connect("cls", "out", sport=0)
    g.check()
"""

import heapq
import re

from middlebox.errors import ConfigError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Connection:
    __slots__ = ("src", "sport", "dst", "dport", "line", "text")

    def __init__(self, src, sport, dst, dport, line=None, text=None):
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.line = line
        self.text = text or f"{src}[{sport}] -> [{dport}]{dst}"

    def __repr__(self):
        return f"Connection({self.text!r})"


_HOP = re.compile(r"^\s*(?:\[\s*(\d+)\s*\])?\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[\s*(\d+)\s*\])?\s*$")


def parse_connection(text, file=None, line=None):
    """`a[1] -> [0]b -> c` into Connections (ports default to 0)."""
    parts = text.split("->")
    if len(parts) < 2:
        raise ConfigError(f"connection '{text}': expected 'a -> b'", file, line)
    hops = []
    for i, part in enumerate(parts):
        m = _HOP.match(part)
        if not m:
            raise ConfigError(f"connection '{text}': cannot read '{part.strip()}'", file, line)
        inp, name, outp = m.groups()
        if inp is not None and i == 0:
            raise ConfigError(f"connection '{text}': '{part.strip()}' has an input port "
                              "but nothing connects to it", file, line)
        if outp is not None and i == len(parts) - 1:
            raise ConfigError(f"connection '{text}': '{part.strip()}' has an output port "
                              "but connects to nothing", file, line)
        hops.append((int(inp or 0), name, int(outp or 0)))
    return [Connection(a[1], a[2], b[1], b[0], line, text) for a, b in zip(hops, hops[1:])]


class Graph:
    """Named elements and the connections between their ports."""

    def __init__(self, name="graph", description="", file=None):
        self.name = name
        self.description = description
        self.file = file
        self.elements = {}
        self.connections = []
        self.warnings = []
        self._checked = False

    def add(self, name, element, line=None):
        if not NAME.match(name or ""):
            raise ConfigError("element names are letters, digits and _", self.file, line, name)
        if name in self.elements:
            raise ConfigError("declared twice", self.file, line, name)
        element.name = name
        element.file = element.file or self.file
        element.line = element.line or line
        self.elements[name] = element
        self._checked = False
        return element

    def connect(self, src, dst, sport=0, dport=0, line=None):
        self.connections.append(Connection(src, sport, dst, dport, line))
        self._checked = False

    def _err(self, msg, element=None, line=None):
        return ConfigError(msg, self.file, line, element)

    def check(self):
        """Raise ConfigError on the first error; return warnings (also kept
        in self.warnings)."""
        els = self.elements
        warnings = []
        for c in self.connections:
            for end in (c.src, c.dst):
                if end not in els:
                    raise self._err(f"not declared (connection '{c.text}')", end, c.line)
        # Port counts may depend on how many outputs are connected (Tee).
        used_out = {}
        for c in self.connections:
            used_out[c.src] = max(used_out.get(c.src, 0), c.sport + 1)
        self.nout = {n: e.noutputs(used_out.get(n, 0)) for n, e in els.items()}
        self.nin = {n: e.ninputs() for n, e in els.items()}
        for n, e in els.items():  # what the element ended up with, for sizing hooks
            e.nout, e.nin = self.nout[n], self.nin[n]
        seen_out = {}
        for c in self.connections:
            cls_s, cls_d = type(els[c.src]).__name__, type(els[c.dst]).__name__
            if c.sport >= self.nout[c.src]:
                have = self.nout[c.src]
                raise self._err(f"output {c.sport} out of range ({cls_s} has {have} "
                                f"output{'s' if have != 1 else ''}) in '{c.text}'", c.src, c.line)
            if c.dport >= self.nin[c.dst]:
                have = self.nin[c.dst]
                raise self._err(f"input {c.dport} out of range ({cls_d} has {have} "
                                f"input{'s' if have != 1 else ''}) in '{c.text}'", c.dst, c.line)
            key = (c.src, c.sport)
            if key in seen_out:
                raise self._err(f"output {c.sport} connected twice (to '{seen_out[key]}' and "
                                f"'{c.dst}'); use a Tee to copy packets", c.src, c.line)
            seen_out[key] = c.dst
        if self._topological() is None:
            # a cycle: let networkx find one to name (imported only here:
            # `run` does not pay for it)
            import networkx as nx
            cycle = nx.find_cycle(self.digraph())
            path = " -> ".join([cycle[0][0]] + [edge[1] for edge in cycle])
            first = next(c for c in self.connections if (c.src, c.dst) == cycle[0][:2])
            raise self._err(f"connections form a cycle: {path}", cycle[0][0], first.line)
        rx = {}
        for n, e in els.items():
            role = getattr(e, "role", None)
            if role == "rx":
                dev = e.device_name()
                if dev in rx:
                    raise ConfigError(f"device '{dev}' already has a receiver ('{rx[dev]}')",
                                      self.file, e.line, n)
                rx[dev] = n
        fed = {c.dst for c in self.connections}
        for n, e in els.items():
            for port in range(self.nout[n]):
                if (n, port) not in seen_out:
                    warnings.append(str(self._err(
                        f"output {port} is not connected; its packets are dropped and counted",
                        n, e.line)))
            if self.nin[n] > 0 and n not in fed:
                warnings.append(str(self._err("no input is connected; it never sees a packet",
                                              n, e.line)))
        self.warnings = warnings
        self._checked = True
        return warnings

    def digraph(self):
        """The graph as a networkx MultiDiGraph (edge keys: ports)."""
        import networkx as nx
        g = nx.MultiDiGraph(name=self.name)
        for n, e in self.elements.items():
            g.add_node(n, cls=type(e).__name__, element=e)
        for c in self.connections:
            g.add_edge(c.src, c.dst, sport=c.sport, dport=c.dport)
        return g

    def order(self):
        """Element names in topological order, ties in declaration order."""
        if not self._checked:
            self.check()
        return self._topological()

    def _topological(self):
        """Kahn's algorithm, the ready element declared first going first (as
        networkx's lexicographical_topological_sort keyed by declaration
        order); None if the connections form a cycle."""
        rank = {n: i for i, n in enumerate(self.elements)}
        indegree = dict.fromkeys(self.elements, 0)
        after = {n: [] for n in self.elements}
        for c in self.connections:
            after[c.src].append(c.dst)
            indegree[c.dst] += 1
        ready = [rank[n] for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        names = list(self.elements)
        out = []
        while ready:
            n = names[heapq.heappop(ready)]
            out.append(n)
            for m in after[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    heapq.heappush(ready, rank[m])
        return out if len(out) == len(names) else None

    def devices(self):
        """Logical device names in order of first appearance."""
        out = []
        for e in self.elements.values():
            if hasattr(e, "device_name"):
                d = e.device_name()
                if d not in out:
                    out.append(d)
        return out

    def receivers(self):
        """{device: element name} of the elements packets enter through."""
        return {e.device_name(): n for n, e in self.elements.items()
                if getattr(e, "role", None) == "rx"}

    def senders(self):
        """{device: [element names]} of the elements packets leave through."""
        out = {}
        for n, e in self.elements.items():
            if getattr(e, "role", None) == "tx":
                out.setdefault(e.device_name(), []).append(n)
        return out
