"""Replace secret values in step output, in whole strings and in streams of chunks.

A `SecretMasker` compiles the secrets of one run, and the common ways in which a
program prints them, into one regular expression, tried longest form first. `mask`
and `mask_bytes` mask a whole string. For output that arrives in chunks, each stream
gets its own `MaskingStream` from `stream()` or `byte_stream()`. Its `feed` holds back
only the shortest tail that could still start a secret, so a secret split across
chunks at any point is masked.

The executor should mask in this order, with one text stream and one byte stream
per output stream:

    masked = text_stream.feed(piece.body)
    if piece.continued:
        masked += CONTINUATION
    raw = byte_stream.feed(piece.raw)

`piece.body` leaves out the continuation mark that `OutputCapture` appends to a piece
cut from a long line, because the mark inside a secret would hide the secret from the
masker. `CapturedText.raw` contains the unmasked bytes, so it must go through
`mask_bytes` or a byte stream before it is stored. The text stream and the byte
stream hold back different tails, so the masked text and masked raw of one piece may
be offset by at most `max_hold` characters or bytes. Each joined stream is complete.
"""

import json
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import AnyStr, Final, Generic
from urllib.parse import quote, quote_plus

DEFAULT_MASK: Final = "********"

DEFAULT_MIN_LENGTH: Final = 4
"""Length below which a secret value is not masked.

A short value such as "1", "true" or "dev" also occurs in ordinary output, so masking
it would hide unrelated text. The masks would also show where the value occurs, and a
value that short can be guessed, so masking it would protect little.
"""


def secret_forms(secrets: Iterable[str], min_length: int) -> list[str]:
    """Return the printed forms of the secrets to mask, longest first.

    Each secret of at least `min_length` characters contributes itself, its
    JSON-escaped form (with and without escaped non-ASCII), its percent-encoded forms
    (as in the user part of a URL, in a path, and in form data), and its shell-quoted
    forms when it contains a single quote. A multi-line secret also contributes its
    CRLF form (a terminal's output) and each of its lines without surrounding
    whitespace. Forms shorter than `min_length` are left out.

    NOTE: matching is exact, so lower-case percent escapes, base64 and other
    encodings of a secret are not masked.
    """
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= min_length:
            forms.update(_printed_forms(secret))
    kept = (form for form in forms if len(form) >= min_length)
    return sorted(kept, key=lambda form: (-len(form), form))


def _printed_forms(secret: str) -> set[str]:
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret, safe=""),
    }
    if "'" in secret:
        forms.add(shlex.quote(secret))
        # Inside single quotes, bash's `set -x` writes a quote as '\''.
        forms.add(secret.replace("'", "'\\''"))
    if "\n" in secret or "\r" in secret:
        forms.add(secret.replace("\r\n", "\n").replace("\n", "\r\n"))
        forms.update(line.strip() for line in secret.splitlines())
    return forms


class _Matcher(Generic[AnyStr]):
    """Compiled forms of the secrets, for either `str` or `bytes`."""

    def __init__(
        self,
        forms: Sequence[AnyStr],
        pattern: re.Pattern[AnyStr] | None,
        starts: re.Pattern[AnyStr] | None,
        mask: AnyStr,
    ) -> None:
        self.pattern: re.Pattern[AnyStr] | None = pattern
        # Zero-width matches at each position where a form of two or more units
        # could start, so that only those positions get the slow prefix check.
        self.starts: re.Pattern[AnyStr] | None = starts
        self.mask: AnyStr = mask
        self.empty: AnyStr = mask[:0]
        self.max_length: int = max(map(len, forms), default=0)
        self.forms_by_head: dict[AnyStr, list[AnyStr]] = {}
        for form in forms:
            if len(form) >= 2:
                self.forms_by_head.setdefault(form[:1], []).append(form)

    def mask_all(self, data: AnyStr) -> AnyStr:
        if self.pattern is None:
            return data
        return self.pattern.sub(lambda _: self.mask, data)

    def split_settled(self, buffer: AnyStr) -> tuple[AnyStr, AnyStr]:
        """Split `buffer` into its settled part, masked, and the held rest.

        The settled part is what later data cannot change. The rest starts at the
        first position where the buffer's end is a proper prefix of a form, because
        only there could more data complete a match. At every earlier position, the
        longest-first alternation makes the same choice on the buffer as on the
        whole output.
        """
        if self.pattern is None:
            return buffer, self.empty

        parts: list[AnyStr] = []
        position = 0
        hold = self._first_open_prefix(buffer, 0)
        while True:
            match = self.pattern.search(buffer, position)
            if match is None or match.start() >= hold:
                break
            parts += (buffer[position : match.start()], self.mask)
            position = match.end()
            if position > hold:
                hold = self._first_open_prefix(buffer, position)

        parts.append(buffer[position:hold])
        return self.empty.join(parts), buffer[hold:]

    def _first_open_prefix(self, buffer: AnyStr, start: int) -> int:
        """Return the first position from `start` that starts an open prefix.

        An open prefix is a tail of `buffer` that is a proper prefix of a form.
        Without one, the result is the buffer's length.
        """
        size = len(buffer)
        if self.starts is None:
            return size
        start = max(start, size - self.max_length + 1)
        for candidate in self.starts.finditer(buffer, start):
            position = candidate.start()
            tail = buffer[position:]
            for form in self.forms_by_head.get(buffer[position : position + 1], ()):
                if len(form) > len(tail) and form.startswith(tail):
                    return position
        return size


def _compile_text(forms: Sequence[str], mask: str) -> _Matcher[str]:
    if not forms:
        return _Matcher(forms, None, None, mask)
    return _Matcher(
        forms,
        re.compile(_alternation(forms)),
        _compile_starts(forms, lambda source: source),
        mask,
    )


def _compile_bytes(forms: Sequence[str], mask: str) -> _Matcher[bytes]:
    encoded = [form.encode("utf-8") for form in forms]
    if not encoded:
        return _Matcher(encoded, None, None, mask.encode("utf-8"))
    # Latin-1 maps each byte to one character, so a pattern written for these
    # characters and encoded back to Latin-1 matches the exact bytes.
    as_latin1 = [form.decode("latin-1") for form in encoded]
    pattern = re.compile(_alternation(as_latin1).encode("latin-1"))
    starts = _compile_starts(as_latin1, lambda source: source.encode("latin-1"))
    return _Matcher(encoded, pattern, starts, mask.encode("utf-8"))


def _alternation(forms: Iterable[str]) -> str:
    return "|".join(re.escape(form) for form in forms)


def _compile_starts(
    forms: Sequence[str], to_source: Callable[[str], AnyStr]
) -> re.Pattern[AnyStr] | None:
    heads = {re.escape(form[:2]) for form in forms if len(form) >= 2}
    if not heads:
        return None
    lone = {re.escape(form[:1]) + r"\Z" for form in forms if len(form) >= 2}
    alternatives = sorted(heads) + sorted(lone)
    return re.compile(to_source("(?=" + "|".join(alternatives) + ")"))


class MaskingStream(Generic[AnyStr]):
    """Streaming state of one output stream: the tail held back so far.

    `feed` returns what can be released now, with every secret masked, and holds
    back at most `max_hold` characters (or bytes): only the shortest tail that could
    still become a secret. The output of all `feed` calls and a final `flush`,
    joined, equals `mask` of the whole input, wherever the chunk boundaries fall.
    """

    def __init__(self, matcher: _Matcher[AnyStr]) -> None:
        self._matcher: _Matcher[AnyStr] = matcher
        self._held: AnyStr = matcher.empty

    @property
    def held(self) -> int:
        """Length of the tail held back, in characters or bytes."""
        return len(self._held)

    def feed(self, data: AnyStr) -> AnyStr:
        """Add a chunk and return the masked output that is settled."""
        released, self._held = self._matcher.split_settled(self._held + data)
        return released

    def flush(self) -> AnyStr:
        """Release the held tail at the end of the stream, masked where needed.

        A tail that is only the start of a secret is released as is.
        """
        held, self._held = self._held, self._matcher.empty
        return self._matcher.mask_all(held)


class SecretMasker:
    """Masks of the secrets of one run, for whole strings and for streams.

    Values shorter than `min_length` are not masked (see DEFAULT_MIN_LENGTH). The
    masker's own `feed` and `flush` use one built-in stream. Use `stream()` or
    `byte_stream()` for each further stream, because stdout and stderr must not
    share a held tail.
    """

    def __init__(
        self,
        secrets: Iterable[str],
        mask: str = DEFAULT_MASK,
        min_length: int = DEFAULT_MIN_LENGTH,
    ) -> None:
        if min_length < 1:
            raise ValueError(
                f"invalid min_length {min_length!r}: use at least 1 character"
            )
        self._forms = tuple(secret_forms(secrets, min_length))
        self._text = _compile_text(self._forms, mask)
        self._bytes = _compile_bytes(self._forms, mask)
        self._default = MaskingStream(self._text)

    @property
    def forms(self) -> tuple[str, ...]:
        """Printed forms that are masked, longest first."""
        return self._forms

    @property
    def max_hold(self) -> int:
        """Maximum tail in characters that a text stream holds back."""
        return max(self._text.max_length - 1, 0)

    def mask(self, text: str) -> str:
        """Return `text` with every form of every secret replaced by the mask."""
        return self._text.mask_all(text)

    def mask_bytes(self, raw: bytes) -> bytes:
        """Return `raw` with the UTF-8 encoding of every form replaced by the mask."""
        return self._bytes.mask_all(raw)

    def stream(self) -> MaskingStream[str]:
        """Return a new, independent streaming state for text."""
        return MaskingStream(self._text)

    def byte_stream(self) -> MaskingStream[bytes]:
        """Return a new, independent streaming state for raw bytes."""
        return MaskingStream(self._bytes)

    def feed(self, text: str) -> str:
        """Feed the built-in text stream; see `MaskingStream.feed`."""
        return self._default.feed(text)

    def flush(self) -> str:
        """Flush the built-in text stream; see `MaskingStream.flush`."""
        return self._default.flush()
