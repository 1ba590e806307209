"""The token screens and the minting-key screens, registered when the admin discovers this package."""

from .minting_keys import MintingKeyAdmin
from .tokens import TokenAdmin

__all__ = ["MintingKeyAdmin", "TokenAdmin"]
