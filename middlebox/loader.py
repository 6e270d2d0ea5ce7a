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
import os
import sys

import yaml

from middlebox.element import Element
from middlebox.errors import ConfigError
from middlebox.graph import Graph, parse_connection

TOP_KEYS = ("name", "description", "elements", "connections")


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


def _value(node):
    return yaml.constructor.SafeConstructor().construct_document(node)


def parse(text, file="<graph>"):
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"bad YAML: {problem}", file, mark.line + 1 if mark else None) from None
    if root is None:
        raise ConfigError("empty graph file", file)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("a graph is a mapping with 'elements' and 'connections'", file, _line(root))
    top = {}
    for k, v in root.value:
        key = _value(k)
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown top-level key '{key}' (expected: {', '.join(TOP_KEYS)})",
                              file, _line(k))
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
    return _value(node)


def _elements(g, node, file):
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("'elements' must map names to {class: ..., params}", file, _line(node))
    base = os.path.dirname(os.path.abspath(file)) if os.path.exists(file) else os.getcwd()
    for knode, vnode in node.value:
        name = _value(knode)
        line = _line(knode)
        if not isinstance(name, str):
            raise ConfigError(f"element name {name!r} is not a string", file, line)
        if name in g.elements:
            raise ConfigError("declared twice", file, line, name)
        if isinstance(vnode, yaml.ScalarNode):
            # Shorthand for an element without parameters: `drop: Discard`.
            config_nodes = {"class": vnode}
        elif isinstance(vnode, yaml.MappingNode):
            config_nodes = {}
            for pk, pv in vnode.value:
                config_nodes[_value(pk)] = pv
        else:
            raise ConfigError("expected {class: NAME, parameter: value, ...}", file, line, name)
        if "class" not in config_nodes:
            raise ConfigError("missing 'class'", file, line, name)
        cls = find_class(_value(config_nodes.pop("class")), base, file, line, name)
        config = {k: _value(v) for k, v in config_nodes.items()}
        lines = {k: _line(v) for k, v in config_nodes.items()}
        try:
            element = cls.from_config(name, config, line=line, lines=lines, file=file)
        except ConfigError as e:
            raise e.locate(file, line, name)
        g.add(name, element, line)


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
    try:
        mod = importlib.import_module(modname)
    except Exception as e:  # noqa: BLE001 - user code: report, don't trace
        raise ConfigError(f"cannot import '{modname}': {type(e).__name__}: {e}",
                          file, line, name) from None
    cls = getattr(mod, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Element)):
        raise ConfigError(f"'{clsname}' is not an element class", file, line, name)
    return cls


def _connections(g, node, file):
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError("'connections' must be a list of 'a -> b' strings", file, _line(node))
    for item in node.value:
        text = _value(item)
        if not isinstance(text, str):
            raise ConfigError(f"connection {text!r} is not a string like 'a -> b'", file, _line(item))
        for c in parse_connection(text, file, _line(item)):
            g.connect(c.src, c.dst, c.sport, c.dport, line=c.line)
            g.connections[-1].text = text
