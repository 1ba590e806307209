"""This app's admin screens, registered when the admin discovers this module: the audit log and the security events."""

from .audit.admin import AuditLogEntryAdmin
from .security.admin import SecurityEventAdmin

__all__ = ["AuditLogEntryAdmin", "SecurityEventAdmin"]
