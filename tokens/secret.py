"""The secrets this product issues, and how a caller presents one.

A token is `sk-wt-` + 32 base62 characters (190 bits from `secrets`); a minting key is `mk-` + 40 (238 bits). Each is
shown once and stored only as a SHA-256 digest plus a display prefix. A plain SHA-256 is enough for lookup: the
secret is random with 190 bits or more, so there is nothing to brute-force, and unlike an HMAC under SECRET_KEY it
survives a rotation of SECRET_KEY.
"""

import hashlib
import re
import secrets
import string
from dataclasses import dataclass, field

ALPHABET = string.ascii_letters + string.digits
DISPLAY_BODY_LENGTH = 6  # `sk-wt-AbC123`: enough to recognise, far too little to guess


@dataclass(frozen=True)
class SecretFormat:
    prefix: str
    body_length: int
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(rf"{re.escape(self.prefix)}[A-Za-z0-9]{{{self.body_length}}}")
        object.__setattr__(self, "pattern", pattern)

    @property
    def display_length(self) -> int:
        return len(self.prefix) + DISPLAY_BODY_LENGTH

    def generate(self) -> str:
        return self.prefix + "".join(secrets.choice(ALPHABET) for _ in range(self.body_length))

    def is_well_formed(self, value: str) -> bool:
        return bool(self.pattern.fullmatch(value))

    def display_prefix(self, value: str) -> str:
        return value[: self.display_length]


TOKEN = SecretFormat("sk-wt-", 32)
MINTING_KEY = SecretFormat("mk-", 40)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def display_prefix(value: str) -> str:
    """What may be shown of any presented secret (ours, or an upstream key pasted by mistake)."""
    return TOKEN.display_prefix(value)


def bearer(authorization: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header value, or None."""
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential
