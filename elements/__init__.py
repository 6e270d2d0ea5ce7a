"""The element library: one module per family, each a Python config class
beside the C kernel (same stem, .c) that processes its packets.

Importing this package imports every family, which registers its classes in
``middlebox.element.Element.registry``.
"""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")


def catalogue():
    """Every built-in element class, by name."""
    from middlebox.element import Element
    return dict(sorted(Element.registry.items()))
