"""TOTP second factor (RFC 6238 over RFC 4226), with the standard library's hmac.

Proxmox's TFA API takes the secret as an `otpauth://totp/...?secret=BASE32`
URI (what authenticator apps scan) and a current code proving the user's app
has it. Entries live in the user's record under `tfa`; a code is accepted
once (the last used time step is remembered against replay), within one step
of clock drift either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import parse_qs, quote, urlsplit

from corral.cluster.errors import ParamError

STEP = 30
DIGITS = 6
DRIFT = 1  # steps accepted before and after now
ALGORITHMS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


def new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def uri(secret: str, account: str, issuer: str = "corral") -> str:
    label = quote(f"{issuer}:{account}")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer)}&digits={DIGITS}&period={STEP}"


def parse_uri(text: str) -> dict[str, object]:
    """{secret, digits, period, algorithm} of an otpauth://totp URI (ParamError `totp`)."""
    parts = urlsplit(text)
    if parts.scheme != "otpauth" or parts.netloc != "totp":
        raise ParamError.one("totp", "expected an otpauth://totp/... URI")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    secret = query.get("secret", "").upper().replace(" ", "")
    try:
        key = _key(secret)
    except ValueError:
        raise ParamError.one("totp", "the secret is not base32") from None
    if len(key) < 10:
        raise ParamError.one("totp", "the secret is shorter than 80 bits")
    algorithm = query.get("algorithm", "SHA1").upper()
    if algorithm not in ALGORITHMS:
        raise ParamError.one("totp", f"unsupported algorithm '{algorithm}'")
    try:
        digits, period = int(query.get("digits", DIGITS)), int(query.get("period", STEP))
    except ValueError:
        raise ParamError.one("totp", "digits and period must be numbers") from None
    if digits not in (6, 7, 8) or not 10 <= period <= 300:
        raise ParamError.one("totp", "digits must be 6-8 and period 10-300 s")
    return {"secret": secret, "digits": digits, "period": period, "algorithm": algorithm}


def _key(secret: str) -> bytes:
    padded = secret + "=" * (-len(secret) % 8)
    try:
        return base64.b32decode(padded, casefold=True)
    except (ValueError, TypeError) as err:
        raise ValueError(str(err)) from None


def code(entry: dict[str, object], step: int) -> str:
    """The code of time step `step` (HOTP of the step counter)."""
    digest = ALGORITHMS[str(entry.get("algorithm", "SHA1"))]
    digits = int(entry.get("digits", DIGITS))  # type: ignore[call-overload]
    mac = hmac.new(_key(str(entry["secret"])), struct.pack(">Q", step), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def current_step(entry: dict[str, object], now: float | None = None) -> int:
    period = int(entry.get("period", STEP))  # type: ignore[call-overload]
    return int((time.time() if now is None else now) // period)


def match(entry: dict[str, object], given: str, now: float | None = None) -> int | None:
    """The time step `given` is the code of (within the drift), else None."""
    given = given.strip()
    if not given.isdigit():
        return None
    here = current_step(entry, now)
    for step in range(here - DRIFT, here + DRIFT + 1):
        if hmac.compare_digest(code(entry, step), given):
            return step
    return None
