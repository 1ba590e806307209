"""The token secret: `sk-wt-` + 32 base62 characters (190 bits from `secrets`), stored only as a SHA-256 digest.

A plain SHA-256 is enough for lookup: the secret is random with 190 bits, so there is nothing to brute-force, and
unlike an HMAC under SECRET_KEY it survives a rotation of SECRET_KEY.
"""

import hashlib
import re
import secrets
import string

PREFIX = "sk-wt-"
BODY_LENGTH = 32
ALPHABET = string.ascii_letters + string.digits
DISPLAY_PREFIX_LENGTH = len(PREFIX) + 6  # `sk-wt-AbC123`: enough to recognise, far too little to guess

TOKEN_RE = re.compile(rf"{re.escape(PREFIX)}[A-Za-z0-9]{{{BODY_LENGTH}}}")


def generate() -> str:
    return PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))


def is_well_formed(value: str) -> bool:
    return bool(TOKEN_RE.fullmatch(value))


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def display_prefix(value: str) -> str:
    return value[:DISPLAY_PREFIX_LENGTH]
