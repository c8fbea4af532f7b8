"""kopf handlers of the operator. Thin by design: each one delegates to a pure builder or status function.

kopf calls these on its event loop thread.
"""

import logging

import kopf

from tieredkv_operator import __version__

log = logging.getLogger(__name__)


@kopf.on.startup()
def announce(settings: kopf.OperatorSettings, **_: object) -> None:
    """Log the one start-up line every tieredkv process writes (version, config summary)."""
    settings.posting.enabled = True
    log.info("tieredkv-operator %s starting (handlers: startup only)", __version__)
