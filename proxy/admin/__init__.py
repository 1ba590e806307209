"""The proxy's screens, registered when the admin discovers this package: the request log and the model prices."""

from .prices import ModelPriceAdmin
from .requests import UsageRecordAdmin

__all__ = ["ModelPriceAdmin", "UsageRecordAdmin"]
