"""The exceptions the command line turns into a one-line message: ``UserError`` (exit code 2) and
``NumericalError`` (exit code 1), and the errors of a user's own model or guide program (``program_failure``).
Nothing here imports more than Python, so the command line can catch them from the start."""
import traceback

PROGRAM_MODULE = "pyro_cwvae_user_"
"""How the module of a user's program file is named (programs.load_module): ``pyro_cwvae_user_{kind}_{number}``."""


class UserError(ValueError):
    """Bad input the user can fix: a wrong option, a missing or corrupt file. The message is one line."""


class NumericalError(RuntimeError):
    """Training's loss or gradients stopped being finite; the last good checkpoint is kept."""


def program_failure(error: BaseException) -> tuple[str, str] | None:
    """Where ``error`` passed through a user's model or guide program: the traceback from the program's first frame
    on, and a line naming the program and the error; None for an error of the package alone. Along a chain of
    errors raised ``from`` one another (Pyro re-raises a program's error with its trace's shapes added) the earliest
    that passed through the program is reported; an error raised while handling another is not followed, so it is
    never hidden behind the one before it."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frames = list(traceback.walk_tb(error.__traceback__))
        for index, (frame, _) in enumerate(frames):
            module = frame.f_globals.get("__name__")
            if isinstance(module, str) and module.startswith(PROGRAM_MODULE):
                kind = module[len(PROGRAM_MODULE):].split("_")[0]
                stack = "".join(traceback.StackSummary.extract(frames[index:]).format())
                what = traceback.format_exception_only(error)[-1].strip()  # survives a broken __str__
                found = stack, f"the {kind} program {frame.f_code.co_filename} raised {what}"
                break
        error = error.__cause__
    return found
