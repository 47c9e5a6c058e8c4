"""Encryption at rest for secrets Signalbox must be able to read back (named secrets,
webhook secrets).

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`, through MultiFernet so the key can
be rotated: SIGNALBOX_ENCRYPTION_KEY holds one key or several, comma-separated, newest
first. New values are encrypted with the first; any listed key decrypts. Without it the key
is derived from Django's SECRET_KEY. Rotation (docs/security.md): put a new key first, run
`manage.py secrets rotate-key` (re-encrypts every stored value with it), then drop the old.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ["InvalidToken", "decrypt", "encrypt", "reencrypt", "reset"]


@functools.cache
def _fernet() -> MultiFernet:
    configured = os.environ.get("SIGNALBOX_ENCRYPTION_KEY", "")
    keys = [k.strip() for k in configured.split(",") if k.strip()]
    if not keys:
        digest = hashlib.sha256(f"signalbox-secrets:{settings.SECRET_KEY}".encode()).digest()
        keys = [base64.urlsafe_b64encode(digest).decode()]
    return MultiFernet([Fernet(key.encode()) for key in keys])


def reset() -> None:
    """Forget the keys read so far (after SIGNALBOX_ENCRYPTION_KEY changed in-process)."""
    _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def reencrypt(token: str) -> str:
    """The same plaintext encrypted with the newest key (raises InvalidToken when no
    configured key can read it)."""
    return _fernet().rotate(token.encode()).decode()
