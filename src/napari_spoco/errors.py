"""The one exception type users see: its message says what is wrong and what to do."""


class SpocoError(ValueError):
    """Bad input or a state the user can fix; the CLI and GUI show only its message."""
