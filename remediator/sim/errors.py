"""The simulated cluster's own errors."""


class SimError(RuntimeError):
    """The simulated cluster cannot do what was asked; the message says what to do."""
