"""A Python element that forwards every packet unchanged: the cost of the
Python bridge alone, for benchmarks."""

from middlebox import PythonElement


class Passthrough(PythonElement):
    """Forwards every packet on output 0.

        py: {class: passthrough.Passthrough}
    """

    def process(self, batch):
        return [(0, p) for p in batch]
