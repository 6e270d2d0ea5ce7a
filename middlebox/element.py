"""Element classes: the Python half of every element.

An element class declares, up front, its ports, its parameters and the C
kernel that processes its packets. It parses and validates configuration
once, and lowers it to the bytes its kernel reads from the plan. It never
touches packets (except Python elements, which run on the host only).

    class Strip(Element):
        '''Remove LENGTH bytes from the front of every packet.

            strip: {class: Strip, length: 14}
        '''
        kernel = "strip"
        length = Param(Int(min=0, max=65535), doc="bytes to remove")

        def lower(self, ctx):
            return struct.pack("<I", self.length)
"""

import inspect
import ipaddress
import re

from middlebox.errors import ConfigError

REQUIRED = object()


def read_handler(name):
    """Mark a method as read handler NAME: ``fn(self, ctx) -> str``, where
    ``ctx.query(what) -> bytes`` asks the kernel (its ``query``) and
    ``ctx.stats`` holds the element's counters."""
    def mark(fn):
        fn._mb_read = name
        return fn
    return mark


def write_handler(name):
    """Mark a method as write handler NAME: ``fn(self, value: str) -> bytes``
    returns the message the kernel's ``control`` applies between passes
    (raise ValueError with a one-line reason to refuse the value)."""
    def mark(fn):
        fn._mb_write = name
        return fn
    return mark


# --- parameter kinds -------------------------------------------------------

class Kind:
    """Parses one YAML value into a Python value, or raises ValueError."""

    name = "value"

    def parse(self, value):
        return value


class Int(Kind):
    def __init__(self, min=None, max=None):
        self.min, self.max = min, max
        lo = "" if min is None else f">= {min}"
        hi = "" if max is None else f"<= {max}"
        self.name = "integer" + (f" {lo}" if lo else "") + (f", {hi}" if lo and hi else f" {hi}" if hi else "")

    def parse(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                try:
                    value = int(value, 0)
                except ValueError:
                    raise ValueError(f"expected an integer, got {value!r}") from None
            else:
                raise ValueError(f"expected an integer, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{value} is above the maximum {self.max}")
        return value


class Str(Kind):
    def __init__(self, choices=None):
        self.choices = choices
        self.name = "string" if not choices else "one of " + ", ".join(choices)

    def parse(self, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
        return value


class Bool(Kind):
    name = "boolean"

    def parse(self, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"expected true or false, got {value!r}")


class List(Kind):
    def __init__(self, of=None, min_len=0):
        self.of = of or Str()
        self.min_len = min_len
        self.name = f"list of {self.of.name}"

    def parse(self, value):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(value) < self.min_len:
            raise ValueError(f"needs at least {self.min_len} item(s)")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.of.parse(item))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        return out


class MAC(Kind):
    """An Ethernet address: 00:11:22:33:44:55 or 00-11-22-33-44-55."""

    name = "Ethernet address"
    _re = re.compile(r"^[0-9a-fA-F]{1,2}([:-][0-9a-fA-F]{1,2}){5}$")

    def parse(self, value):
        if isinstance(value, (bytes, bytearray)) and len(value) == 6:
            return bytes(value)
        if not isinstance(value, str) or not self._re.match(value):
            raise ValueError(f"{value!r} is not an Ethernet address")
        return bytes(int(x, 16) for x in re.split(r"[:-]", value))


class IPv4(Kind):
    name = "IPv4 address"

    def parse(self, value):
        try:
            return ipaddress.IPv4Address(value)
        except (ValueError, TypeError):
            raise ValueError(f"{value!r} is not an IPv4 address") from None


class Hex(Kind):
    """Bytes written as hex digits (spaces and colons ignored)."""

    name = "hex bytes"

    def parse(self, value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"expected hex bytes, got {value!r}")
        digits = re.sub(r"[\s:]", "", value)
        if digits.lower().startswith("0x"):
            digits = digits[2:]
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise ValueError(f"{value!r} is not hex bytes") from None


class Param:
    """A declared parameter: its kind, default and one line of docs."""

    def __init__(self, kind=None, default=REQUIRED, doc=""):
        self.kind = kind or Kind()
        self.default = default
        self.doc = doc
        self.name = None

    @property
    def required(self):
        return self.default is REQUIRED

    def __set_name__(self, owner, name):
        self.name = name


# --- elements --------------------------------------------------------------

class Element:
    """Base class of every element.

    Class attributes a subclass sets:
      kernel   -- name of its C kernel (MB_KERNEL(name)); "python" for Python
                  elements, which run on the host only
      inputs   -- number of input ports
      outputs  -- number of output ports (or override noutputs())
      xstats   -- names of the kernel's extra counters, in xstat[] order
      source   -- True if the element makes packets (kernel has pull)
    """

    kernel = None
    inputs = 1
    outputs = 1
    xstats = ()
    source = False
    registry = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        params = {}
        for base in reversed(cls.__mro__):
            for key, value in vars(base).items():
                if isinstance(value, Param):
                    params[key] = value
        cls.params = params
        cls.read_handlers, cls.write_handlers = {}, {}
        for base in reversed(cls.__mro__):
            for key, value in vars(base).items():
                if hasattr(value, "_mb_read"):
                    cls.read_handlers[value._mb_read] = value
                if hasattr(value, "_mb_write"):
                    cls.write_handlers[value._mb_write] = value
        # Built-in classes are found by name; user classes by import path.
        if cls.kernel is not None and cls.__module__.startswith("middlebox.elements"):
            Element.registry.setdefault(cls.__name__, cls)

    def __init__(self, **config):
        self.name = None
        self.lines = {}
        self.line = None
        self.file = None
        self._configure(config)

    @classmethod
    def from_config(cls, name, config, line=None, lines=None, file=None):
        """Make an element from a YAML mapping; errors name the element."""
        self = cls.__new__(cls)
        self.name = name
        self.line = line
        self.lines = lines or {}
        self.file = file
        self._configure(config)
        return self

    def _configure(self, config):
        for key in config:
            if key not in self.params:
                known = ", ".join(self.params) or "none"
                self.error(f"unknown parameter '{key}' (parameters: {known})", key)
        for key, p in self.params.items():
            if key in config:
                try:
                    value = p.kind.parse(config[key])
                except ValueError as e:
                    self.error(f"parameter '{key}': {e}", key)
            elif p.required:
                self.error(f"missing parameter '{key}'")
            else:
                value = p.default
            setattr(self, key, value)
        self.configure()

    def error(self, message, param=None):
        """Raise a ConfigError located at this element (or one parameter)."""
        line = self.lines.get(param, self.line) if param else self.line
        raise ConfigError(message, file=self.file, line=line, element=self.name)

    # -- hooks for subclasses --

    def configure(self):
        """Cross-parameter checks, after every parameter has been parsed."""

    def ninputs(self):
        return self.inputs

    def noutputs(self, connected=0):
        """Output ports; `connected` is 1 + the highest port used in the graph."""
        return self.outputs

    def emit_bound(self, arriving):
        """Most packets one output can emit in one engine pass, given the
        most that can arrive in one pass (sizes downstream queues)."""
        return 32 if self.source else arriving

    def created_bound(self, arriving):
        """Most packets the kernel makes in one pass (sources, copies,
        fragments), given the most that can arrive: sizes the packet pool.
        self.nout holds the output count the graph check settled on."""
        return 32 if self.source else 0

    def held_capacity(self):
        """Most packets the kernel keeps across passes (Queue, ARPQuerier)."""
        return 0

    def lower(self, ctx):
        """Configuration as bytes for the kernel (ctx: plan.LowerContext)."""
        return b""

    # -- catalogue --

    @classmethod
    def describe(cls):
        """Docs from the class's own docstring and declarations."""
        doc = inspect.getdoc(cls) or ""
        summary = doc.splitlines()[0] if doc else ""
        return summary, doc

    @classmethod
    def port_text(cls):
        def txt(v):
            return str(v) if isinstance(v, int) else v
        ins = getattr(cls, "inputs_doc", None) or txt(cls.inputs)
        outs = getattr(cls, "outputs_doc", None) or txt(cls.outputs)
        return f"inputs {ins}, outputs {outs}"


class Packet:
    """A packet as a Python element sees it.

    data      -- bytearray, may be changed or replaced
    port      -- input port it arrived on
    timestamp -- arrival time in nanoseconds
    paint     -- the Paint annotation (0-255)
    """

    __slots__ = ("data", "port", "timestamp", "paint")

    def __init__(self, data, port=0, timestamp=0, paint=0):
        self.data = bytearray(data)
        self.port = port
        self.timestamp = timestamp
        self.paint = paint

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"Packet({len(self.data)} bytes, port={self.port})"


class PythonElement(Element):
    """Base class for elements written in Python (host engine only).

    Subclasses implement ``process(batch)``: `batch` is a list of Packet;
    return (or yield) ``(output_port, packet)`` pairs. Packets not returned
    are dropped and counted; returning a packet twice sends a copy.

        class TTLLogger(PythonElement):
            outputs = 2
            def process(self, batch):
                for p in batch:
                    yield (0 if p.data[22] > 1 else 1), p
    """

    kernel = "python"

    def created_bound(self, arriving):
        return arriving  # room for one copy of each packet; more are counted drops

    def process(self, batch):
        raise NotImplementedError(f"{type(self).__name__} must define process(batch)")
