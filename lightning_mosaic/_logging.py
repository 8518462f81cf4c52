"""Logging for the package: one ``lightning_mosaic`` logger, and warnings said once."""

from __future__ import annotations

import logging

_root = logging.getLogger()
logger = logging.getLogger("lightning_mosaic")
logger.setLevel(logging.INFO)
# Like Lightning's own logger: print INFO to the console unless the application configured logging.
if not _root.hasHandlers():
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False

_said: set[str] = set()


def get_logger(name: str) -> logging.Logger:
    """The package logger for module ``name`` (a child of ``lightning_mosaic``)."""
    if name == "lightning_mosaic" or name.startswith("lightning_mosaic."):
        return logging.getLogger(name)
    return logger.getChild(name)


def warn_once(log: logging.Logger, key: str, message: str) -> bool:
    """Log ``message`` as a warning the first time ``key`` is seen in this process; True if logged."""
    if key in _said:
        return False
    _said.add(key)
    log.warning(message)
    return True
