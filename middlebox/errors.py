"""The two kinds of failure a user can see, each as one line.

ConfigError is anything wrong with what the user wrote (graph file, element
parameters, command line): exit code 2. RunError is a failure while running
(unreadable pcap, unwritable output, a Python element that raised): exit 1.
"""


class ConfigError(Exception):
    """A mistake in a graph or a command line, located as precisely as known.

    Renders as ``FILE:LINE: element 'NAME': message``; parts that are not
    known are left out.
    """

    def __init__(self, message, file=None, line=None, element=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.element = element

    def locate(self, file=None, line=None, element=None):
        """Fill in location parts that are still unknown; returns self."""
        if self.file is None:
            self.file = file
        if self.line is None:
            self.line = line
        if self.element is None:
            self.element = element
        return self

    def __str__(self):
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        if self.element is not None:
            where += f"element '{self.element}': "
        return where + _one_line(self.message)


def _one_line(text):
    # A user's own text (a class name spanning a YAML line break, a rule with
    # a tab) is quoted back in messages; escape control characters so the
    # error stays one line a script can parse.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class RunError(Exception):
    """A failure while running a valid graph (I/O, resources, user code)."""
