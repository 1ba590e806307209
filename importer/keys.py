"""The Go LLM Proxy's encryption of upstream keys at rest, undone: AES-256-GCM under its ENCRYPTION_KEY.

Its format: `enc:v1:` + base64 (standard alphabet, padded) of a 12-byte random nonce, the ciphertext and the 16-byte
tag, with no associated data. A value without the prefix is a plaintext key (it stored plaintext without an
ENCRYPTION_KEY, and both kinds may sit side by side). Its ENCRYPTION_KEY is the standard base64 of exactly 32 bytes.
"""

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
NONCE_BYTES = 12
TAG_BYTES = 16


class EncryptionKeyError(Exception):
    """The ENCRYPTION_KEY cannot be had or is not one: a one-line reason that never holds the key."""


class UndecryptableKey(Exception):
    """A stored upstream key that this ENCRYPTION_KEY (or none) cannot decrypt: why, never the value."""


def encryption_key(*, env: str | None = None, file: str | None = None) -> bytes | None:
    """The original's ENCRYPTION_KEY, from the environment variable named `env` or from `file` (never from a command
    line argument, which any user of the machine could read in the process list). None when neither is given."""
    if env is not None:
        text = os.environ.get(env)
        if not text:
            raise EncryptionKeyError(f"the environment variable {env} is not set or empty")
        where = f"the environment variable {env}"
    elif file is not None:
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise EncryptionKeyError(f"cannot read {file}: {reason}") from None
        where = file
    else:
        return None
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        message = f"{where} does not hold base64 (the original's ENCRYPTION_KEY is base64 of 32 bytes)"
        raise EncryptionKeyError(message) from None
    if len(key) != 32:
        raise EncryptionKeyError(f"{where} holds {len(key)} bytes, not the 32 of an AES-256 key")
    return key


def is_encrypted(stored: str) -> bool:
    return len(stored) > len(PREFIX) and stored.startswith(PREFIX)


def decrypt(stored: str, key: bytes | None) -> str:
    """The plaintext upstream key of a stored value (a plaintext one as it is)."""
    if not is_encrypted(stored):
        return stored
    if key is None:
        raise UndecryptableKey(
            "its upstream key is encrypted (enc:v1:) and no --source-encryption-key-env or "
            "--source-encryption-key-file was given"
        )
    try:
        data = base64.b64decode(stored[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise UndecryptableKey("its encrypted upstream key is not valid base64") from None
    if len(data) < NONCE_BYTES + TAG_BYTES + 1:
        raise UndecryptableKey("its encrypted upstream key is too short to be one")
    try:
        plaintext = AESGCM(key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
    except InvalidTag:
        raise UndecryptableKey("its upstream key cannot be decrypted with the given ENCRYPTION_KEY") from None
    try:
        return plaintext.decode()
    except UnicodeDecodeError:
        raise UndecryptableKey("its decrypted upstream key is not text") from None
