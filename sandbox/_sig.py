"""``signal``'s functions and constants as plain ints, without its enum wrappers.

The ``signal`` module wraps ``_signal`` in ``IntEnum`` classes, and importing ``enum`` is a
measurable part of ``sandbox run``'s start-up; the run path needs only the numbers.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import *  # noqa: F403 - the same names, typed
else:
    from _signal import *  # noqa: F403
