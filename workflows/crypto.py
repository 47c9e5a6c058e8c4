"""Encryption at rest for secrets Signalbox must be able to read back (webhook secrets).

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`. The key comes from
SIGNALBOX_ENCRYPTION_KEY, else it is derived from Django's SECRET_KEY.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os

from cryptography.fernet import Fernet
from django.conf import settings


@functools.cache
def _fernet() -> Fernet:
    configured = os.environ.get("SIGNALBOX_ENCRYPTION_KEY")
    if configured:
        return Fernet(configured.encode())
    digest = hashlib.sha256(f"signalbox-secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()
