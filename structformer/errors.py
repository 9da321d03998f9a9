"""The one error type for bad input.

Every sub-command raises :class:`InputError` (or a subclass) for input the user can fix: a missing
file, a malformed corpus, a wrong flag combination. ``structformer`` prints its message on one line,
with no traceback, and exits with status 2, as argparse does for a bad flag. The message names the
input and says what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class InputError(ValueError):
    """Input the user can fix; the message names the input and the fix, in one line."""


# Bad input the OS reports itself (a missing or existing path, a file where a folder is expected, no
# permission): its message already names the path, so it is reported like InputError.
USER_ERRORS: tuple[type[Exception], ...] = (
    InputError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def run_command(command: str, main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run a sub-command's ``main(argv)`` and return its exit status, 2 with one line on stderr for bad input.

    ``structformer`` dispatches through this; a sub-command module runnable with ``python -m`` ends with
    ``if __name__ == "__main__": sys.exit(run_command("NAME", main))`` to report errors the same way.
    """
    try:
        result = main(sys.argv[1:] if argv is None else argv)
    except USER_ERRORS as err:
        # One line whatever the raiser wrote, so the message stays readable after the prefix and in logs.
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"structformer {command}: error: {message}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
