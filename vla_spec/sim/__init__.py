"""The LIBERO simulator side of the spine: suites and protocol constants (:mod:`.suites`), the
environment factory (:mod:`.env`), the one place where observations and actions cross between
policy and simulator (:mod:`.interface`), a scripted privileged expert (:mod:`.expert`), and
compact fingerprints of simulator states for goldens (:mod:`.fingerprint`).

Importing this package is cheap; LIBERO/robosuite are imported only when an environment or a
suite's task list is first needed.
"""


class PolicySetupError(ValueError):
    """A policy parameter that cannot work here, found before any episode runs; ``option`` names
    the parameter (``"device"``, ``"unnorm_key"``...), as the command line's options do."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
