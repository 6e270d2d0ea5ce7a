"""The host engine: the shared C scheduler and element kernels, hosted by a
Cython extension that owns packet memory and drives device ports.

    from middlebox.runtime import Engine
    eng = Engine(plan_bytes)
"""

from middlebox.runtime.host import Engine  # noqa: F401
