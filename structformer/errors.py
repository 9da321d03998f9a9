"""The one error type for bad input.

Every sub-command raises :class:`InputError` (or a subclass) for input the user can fix: a missing
file, a malformed corpus, a wrong flag combination. ``structformer`` prints its message on one line,
with no traceback, and exits with status 2, as argparse does for a bad flag. The message names the
input and says what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable


class InputError(ValueError):
    """Input the user can fix; the message names the input and the fix, in one line."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason its message explains (a diverged loss, a full disk): reported
    in one line with exit status 1, since the traceback would only show where the check sits."""


# What rerunning an interrupted command does, by command: the one line Ctrl-C prints (exit status 130).
INTERRUPT_HINTS: dict[str, str] = {
    "pretrain": "continue from the last checkpoint with: {command} --resume-from-checkpoint latest",
    "finetune": "continue from the last checkpoints (with --save-steps) with: {command} --resume-from-checkpoint latest",
    "build-corpus": "rerun the same command to resume (finished papers are kept): {command}",
    "experiment": "--output-dir was left as it was; rerun the same command to start again: {command}",
}


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
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(argv)
    except USER_ERRORS as err:
        print(f"structformer {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"structformer {command}: stopped: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nstructformer {command}: interrupted; {interrupt_hint(command, argv)}", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def interrupt_hint(command: str, argv: list[str]) -> str:
    """How to pick up an interrupted ``structformer COMMAND ARGV``: the command line to run next."""
    again = list(argv)
    if "--resume-from-checkpoint" in again:  # and its value: the pretrain hint appends 'latest'
        index = again.index("--resume-from-checkpoint")
        del again[index : index + 2]
    line = shlex.join(["structformer", command, *again])
    return INTERRUPT_HINTS.get(command, "rerun with: {command}").format(command=line)


def _one_line(err: BaseException) -> str:
    # One line whatever the raiser wrote, so the message stays readable after the prefix and in logs.
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
