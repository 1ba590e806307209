"""Upstream API keys at rest: MultiFernet over ENCRYPTION_KEYS (newest first), so keys can be rotated."""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class KeyDecryptionError(Exception):
    """A stored key cannot be decrypted with any of ENCRYPTION_KEYS (the key it was written with was dropped)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _current().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise KeyDecryptionError("the stored upstream key cannot be decrypted with ENCRYPTION_KEYS") from None


def reencrypt(ciphertext: str) -> str:
    """The same plaintext, encrypted under the newest key."""
    try:
        return _current().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise KeyDecryptionError("the stored upstream key cannot be decrypted with ENCRYPTION_KEYS") from None


def is_current(ciphertext: str) -> bool:
    """Whether the ciphertext was written with the newest key."""
    keys = settings.ENCRYPTION_KEYS
    try:
        Fernet(keys[0].encode()).decrypt(ciphertext.encode())
    except InvalidToken:
        return False
    return True
