"""Text model-pull did not write, made safe to print: one line, cut, secrets masked.

Servers, listings and files are hostile input. Whatever of theirs reaches a terminal or the
journal (an error message from the Hub, a file name, a header) goes through `clean`: control,
bidirectional and other invisible characters become '?', runs of white space one space, the
length is cut, and every secret model-pull knows of (`add_secret`: the HF token) and anything
shaped like a Hugging Face token or a bearer credential is replaced by `***`. `mask` alone does
the last part; `cli` passes every line it prints on stderr through it.
"""

from __future__ import annotations

import re
import threading
import unicodedata

MASK = "***"
SERVER_TEXT_MAX = 200  # characters of a server's message that are printed
LINE_MAX = 2000  # characters of any one line model-pull prints on stderr

_lock = threading.Lock()
_secrets: set[str] = set()
# Hugging Face user access tokens (https://huggingface.co/docs/hub/security-tokens) and what an
# echoed Authorization header looks like.
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{6,}|(?<=Bearer )\S+|(?<=bearer )\S+|(?<=Token )\S+")
# Bidirectional controls and other characters that change how the text around them reads.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def add_secret(secret: str) -> None:
    """Never print `secret` (nor a line of it, for a value that has several)."""
    with _lock:
        for part in [secret, *secret.splitlines()]:
            part = part.strip()
            if len(part) >= 4:
                _secrets.add(part)


def mask(text: str) -> str:
    """`text` with every known secret and token-shaped word replaced by ***."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return _TOKEN_RE.sub(MASK, text)


def unsafe_char(c: str) -> bool:
    """A character that must not reach a terminal as it is: control, format (bidirectional
    overrides, zero-width), surrogate, private-use, unassigned, line or paragraph separator."""
    return unicodedata.category(c) in _INVISIBLE_CATEGORIES


def clean(text: str, limit: int = SERVER_TEXT_MAX) -> str:
    """One printable line of at most `limit` characters, secrets masked."""
    text = mask(text)
    text = "".join("?" if unsafe_char(c) and not c.isspace() else c for c in text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: max(limit - 3, 0)].rstrip() + "..."
    return text


def name(value: str, limit: int = 120) -> str:
    """A name from a listing or a server, quoted for a message: repr-style escapes for anything
    unsafe, cut to `limit` characters."""
    shown = "".join(c if not unsafe_char(c) else f"\\u{ord(c):04x}" for c in value)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return "'" + mask(shown).replace("'", "\\'") + "'"
