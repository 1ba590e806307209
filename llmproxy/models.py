"""Where Django looks for this app's models. Its one model is the security event (`llmproxy.security.models`)."""

from .security.models import SecurityEvent

__all__ = ["SecurityEvent"]
