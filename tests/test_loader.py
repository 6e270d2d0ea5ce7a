"""The YAML graph language and the graph checks.

Every configuration error must come out as one located line,
`FILE:LINE: element 'NAME': message` (or `FILE:LINE: message` where no
element applies), from middlebox.loader (as a ConfigError) and from
`middlebox check` (exit 2, exactly that line on stderr). In the graphs
below, the line an error must point at carries the comment `#!`.
"""

import os
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middlebox import cli, loader
from middlebox.elements.devices import FromDevice, ToDevice
from middlebox.elements.standard import Counter, Discard
from middlebox.errors import ConfigError
from middlebox.graph import Graph, parse_connection

MARK = "#!"
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "graphs",
                    "classifier.yaml")

# The devices most graphs below start with.
HEAD = """\
elements:
  lan: {class: FromDevice, device: lan}
  wan: {class: ToDevice, device: wan}
"""


def write(tmp_path, text, name="g.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def marked_line(path):
    """1-based number of the line carrying the #! mark."""
    lines = path.read_text().splitlines()
    hits = [i + 1 for i, ln in enumerate(lines) if MARK in ln]
    assert len(hits) == 1, "test graph must mark exactly one line"
    return hits[0]


def check_cli(path, capsys):
    """Run `middlebox check` in-process; return (exit code, stdout, stderr lines)."""
    rc = cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def assert_error(path, capsys, element, phrase, line=None):
    """The loader and `middlebox check` both report exactly this error."""
    line = line if line is not None else marked_line(path)
    with pytest.raises(ConfigError) as info:
        loader.load(str(path))
    e = info.value
    assert (e.file, e.line, e.element) == (str(path), line, element), str(e)
    assert phrase in e.message, str(e)
    where = f"{path}:{line}: " + (f"element '{element}': " if element else "")
    assert str(e) == where + e.message
    assert "\n" not in str(e)
    if element is None:
        assert not e.message.startswith("element '")

    rc, out, err = check_cli(path, capsys)
    assert rc == 2
    assert err == [str(e)]
    assert out == ""


# --- every configuration error, located -------------------------------------

ERRORS = [
    # (id, graph text, element named in the error or None, key phrase)
    ("yaml-syntax", HEAD + "  drop: {class: Discard}: oops   #!\n", None, "bad YAML"),
    ("yaml-mapping-values", "elements:\n  lan: class: FromDevice   #!\n", None, "bad YAML"),
    ("yaml-tab", HEAD + "\tdrop: {class: Discard}   #!\n", None, "bad YAML"),
    ("yaml-tab-indent", "elements:\n  lan:\n\t  class: Discard   #!\n", None, "bad YAML"),
    ("yaml-unknown-tag", HEAD + "  s: {class: Strip, length: !len 14}   #!\n", "s", "bad YAML"),
    ("yaml-python-tag", HEAD + "  s: !!python/name:os.system   #!\n", "s", "bad YAML"),
    ("yaml-merge-key", HEAD + "  s: {<<: {class: Discard}}   #!\n", "s", "merge keys"),
    ("top-is-list", "- lan   #!\n- wan\n", None, "a graph is a mapping"),
    ("top-is-scalar", "just words   #!\n", None, "a graph is a mapping"),
    ("elements-is-list", "elements:\n  - lan   #!\n  - wan\n", None, "'elements' must map"),
    ("elements-is-null", "elements:   #!\nconnections: []\n", None, "'elements' must map"),
    ("element-is-list", HEAD + "  x: [Discard]   #!\n", "x", "expected {class"),
    ("connections-is-mapping", HEAD + "connections:\n  lan: wan   #!\n", None,
     "'connections' must be a list"),
    ("connections-is-string", HEAD + "connections: lan -> wan   #!\n", None,
     "'connections' must be a list"),
    ("unknown-top-key", HEAD + "conections:   #!\n  - lan -> wan\n", None,
     "unknown top-level key 'conections'"),
    ("top-key-twice", HEAD + "elements:   #!\n  x: Discard\n", None,
     "top-level key 'elements' given twice"),
    ("no-elements", "name: g\nconnections: []\n", None, "no 'elements'"),
    ("name-not-string", "name: [a, b]   #!\n" + HEAD, None, "'name' must be a string"),
    ("unknown-class", HEAD + "  drop: {class: Discrd}   #!\n", "drop",
     "unknown class 'Discrd'; did you mean 'Discard'?"),
    ("unknown-class-shorthand", HEAD + "  drop: Discrd   #!\n", "drop", "did you mean 'Discard'"),
    ("unknown-class-no-hint", HEAD + "  q: {class: Zzyzx}   #!\n", "q", "unknown class 'Zzyzx'"),
    ("unknown-class-block", HEAD + "  cls:\n    class: Clasifier   #!\n    patterns: ['-']\n",
     "cls", "did you mean 'Classifier'"),
    ("class-not-a-name", HEAD + "  x: {class: [Discard]}   #!\n", "x", "class must be a name"),
    ("missing-class", HEAD + "  x: {length: 14}   #!\n", "x", "missing 'class'"),
    ("unknown-parameter", HEAD + "  s: {class: Strip, length: 14, lenght: 4}   #!\n", "s",
     "unknown parameter 'lenght'"),
    ("unknown-parameter-block", HEAD + "  s:\n    class: Strip\n    length: 14\n"
     "    bogus: 1   #!\n", "s", "unknown parameter 'bogus'"),
    ("missing-parameter", HEAD + "  s: {class: Strip}   #!\n", "s", "missing parameter 'length'"),
    ("missing-parameter-block", HEAD + "  s:   #!\n    class: Strip\n", "s",
     "missing parameter 'length'"),
    ("wrong-type", HEAD + "  s: {class: Strip, length: fourteen}   #!\n", "s",
     "parameter 'length': expected an integer"),
    ("wrong-type-list", HEAD + "  s:\n    class: Strip\n    length: [14]   #!\n", "s",
     "expected an integer"),
    ("wrong-type-bool", HEAD + "  s: {class: Strip, length: true}   #!\n", "s",
     "expected an integer"),
    ("below-minimum", HEAD + "  s: {class: Strip, length: -1}   #!\n", "s", "below the minimum 0"),
    ("above-maximum", HEAD + "  p:\n    class: Paint\n    color: 256   #!\n", "p",
     "above the maximum 255"),
    ("bad-mac", HEAD + "  rw:\n    class: EtherRewrite\n    src: 02:00:00:00:00:01\n"
     "    dst: 02:00:00:00:00   #!\n", "rw", "parameter 'dst': '02:00:00:00:00' is not an Ethernet"),
    ("bad-mac-digits", HEAD + "  rw: {class: EtherRewrite, src: 02:00:00:00:00:zz, "
     "dst: 02:00:00:00:00:01}   #!\n", "rw", "parameter 'src'"),
    ("bad-pattern", HEAD + "  cls:\n    class: Classifier\n    patterns:   #!\n"
     "      - 12/0800\n      - 12/08x0\n", "cls", "pattern 2"),
    ("parameter-twice", HEAD + "  s:\n    class: Strip\n    length: 14\n    length: 4   #!\n",
     "s", "parameter 'length' given twice"),
    ("parameter-name-not-string", HEAD + "  s: {class: Strip, length: 1, {a: 1}: 2}   #!\n", "s",
     "parameter name"),
    ("duplicate-element", HEAD + "  lan: {class: Discard}   #!\n", "lan",
     "declared twice (first on line 2)"),
    ("duplicate-element-later", HEAD + "  c: Counter\n  d: Discard\n  c: Counter   #!\n", "c",
     "declared twice"),
    ("element-name-not-string", HEAD + "  7: Discard   #!\n", None, "element name 7 is not a string"),
    ("element-name-bad-chars", HEAD + "  bad-name: Discard   #!\n", "bad-name",
     "letters, digits and _"),
    ("unknown-destination", HEAD + "connections:\n  - lan -> nope   #!\n", "nope",
     "not declared (connection 'lan -> nope')"),
    ("unknown-source", HEAD + "connections:\n  - lan -> wan\n  - ghost -> wan   #!\n", "ghost",
     "not declared"),
    ("unknown-in-chain", HEAD + "  c: Counter\nconnections:\n  - lan -> c -> mid -> wan   #!\n",
     "mid", "not declared"),
    ("arrow-missing", HEAD + "connections:\n  - lan => wan   #!\n", None, "expected 'a -> b'"),
    ("arrow-spaced", HEAD + "connections:\n  - lan - > wan   #!\n", None, "connection 'lan - > wan'"),
    ("chain-dangling", HEAD + "connections:\n  - lan -> wan ->   #!\n", None, "cannot read ''"),
    ("chain-leading", HEAD + "connections:\n  - '-> wan'   #!\n", None, "cannot read ''"),
    ("port-not-number", HEAD + "connections:\n  - lan[x] -> wan   #!\n", None, "cannot read 'lan[x]'"),
    ("port-negative", HEAD + "connections:\n  - lan[-1] -> wan   #!\n", None, "cannot read"),
    ("input-port-on-first", HEAD + "connections:\n  - '[0]lan -> wan'   #!\n", None,
     "has an input port but nothing connects to it"),
    ("output-port-on-last", HEAD + "connections:\n  - lan -> wan[0]   #!\n", None,
     "has an output port but connects to nothing"),
    ("connection-empty", HEAD + "connections:\n  - ''   #!\n", None, "expected 'a -> b'"),
    ("connection-number", HEAD + "connections:\n  - lan -> wan\n  - 5   #!\n", None,
     "connection 5 is not a string"),
    ("connection-mapping", HEAD + "connections:\n  - {lan: wan}   #!\n", None, "is not a string"),
    ("output-out-of-range", HEAD + "connections:\n  - lan[1] -> wan   #!\n", "lan",
     "output 1 out of range (FromDevice has 1 output)"),
    ("output-out-of-range-classifier", HEAD + "  cls: {class: Classifier, patterns: ['12/0800', '-']}\n"
     "connections:\n  - lan -> cls\n  - cls[0] -> wan\n  - cls[2] -> wan   #!\n", "cls",
     "output 2 out of range (Classifier has 2 outputs)"),
    ("output-of-sink", HEAD + "  d: Discard\nconnections:\n  - lan -> d\n  - d -> wan   #!\n", "d",
     "output 0 out of range (Discard has 0 outputs)"),
    ("input-out-of-range", HEAD + "connections:\n  - lan -> [1]wan   #!\n", "wan",
     "input 1 out of range (ToDevice has 1 input)"),
    ("input-of-receiver", HEAD + "  t: Tee\nconnections:\n  - t[1] -> [0]lan   #!\n", "lan",
     "input 0 out of range (FromDevice has 0 inputs)"),
    ("output-connected-twice", HEAD + "  d: Discard\nconnections:\n  - lan -> wan\n"
     "  - lan -> d   #!\n", "lan", "output 0 connected twice (to 'wan' and 'd')"),
    ("output-twice-in-chain", HEAD + "  c: Counter\nconnections:\n  - lan -> c -> wan\n"
     "  - c[0] -> wan   #!\n", "c", "connected twice"),
    ("cycle", HEAD + "  a: Counter\n  b: Counter\n  t: Tee\nconnections:\n  - lan -> t\n"
     "  - t[1] -> wan\n  - t[0] -> a -> b -> a   #!\n", "a", "cycle: a -> b -> a"),
    ("cycle-self", HEAD + "  a: Counter\nconnections:\n  - a -> a   #!\n", "a", "cycle: a -> a"),
    ("two-receivers", HEAD + "  lan2: {class: FromDevice, device: lan}   #!\n", "lan2",
     "device 'lan' already has a receiver ('lan')"),
    ("bad-burst", HEAD + "  src: {class: InfiniteSource, burst: 33}   #!\n",
     "src", "parameter 'burst'"),
]


@pytest.mark.parametrize("text,element,phrase", [c[1:] for c in ERRORS],
                         ids=[c[0] for c in ERRORS])
def test_config_error_is_one_located_line(tmp_path, capsys, text, element, phrase):
    path = write(tmp_path, text)
    line = 1 if MARK not in text else None
    assert_error(path, capsys, element, phrase, line)


def test_yaml_syntax_error_line_of_unclosed_bracket(tmp_path, capsys):
    # An unclosed flow mapping is noticed where the next key starts.
    path = write(tmp_path, HEAD + "  drop: {class: Discard\nconnections: []   #!\n")
    assert_error(path, capsys, None, "bad YAML")


def test_empty_file(tmp_path, capsys):
    assert_error(write(tmp_path, ""), capsys, None, "empty graph file", line=1)
    assert_error(write(tmp_path, "# nothing here\n\n", "c.yaml"), capsys, None, "empty graph",
                 line=1)


def test_control_character(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(HEAD + "  x: Discard\n  y: Dis\x07card   #!\n")
    # libyaml says "control characters", the pure-Python reader "special characters".
    assert_error(path, capsys, None, "characters are not allowed (character U+0007)")


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="no such file"):
        loader.load(str(path))
    rc, out, err = check_cli(path, capsys)
    assert rc == 2 and len(err) == 1 and str(path) in err[0] and "no such file" in err[0]


def test_not_utf8_and_directory(tmp_path, capsys):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"elements:\n  \xff\xfe: Discard\n")
    rc, out, err = check_cli(path, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"{path}: cannot read graph")
    rc, out, err = check_cli(tmp_path, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"{tmp_path}: cannot read graph")


def test_pyyaml_keeps_duplicate_keys_in_the_node_tree():
    # The reason the loader works on composed nodes: PyYAML's own loaders
    # silently keep the last of two equal keys.
    text = "a: 1\na: 2\n"
    assert yaml.safe_load(text) == {"a": 2}
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert [k.value for k, _ in node.value] == ["a", "a"]


def test_first_error_wins_and_is_alone(tmp_path, capsys):
    # Two errors: an unknown class on line 4, an unknown element on line 6.
    path = write(tmp_path, HEAD + "  x: Bogus   #!\nconnections:\n  - lan -> nope\n")
    assert_error(path, capsys, "x", "unknown class 'Bogus'")


def test_yaml_text_is_located_as_graph(capsys):
    with pytest.raises(ConfigError) as info:
        loader.load(HEAD + "  x: {class: Strip, length: -3}\n")
    e = info.value
    assert (e.file, e.line, e.element) == ("<graph>", 4, "x")
    assert str(e).startswith("<graph>:4: element 'x': ")


# --- warnings ------------------------------------------------------------------

def test_unconnected_output_and_input_are_warnings(tmp_path, capsys):
    path = write(tmp_path, HEAD + "  c: Counter\n  cls: {class: Classifier, patterns: ['12/0800', '-']}\n"
                 "connections:\n  - lan -> cls\n  - cls[1] -> wan\n")
    g = loader.load(str(path))
    assert len(g.warnings) == 3
    rc, out, err = check_cli(path, capsys)
    assert rc == 0
    assert "ok: graph 'g', 4 elements, 2 connections" in out
    assert err == [f"warning: {w}" for w in g.warnings]
    assert f"warning: {path}:5: element 'cls': output 0 is not connected" in "\n".join(err)
    assert f"warning: {path}:4: element 'c': output 0 is not connected" in "\n".join(err)
    assert f"warning: {path}:4: element 'c': no input is connected" in "\n".join(err)


def test_clean_graph_has_no_warnings(tmp_path, capsys):
    path = write(tmp_path, HEAD + "connections:\n  - lan -> wan\n")
    assert loader.load(str(path)).warnings == []
    rc, out, err = check_cli(path, capsys)
    assert (rc, err) == (0, [])
    assert out.startswith(f"{path}: ok: graph 'g', 2 elements, 1 connections, devices: lan, wan")


def test_devices_and_warnings_of_the_demo_graph(capsys):
    g = loader.load(DEMO)
    assert g.warnings == []
    assert g.devices() == ["lan", "wan"]
    assert g.receivers() == {"lan": "lan"}
    assert g.senders() == {"wan": ["wan"]}


# --- connection syntax ---------------------------------------------------------

def edges(g):
    return [(c.src, c.sport, c.dst, c.dport) for c in g.connections]


@pytest.mark.parametrize("text,want", [
    ("a -> b", [("a", 0, "b", 0)]),
    ("a[1] -> [0]b", [("a", 1, "b", 0)]),
    ("a [1] -> [2] b", [("a", 1, "b", 2)]),
    ("a[3]->[2]b", [("a", 3, "b", 2)]),
    ("  a  ->  b  ", [("a", 0, "b", 0)]),
    ("a -> b -> c", [("a", 0, "b", 0), ("b", 0, "c", 0)]),
    ("a[1] -> [2]b[3] -> [4]c", [("a", 1, "b", 2), ("b", 3, "c", 4)]),
    ("a -> [1] b [2] -> c", [("a", 0, "b", 1), ("b", 2, "c", 0)]),
    ("x_1[10] -> _y", [("x_1", 10, "_y", 0)]),
])
def test_parse_connection(text, want):
    got = parse_connection(text, "f.yaml", 7)
    assert [(c.src, c.sport, c.dst, c.dport) for c in got] == want
    assert all(c.line == 7 and c.text == text for c in got)


@pytest.mark.parametrize("text", ["a", "a ->", "-> b", "a -> -> b", "a[1 -> b", "a] -> b",
                                  "a -> b c", "1a -> b", "a[-1] -> b", "a <- b", "a->>b"])
def test_parse_connection_rejects(text):
    with pytest.raises(ConfigError) as info:
        parse_connection(text, "f.yaml", 7)
    assert (info.value.file, info.value.line) == ("f.yaml", 7)
    assert f"connection '{text}'" in info.value.message


def test_connections_in_a_graph(tmp_path):
    path = write(tmp_path, """\
        elements:
          lan: {class: FromDevice, device: lan}
          cls: {class: Classifier, patterns: ["12/0800", "12/86dd", "-"]}
          t: {class: Tee, n: 2}
          wan: {class: ToDevice, device: wan}
          drop: Discard
          more: Discard
          c: Counter
        connections:
          - lan -> cls
          - cls [1] -> [0] t
          - cls[0] -> c -> wan
          - t[1] -> more
          - "cls[2] -> drop"
        """)
    g = loader.load(str(path))
    assert edges(g) == [("lan", 0, "cls", 0), ("cls", 1, "t", 0), ("cls", 0, "c", 0),
                        ("c", 0, "wan", 0), ("t", 1, "more", 0), ("cls", 2, "drop", 0)]
    assert [c.line for c in g.connections] == [10, 11, 12, 12, 13, 14]
    assert g.nout == {"lan": 1, "cls": 3, "t": 2, "wan": 0, "drop": 0, "more": 0, "c": 1}
    # t[0] is not connected: a warning, not an error
    assert g.warnings == [f"{path}:4: element 't': output 0 is not connected; its packets "
                          "are dropped and counted"]
    assert g.order().index("cls") < g.order().index("t") < g.order().index("more")


def test_flow_style_connections_and_shorthand(tmp_path):
    path = write(tmp_path, "elements: {lan: {class: FromDevice, device: lan}, drop: Discard}\n"
                 "connections: [lan -> drop]\n")
    g = loader.load(str(path))
    assert isinstance(g.elements["drop"], Discard)
    assert edges(g) == [("lan", 0, "drop", 0)]
    assert g.name == "g"  # from the file name


def test_name_description_and_anchors(tmp_path):
    path = write(tmp_path, """\
        name: demo
        description: a small graph
        elements:
          lan: {class: FromDevice, device: lan}
          a: &cnt {class: Counter}
          b: *cnt
          wan: {class: ToDevice, device: wan}
        connections:
          - lan -> a -> b -> wan
        """)
    g = loader.load(path)  # a PathLike works too
    assert (g.name, g.description) == ("demo", "a small graph")
    assert isinstance(g.elements["b"], Counter) and g.elements["a"] is not g.elements["b"]
    assert [g.elements[n].line for n in ("lan", "a", "b", "wan")] == [4, 5, 6, 7]
    assert g.warnings == []


def test_parameter_lines_are_kept(tmp_path):
    path = write(tmp_path, HEAD + "  rw:\n    class: EtherRewrite\n    src: 02:00:00:00:00:01\n"
                 "    dst: 02-00-00-00-00-FE\n")
    e = loader.load(str(path)).elements["rw"]
    assert e.lines == {"src": 6, "dst": 7}
    assert (e.src, e.dst) == (bytes.fromhex("020000000001"), bytes.fromhex("0200000000fe"))
    # list items have their own lines, for errors about one item
    path = write(tmp_path, HEAD + "  cls:\n    class: Classifier\n    patterns:\n"
                 "      - 12/0800\n      - '-'\n  t: {class: Tee, n: 2}\n", "h.yaml")
    g = loader.load(str(path))
    assert g.elements["cls"].lines == {"patterns": 6, ("patterns", 0): 7, ("patterns", 1): 8}
    assert g.elements["t"].lines == {"n": 9}


# --- the Graph API -------------------------------------------------------------

def test_graph_api_checks():
    g = Graph("api", file="api.py")
    g.add("lan", FromDevice(device="lan"))
    g.add("wan", ToDevice(device="wan"))
    with pytest.raises(ConfigError, match="declared twice"):
        g.add("lan", Discard())
    with pytest.raises(ConfigError, match="letters, digits"):
        g.add("a b", Discard())
    g.connect("lan", "wan")
    assert g.check() == []
    g.connect("lan", "nope", line=9)
    with pytest.raises(ConfigError) as info:
        g.check()
    assert str(info.value) == "api.py:9: element 'nope': not declared (connection 'lan[0] -> [0]nope')"


# --- Python elements, by dotted path -------------------------------------------

PYMOD = '''\
from middlebox.element import Element, Int, Param, PythonElement


class Head(PythonElement):
    """Keep the first KEEP bytes of every packet.

        head: {class: mymod.Head, keep: 20}
    """
    keep = Param(Int(min=1), default=20)

    def process(self, batch):
        for p in batch:
            p.data = p.data[:self.keep]
            yield 0, p


class Picky(PythonElement):
    """Fails in configure with a plain exception.

        p: {class: mymod.Picky}
    """
    def configure(self):
        raise ValueError("picky\\nabout everything")


class NoKernel(Element):
    """Not runnable.

        n: {class: mymod.NoKernel}
    """


NOT_A_CLASS = 5
'''


def py_graph(tmp_path, cls_line, module=PYMOD, modname="mymod"):
    if module is not None:
        (tmp_path / f"{modname}.py").write_text(module)
    return write(tmp_path, "elements:\n  lan: {class: FromDevice, device: lan}\n"
                 f"  {cls_line}   #!\n  wan: {{class: ToDevice, device: wan}}\n"
                 "connections:\n  - lan -> x -> wan\n")


def test_python_element_by_dotted_path(tmp_path, monkeypatch):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from middlebox.testing import run_graph

    monkeypatch.chdir("/")  # imported from the graph's folder, not the cwd
    path = py_graph(tmp_path, "x: {class: mymod.Head, keep: 30}")
    g = loader.load(str(path))
    x = g.elements["x"]
    assert type(x).__name__ == "Head" and x.keep == 30 and x.kernel == "python"
    pkts = [bytes(Ether() / IP(dst="10.0.0.1") / UDP() / (b"z" * n)) for n in (0, 5, 40)]
    res = run_graph(g, {"lan": pkts})
    assert res["wan"] == [p[:30] for p in pkts]
    assert res.all_stats["x"]["in"] == 3 and res.all_stats["x"]["out"] == 3


def test_same_module_name_in_two_folders(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    py_graph(one, "x: {class: mymod.Head, keep: 30}")
    other = PYMOD.replace("class Head(", "class Head2(PythonElement):\n    pass\n\n\nclass Head(")
    py_graph(two, "x: {class: mymod.Head2}", module=other)
    assert type(loader.load(str(one / "g.yaml")).elements["x"]).__name__ == "Head"
    assert type(loader.load(str(two / "g.yaml")).elements["x"]).__name__ == "Head2"
    assert type(loader.load(str(one / "g.yaml")).elements["x"]).__name__ == "Head"


@pytest.mark.parametrize("cls_line,module,phrase", [
    ("x: {class: nosuchmod_zz.Head}", None, "cannot import 'nosuchmod_zz': ModuleNotFoundError"),
    ("x: {class: badsyntax_zz.Head}", "def f(:\n", "cannot import 'badsyntax_zz': SyntaxError"),
    ("x: {class: raising_zz.Head}", "raise RuntimeError('no\\nway')\n",
     "cannot import 'raising_zz': RuntimeError: no way"),
    ("x: {class: exiting_zz.Head}", "import sys\nsys.exit(3)\n", "cannot import 'exiting_zz': SystemExit"),
    ("x: {class: mymod.Missing}", PYMOD, "'mymod.Missing' is not an element class"),
    ("x: {class: mymod.NOT_A_CLASS}", PYMOD, "'mymod.NOT_A_CLASS' is not an element class"),
    ("x: {class: os.path}", PYMOD, "'os.path' is not an element class"),
    ("x: {class: mymod.NoKernel}", PYMOD, "has no kernel"),
    ("x: {class: mymod.Picky}", PYMOD, "Picky failed to configure: ValueError: picky about"),
    ("x: {class: mymod.Head, keep: 0}", PYMOD, "parameter 'keep': 0 is below the minimum 1"),
])
def test_python_element_errors(tmp_path, capsys, cls_line, module, phrase):
    modname = cls_line.split("class: ")[1].split(".")[0]
    path = py_graph(tmp_path, cls_line, module=module,
                    modname=modname if modname != "os" else "mymod")
    assert_error(path, capsys, "x", phrase)


# --- never anything but a ConfigError -----------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mangled_graphs_give_config_errors_only(data):
    with open(DEMO) as f:
        text = f.read()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        junk = data.draw(st.sampled_from(["\t", "\n", ":", "-", "[", "]", "{", "}", "->", "'",
                                          '"', "&a", "*a", "!x ", "<<: ", "? ", "#", " ", "0",
                                          "x", "\x00", "\xff", "%"]))
        if action == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 8)):]
        elif action == "insert":
            text = text[:at] + junk + text[at:]
        else:
            text = text[:at] + junk + text[at + 1:]
    try:
        g = loader.parse(text, "m.yaml")
    except ConfigError as e:
        assert str(e).startswith("m.yaml:") and "\n" not in str(e)
        assert e.line is not None and 1 <= e.line <= text.count("\n") + 2
    else:
        assert isinstance(g, Graph)


def test_unquoted_ethernet_address_is_not_a_base60_number():
    """YAML 1.1 reads 10:20:30:40:50:11 as a base-60 integer; graphs must not."""
    from middlebox import loader
    g = loader.load("elements:\n"
                    "  lan: {class: FromDevice, device: lan}\n"
                    "  rw: {class: EtherRewrite, src: 10:20:30:40:50:11, dst: 02:00:00:00:00:59}\n"
                    "  wan: {class: ToDevice, device: wan}\n"
                    "connections: [lan -> rw -> wan]\n")
    assert g.elements["rw"].src == bytes([0x10, 0x20, 0x30, 0x40, 0x50, 0x11])
    assert g.elements["rw"].dst == bytes([2, 0, 0, 0, 0, 0x59])
