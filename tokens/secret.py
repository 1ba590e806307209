"""The secrets this product issues, and how a caller presents one.

A token is `sk-wt-` + 32 base62 characters (190 bits from `secrets`); a minting key is `mk-` + 40 (238 bits). Each is
shown once and stored only as a SHA-256 digest plus a display prefix. A plain SHA-256 is enough for lookup: the
secret is random with 190 bits or more, so there is nothing to brute-force, and unlike an HMAC under SECRET_KEY it
survives a rotation of SECRET_KEY.

The Go LLM Proxy's tokens (`sk-` + 22 base64url characters) are never issued here; those imported from it
(`manage.py import_llm_proxy`) are accepted where their digest is stored. It looked them up by the same plain SHA-256
(when it hashed them at all), so its stored lookup keys are our digests as they are.
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
    characters: str = "A-Za-z0-9"  # the body's, as a regex character class
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(rf"{re.escape(self.prefix)}[{self.characters}]{{{self.body_length}}}")
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
# The Go LLM Proxy's (a UUIDv7, 16 bytes in base64url): only ever imported, never generated.
ORIGINAL_TOKEN = SecretFormat("sk-", 22, characters="A-Za-z0-9_-")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def imported_secret(stored: str) -> tuple[str, str] | None:
    """(digest, display prefix) of a token as the Go LLM Proxy stored it: the token itself, or (with its
    ENCRYPTION_KEY set) its SHA-256 in hex, our digest as it is, of which only `sk-` can be shown. None for anything
    else: no client could present it here."""
    if ORIGINAL_TOKEN.is_well_formed(stored):
        return digest(stored), ORIGINAL_TOKEN.display_prefix(stored)
    if re.fullmatch(r"[0-9a-fA-F]{64}", stored):
        return stored.lower(), ORIGINAL_TOKEN.prefix
    return None


def display_prefix(value: str) -> str:
    """What may be shown of any presented secret (ours, an imported one, or an upstream key pasted by mistake)."""
    if not value.startswith(TOKEN.prefix) and ORIGINAL_TOKEN.is_well_formed(value):
        return ORIGINAL_TOKEN.display_prefix(value)
    return TOKEN.display_prefix(value)


def bearer(authorization: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header value, or None."""
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential
