"""The domain exceptions. The CLI turns each into one line and an exit code."""


class TracerError(Exception):
    """Base class of every error a user can cause. Its message is one line: characters that
    would break the line (newlines, other control characters) appear as escapes."""

    exit_code = 1

    def __str__(self):
        return one_line(super().__str__())


class ScenarioError(TracerError):
    """A scenario file (or an override) is wrong: names the file, the key and the problem."""

    exit_code = 2

    def __init__(self, source, key, problem):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class InputError(TracerError):
    """A command-line value is wrong (a parameter name, a step, a window)."""

    exit_code = 2


class LimitError(TracerError):
    """A run would break a spreadsheet limit; raised before anything is written. With `source`
    and `key` the message names the scenario file and the key to change."""

    exit_code = 2

    def __init__(self, problem, source=None, key=None):
        self.source, self.key, self.problem = source, key, problem
        where = "".join(f"{part}: " for part in (source, key) if part)
        super().__init__(where + problem)


class OutputExistsError(TracerError):
    """The output file exists and --force was not given."""

    exit_code = 2


class OutputError(TracerError):
    """An output cannot be written: its folder is missing or not writable, its name is too long,
    the disk is full. Nothing is left behind. Exit 2 (the path is the problem), 1 for a full disk."""

    exit_code = 2

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


class LibreOfficeMissing(TracerError):
    """LibreOffice (soffice) is not installed."""

    exit_code = 1

    def __init__(self):
        super().__init__(
            "LibreOffice (soffice) was not found on PATH; install it with "
            "`apt-get install -y libreoffice-calc-nogui` (Debian/Ubuntu) and try again"
        )


def one_line(text):
    """`text` with every non-printable character (newline, tab, other controls, line and
    paragraph separators, U+FFFE) written as its Python escape, so it stays on one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shorten(value, limit=80):
    """A value as it is echoed in a message: its repr (or the text itself for `str`) on one line
    (see one_line), at most `limit` characters, the middle replaced by '…' when longer."""
    text = one_line(value if isinstance(value, str) else repr(value))
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep - keep // 3] + "…" + text[len(text) - keep // 3:]
