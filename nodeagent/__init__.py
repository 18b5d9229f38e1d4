"""The Shoal node agent. Task code may call ``nodeagent.progress(fraction, message)``."""

from nodeagent.worker import progress

__all__ = ["progress"]
