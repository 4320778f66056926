"""The one exception type for problems the user can fix.

Raised where the problem is found (bad input, bad flags, missing files), caught once in the CLI layer,
printed as ``error: <message>`` on stderr with exit code 2. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message names the thing, the value seen and the fix."""
