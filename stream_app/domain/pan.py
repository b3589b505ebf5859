"""Card-number (PAN) tokenization: pure functions, no I/O except reading a key file.

A card id that looks like a raw card number is replaced at ingress by a keyed token, so no raw number
reaches a table, a topic or a log. What "looks like a raw card number" means, in one place:

* 13 to 19 ASCII digits, alone or in groups separated by single spaces or dashes
  (``4111 1111 1111 1111``, ``4111-1111-1111-1111``), and
* passing the Luhn check, which every issued card number does. Requiring it leaves 9 in 10 other long
  numbers alone (numeric ids, order numbers), which matters for the dead-letter records, where any
  digit run of any field is masked; a Luhn-invalid number is not a valid card number.
* 13-digit numbers beginning with 1 are not treated as card numbers: no scheme issues them (13-digit
  numbers are legacy Visa, 4…), and they are epoch milliseconds from 2001 to 2286, i.e. timestamps.

In bytes (dead letters), a number counts when it stands alone: digits glued to it make a longer
number, which is not masked (a 20-digit id is not a card number).

The token is ``tok_`` + the first 32 hex digits (128 bits) of HMAC-SHA256(key, digits without
separators): stable across workers and restarts (the per-card state is keyed by it), the same for every
spelling of one number, and not reversible without the key. A new key gives new tokens, i.e. new card
states. Without a key nothing is tokenized: :class:`PanTokenizer` ``.token`` returns ``None`` and the
ingress parser refuses such card ids (reason ``raw_pan``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

TOKEN_PREFIX: Final = "tok_"
MIN_KEY_BYTES: Final = 16
_DOMAIN: Final = b"stream_app.pan.v1:"
_CARD_ID_RE = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
#: Maximal runs of ASCII digit groups separated by one space or dash, in bytes (dead letters, parked labels).
_RUN_RE = re.compile(rb"(?<![0-9])[0-9]+(?:[ -][0-9]+)*")
_SEP_RE = re.compile(rb"[ -]")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_pan_digits(digits: str) -> bool:
    """``digits`` (ASCII digits only, no separators) is a plausible card number."""
    n = len(digits)
    return 13 <= n <= 19 and not (n == 13 and digits[0] == "1") and luhn_ok(digits)


def pan_digits(value: str) -> str | None:
    """The digits of ``value`` if the whole value (surrounding blanks ignored) looks like a card
    number, else ``None``."""
    value = value.strip()
    if len(value) > 40 or not _CARD_ID_RE.fullmatch(value):
        return None
    digits = value.replace(" ", "").replace("-", "")
    return digits if is_pan_digits(digits) else None


def is_token(card_id: str) -> bool:
    return card_id.startswith(TOKEN_PREFIX)


def mask_digits(digits: str) -> str:
    """Without a key: all but the last four digits hidden (what a receipt shows)."""
    return "*" * (len(digits) - 4) + digits[-4:]


def _pan_spans(run: bytes) -> list[tuple[int, int, str]]:
    """(start, end, digits) of the card numbers inside one run of digit groups: the longest span of
    whole groups with 13–19 digits passing the check, leftmost first, not overlapping."""
    groups = [(m.start(), m.end()) for m in re.finditer(rb"[0-9]+", run)]
    spans: list[tuple[int, int, str]] = []
    i = 0
    while i < len(groups):
        best: tuple[int, str] | None = None
        digits = ""
        for j in range(i, len(groups)):
            digits += run[groups[j][0]:groups[j][1]].decode()
            if len(digits) > 19:
                break
            if is_pan_digits(digits):
                best = (j, digits)
        if best is None:
            i += 1
            continue
        j, digits = best
        spans.append((groups[i][0], groups[j][1], digits))
        i = j + 1
    return spans


def mask_bytes(data: bytes, replace: Callable[[str], str]) -> bytes:
    """Every card number in ``data`` (any field, any encoding that writes digits as ASCII) replaced by
    ``replace(digits)``; the other bytes are kept as they are."""
    if len(data) < 13:
        return data

    def run(m: re.Match[bytes]) -> bytes:
        text = m.group()
        if len(text) < 13:
            return text
        spans = _pan_spans(text)
        if not spans:
            return text
        out, last = [], 0
        for start, end, digits in spans:
            out += [text[last:start], replace(digits).encode()]
            last = end
        out.append(text[last:])
        return b"".join(out)

    return _RUN_RE.sub(run, data)


def _mask_text(value: str, replace: Callable[[str], str]) -> str:
    if not any("0" <= ch <= "9" for ch in value):
        return value
    return mask_bytes(value.encode(), replace).decode()


def _mask_json(value: Any, replace: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return _mask_text(value, replace)
    if isinstance(value, int) and not isinstance(value, bool) and is_pan_digits(str(abs(value))):
        return replace(str(abs(value)))  # a card number written as a JSON number
    if isinstance(value, dict):
        return {_mask_text(k, replace): _mask_json(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v, replace) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class PanTokenizer:
    """Tokens under one key; ``key=None``: no tokens (PAN-like card ids are refused, numbers masked)."""

    key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) < MIN_KEY_BYTES:
            raise ValueError(f"the PAN key must be at least {MIN_KEY_BYTES} bytes")

    @classmethod
    def from_settings(cls, settings: Any) -> PanTokenizer:
        """``STREAM_APP_PAN_KEY``, or the contents of ``STREAM_APP_PAN_KEY_FILE`` (trailing newline
        stripped); neither: no key."""
        if settings.pan_key_file:
            try:
                key = Path(settings.pan_key_file).read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise ValueError(
                    f"STREAM_APP_PAN_KEY_FILE: cannot read {settings.pan_key_file}: {exc.strerror}") from None
            if not key:
                raise ValueError(f"STREAM_APP_PAN_KEY_FILE: {settings.pan_key_file} is empty")
        else:
            key = settings.pan_key.encode()
        return cls(key or None)

    @property
    def keyed(self) -> bool:
        return self.key is not None

    def token(self, digits: str) -> str | None:
        """The token of a card number (digits only); ``None`` without a key."""
        if self.key is None:
            return None
        mac = hmac.new(self.key, _DOMAIN + digits.encode(), hashlib.sha256).hexdigest()
        return TOKEN_PREFIX + mac[:32]

    def _replacement(self, digits: str) -> str:
        return self.token(digits) or mask_digits(digits)

    def clean(self, raw: bytes, canonical: Callable[[], bytes]) -> bytes:
        """Bytes of a valid event that travel on (re-keyed, parked): ``raw`` itself when it holds no card
        number, else ``canonical()`` — the parsed event re-encoded, its card id a token — so that no
        card number travels on in a shadowed duplicate key or an extra field."""
        return raw if self.mask(raw) == raw else canonical()

    def mask_json(self, value: Any) -> Any:
        """A decoded JSON value with every card number in its strings, keys and integers replaced (what
        ``stream-app tail`` shows); floats are left alone, so a long fraction is never taken for one."""
        return _mask_json(value, self._replacement)

    def mask(self, data: bytes) -> bytes:
        """``data`` with every card number replaced by its token (by a masked form without a key).

        For bytes kept for people or replay (dead letters): digits written as JSON escapes
        (``\\u0034…``) are found too, by decoding; then the re-encoded JSON is returned instead."""
        masked = mask_bytes(data, self._replacement)
        if b"\\u" in masked:
            try:
                obj = orjson.loads(masked)
            except ValueError:
                return masked
            clean = _mask_json(obj, self._replacement)
            if clean != obj:
                return orjson.dumps(clean)
        return masked
