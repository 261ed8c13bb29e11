"""User-facing errors.

Every error a user can cause by what they pass in is a `TokenGateError`: the CLI prints its message as one line
and exits with status 2, never a traceback from deep inside a library. The message names the problem and the fix.
"""


class TokenGateError(Exception):
    """A problem with the user's input, config or artifacts, stated with its fix. `problem` and `fix` stay apart,
    so a caller that knows more context can restate the problem with its own fix."""

    def __init__(self, message: str, problem: str = "", fix: str = ""):
        super().__init__(message)
        self.problem, self.fix = problem or message, fix


def fail(problem: str, fix: str) -> TokenGateError:
    """Build an error whose one-line message says what is wrong and what to do about it."""
    problem = problem.rstrip(".")
    return TokenGateError(f"{problem}. Fix: {fix}", problem, fix)
