"""Every element documents itself: a summary, and a YAML example that
configures without error (so the docs cannot drift from the code)."""

import re

import pytest
import yaml

import middlebox.elements as lib
from middlebox.loader import GraphLoader

CATALOGUE = lib.catalogue()
EXAMPLE = re.compile(r"^\s*(\w+):\s*(\{class:\s*(\w+).*\})\s*$", re.M)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_docstring_has_summary_and_working_yaml_example(name):
    cls = CATALOGUE[name]
    summary, doc = cls.describe()
    assert summary and summary[0].isupper(), f"{name}: no summary line"
    examples = [m for m in EXAMPLE.finditer(doc) if m.group(3) == name]
    assert examples, f"{name}: docstring has no `x: {{class: {name}, ...}}` example"
    for m in examples:
        config = yaml.load(m.group(2), Loader=GraphLoader)
        config.pop("class")
        element = cls.from_config(m.group(1), config)
        element.lower(_Ctx())


class _Ctx:
    """Lowering context for an element outside a graph: any device is 0."""

    def device_index(self, name):
        return 0


def test_every_parameter_is_documented():
    for name, cls in CATALOGUE.items():
        for key, p in cls.params.items():
            assert p.doc, f"{name}.{key} has no doc"
