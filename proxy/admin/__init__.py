"""The proxy's screens, registered when the admin discovers this package: the request log."""

from .requests import UsageRecordAdmin

__all__ = ["UsageRecordAdmin"]
