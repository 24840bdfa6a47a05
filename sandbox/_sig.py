"""``signal``'s functions and constants as plain ints, without its enum wrappers.

The ``signal`` module wraps ``_signal`` in ``IntEnum`` classes, and importing ``enum`` is a
measurable part of ``sandbox run``'s start-up; the run path needs only the numbers.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import *  # noqa: F403 - the same names, typed
else:
    from _signal import *  # noqa: F403


def kill_and_reap(pid: int, sig: int) -> None:
    """Send ``sig`` to our child ``pid`` and wait for it, whichever of the two already
    happened."""
    import os

    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has ended, left unreaped (a zombie, or already reaped)."""
    import os

    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
