"""The one exception type for problems the user can fix.

Raised where the problem is found (bad input, bad flags, missing files), caught once in the CLI layer,
printed as ``error: <message>`` on stderr with exit code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Mapping


class UserError(Exception):
    """A problem the user can fix: the message names the thing, the value seen and the fix."""


class OptionError(UserError):
    """A problem with an option's value, found below the steps (the data layer), which knows options
    only by their Config field names: the message marks each as ``{name}``. Read from Python it shows
    the bare field names (``max_length 1 leaves no room ...``); the CLI words them as the command's
    flags (``--max-length 1 leaves no room ...``) with :meth:`worded`."""

    def __init__(self, template: str, *options: str):
        self.template, self.options = template, options
        super().__init__(self.worded({}))

    def worded(self, names: Mapping[str, str]) -> str:
        """The message with each option named as `names` says (its field name when absent)."""
        text = self.template
        for option in self.options:
            text = text.replace("{" + option + "}", names.get(option, option))
        return text
