"""YAML graph files into Graphs, keeping line numbers for every error.

    name: demo
    description: what it does
    elements:
      lan: {class: FromDevice, device: lan}
      cls: {class: Classifier, patterns: ["12/0800", "-"]}
    connections:
      - lan -> cls
      - cls[0] -> ...

`class` is a built-in element name, or `module.Class` for an element written
in Python (the module is imported with the graph file's folder on sys.path).
"""

import difflib
import importlib
import importlib.machinery
import os
import re
import sys

import yaml

from middlebox.element import Element
from middlebox.errors import ConfigError
from middlebox.graph import Graph, parse_connection

TOP_KEYS = ("name", "description", "elements", "connections")


class GraphLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML 1.1 as PyYAML's SafeLoader reads it (with libyaml's C parser when
    present: large route tables load ten times faster), except that base-60
    numbers are strings: `10:20:30:40:50:11` is an Ethernet address."""


GraphLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if not (tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
                    and ":" in regexp.pattern)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
        ("tag:yaml.org,2002:int", r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
                                    |[-+]?0x[0-9a-fA-F_]+)$""", list("-+0123456789")),
        ("tag:yaml.org,2002:float", r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
         list("-+0123456789.")),
):
    GraphLoader.add_implicit_resolver(_tag, re.compile(_pattern, re.X), _first)
MERGE_TAG = "tag:yaml.org,2002:merge"

# Top-level modules imported for `class: module.Class`, by name: the file
# each came from. One cached from another graph's folder is imported again
# when this graph's folder has its own module of that name.
_user_modules = {}


def load(source, file=None):
    """A Graph from a YAML path, or from YAML text (when it has a newline or
    does not name an existing file). Raises ConfigError."""
    text = None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and os.path.exists(source)):
        file = file or os.fspath(source)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read graph: {getattr(e, 'strerror', None) or e}", file) from None
    elif isinstance(source, str):
        if "\n" not in source and source.endswith((".yaml", ".yml")):
            raise ConfigError("no such file", source)
        text = source
        file = file or "<graph>"
    else:
        raise ConfigError(f"cannot load a graph from {type(source).__name__}", file)
    return parse(text, file)


def _line(node):
    return node.start_mark.line + 1


def _value(node, file=None):
    """The Python value of a YAML node (safe types only)."""
    if node.tag == MERGE_TAG:
        raise ConfigError("YAML merge keys ('<<') are not supported; write the keys out",
                          file, _line(node))
    try:
        return yaml.constructor.SafeConstructor().construct_document(node)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"bad YAML: {problem}", file,
                          mark.line + 1 if mark else _line(node)) from None


def parse(text, file="<graph>"):
    try:
        root = yaml.compose(text, Loader=GraphLoader)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[:e.position].count("\n") + 1 if isinstance(text, str) else 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise ConfigError(f"bad YAML: {e.reason} (character U+{code:04X})", file, line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"bad YAML: {problem}", file, mark.line + 1 if mark else 1) from None
    if root is None:
        raise ConfigError("empty graph file", file, 1)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("a graph is a mapping with 'elements' and 'connections'", file, _line(root))
    top = {}
    for k, v in root.value:
        key = _value(k, file)
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown top-level key '{key}' (expected: {', '.join(TOP_KEYS)})",
                              file, _line(k))
        if key in top:
            raise ConfigError(f"top-level key '{key}' given twice (first on line "
                              f"{_line(top[key][0])})", file, _line(k))
        top[key] = (k, v)
    if "elements" not in top:
        raise ConfigError("the graph has no 'elements'", file, 1)
    name = _scalar(top, "name", file) or os.path.splitext(os.path.basename(file))[0]
    g = Graph(name=str(name), description=str(_scalar(top, "description", file) or ""), file=file)
    _elements(g, top["elements"][1], file)
    if "connections" in top:
        _connections(g, top["connections"][1], file)
    g.check()
    return g


def _scalar(top, key, file):
    if key not in top:
        return None
    node = top[key][1]
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"'{key}' must be a string", file, _line(node))
    return _value(node, file)


def _elements(g, node, file):
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("'elements' must map names to {class: ..., params}", file, _line(node))
    base = os.path.dirname(os.path.abspath(file)) if os.path.exists(file) else os.getcwd()
    for knode, vnode in node.value:
        name = _value(knode, file)
        line = _line(knode)
        if not isinstance(name, str):
            raise ConfigError(f"element name {name!r} is not a string", file, line)
        if name in g.elements:
            raise ConfigError(f"declared twice (first on line {g.elements[name].line})",
                              file, line, name)
        try:
            element = _element(name, line, vnode, base, file)
        except ConfigError as e:
            raise e.locate(file, line, name)
        g.add(name, element, line)


def _element(name, line, vnode, base, file):
    """One element instance from its YAML node (a mapping, or a class name)."""
    if isinstance(vnode, yaml.ScalarNode):
        # Shorthand for an element without parameters: `drop: Discard`.
        config_nodes = {"class": vnode}
        key_lines = {}
    elif isinstance(vnode, yaml.MappingNode):
        config_nodes = {}
        key_lines = {}
        for pk, pv in vnode.value:
            key = _value(pk, file)
            if not isinstance(key, str):
                raise ConfigError(f"parameter name {key!r} is not a string",
                                  file, _line(pk), name)
            if key in config_nodes:
                raise ConfigError(f"parameter '{key}' given twice", file, _line(pk), name)
            config_nodes[key] = pv
            key_lines[key] = _line(pk)
    else:
        raise ConfigError("expected {class: NAME, parameter: value, ...}", file, line, name)
    if "class" not in config_nodes:
        raise ConfigError("missing 'class'", file, line, name)
    cnode = config_nodes.pop("class")
    cls = find_class(_value(cnode, file), base, file, _line(cnode), name)
    config = {k: _value(v, file) for k, v in config_nodes.items()}
    # A parameter's errors point at its key; item i of a list value is at
    # lines[(key, i)], for elements that report one item.
    lines = {}
    for k, v in config_nodes.items():
        lines[k] = key_lines[k]
        if isinstance(v, yaml.SequenceNode):
            for i, item in enumerate(v.value):
                lines[(k, i)] = _line(item)
    try:
        return cls.from_config(name, config, line=line, lines=lines, file=file)
    except ConfigError as e:
        raise e.locate(file, line, name)
    except Exception as e:  # noqa: BLE001 - user code: report, don't trace
        if cls.__module__.startswith("middlebox."):
            raise  # a bug in a built-in element: let it show
        raise ConfigError(f"{cls.__name__} failed to configure: {type(e).__name__}: "
                          f"{_one_line(e)}", file, line, name) from None


def find_class(clsname, base, file, line, name):
    """The element class for `class:`; built-ins by name, else module.Class."""
    import middlebox.elements as lib  # the library registers itself on import

    catalogue = lib.catalogue()
    if not isinstance(clsname, str):
        raise ConfigError(f"class must be a name, not {clsname!r}", file, line, name)
    if clsname in catalogue:
        return catalogue[clsname]
    if "." not in clsname:
        close = difflib.get_close_matches(clsname, catalogue, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown class '{clsname}'{hint}", file, line, name)
    modname, _, attr = clsname.rpartition(".")
    if base not in sys.path:
        sys.path.insert(0, base)
    top = modname.partition(".")[0]
    _forget_other_folder(top, base)
    fresh = top not in sys.modules
    importlib.invalidate_caches()  # the graph's folder may have new files
    try:
        mod = importlib.import_module(modname)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code: report, don't trace
        raise ConfigError(f"cannot import '{modname}': {type(e).__name__}: {_one_line(e)}",
                          file, line, name) from None
    if fresh and top in sys.modules:
        _user_modules[top] = getattr(sys.modules[top], "__file__", None)
    cls = getattr(mod, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Element)):
        raise ConfigError(f"'{clsname}' is not an element class", file, line, name)
    if not cls.kernel:
        raise ConfigError(f"'{clsname}' has no kernel; a Python element derives from "
                          "middlebox.element.PythonElement", file, line, name)
    return cls


def _one_line(exc):
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _forget_other_folder(top, base):
    """Drop a user module cached from another graph's folder when this
    graph's folder has its own module of that name."""
    where = _user_modules.get(top)
    cached = sys.modules.get(top)
    if not where or cached is None or getattr(cached, "__file__", None) != where:
        return  # never imported for a graph, or not by us (stdlib, installed package)
    spec = importlib.machinery.PathFinder.find_spec(top, [base])
    if spec is None or not spec.origin or os.path.realpath(spec.origin) == os.path.realpath(where):
        return
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]
    del _user_modules[top]


def _connections(g, node, file):
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError("'connections' must be a list of 'a -> b' strings", file, _line(node))
    for item in node.value:
        text = _value(item, file)
        if not isinstance(text, str):
            raise ConfigError(f"connection {text!r} is not a string like 'a -> b'", file, _line(item))
        for c in parse_connection(text, file, _line(item)):
            g.connect(c.src, c.dst, c.sport, c.dport, line=c.line)
            g.connections[-1].text = text
