"""Tests of secret masking for whole strings and for streams of chunks."""

import itertools
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.executor.capture import CONTINUATION, OutputCapture
from services.executor.masking import DEFAULT_MASK, MaskingStream, SecretMasker

SECRETS = ["hunter2-password", "ghp_abcDEF123456", "p@ss/wörd€ 'x'"]
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    "AAAAMwAAAAtzc2gtZWQyNTUxOQAAACDh2w7lH9l0Yt\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def feed_all(stream: MaskingStream[str], chunks: list[str]) -> str:
    return "".join(stream.feed(chunk) for chunk in chunks) + stream.flush()


def split_at(text: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]


def test_mask_replaces_secret() -> None:
    masker = SecretMasker(["hunter2-password"])

    masked = masker.mask("login with hunter2-password now")

    assert masked == f"login with {DEFAULT_MASK} now"


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_masked_at_every_split_point(secret: str) -> None:
    masker = SecretMasker(SECRETS)
    text = f"before {secret} after {secret}\n"
    expected = masker.mask(text)
    assert secret not in expected

    for cut in range(len(text) + 1):
        output = feed_all(masker.stream(), split_at(text, (cut,)))
        assert output == expected, cut


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_masked_at_two_split_points(secret: str) -> None:
    masker = SecretMasker(SECRETS)
    text = f"<{secret}>"
    expected = f"<{DEFAULT_MASK}>"

    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            output = feed_all(masker.stream(), split_at(text, (first, second)))
            assert output == expected, (first, second)


def test_secret_masked_one_character_at_a_time() -> None:
    masker = SecretMasker(SECRETS)
    text = "x".join(SECRETS)

    output = feed_all(masker.stream(), list(text))

    assert output == masker.mask(text)
    assert output == "x".join([DEFAULT_MASK] * len(SECRETS))


def test_secret_that_prefixes_another() -> None:
    masker = SecretMasker(["abcd1234", "abcd"])
    text = "abcd abcd1234 abcd12"

    for cut in range(len(text) + 1):
        output = feed_all(masker.stream(), split_at(text, (cut,)))
        assert output == f"{DEFAULT_MASK} {DEFAULT_MASK} {DEFAULT_MASK}12", cut


def test_multiline_secret_whole_value() -> None:
    masker = SecretMasker([PRIVATE_KEY])

    masked = masker.mask(f"key:\n{PRIVATE_KEY}end\n")

    assert masked == f"key:\n{DEFAULT_MASK}end\n"


@pytest.mark.parametrize(
    ("template", "masks"),
    [
        # Printed unquoted, the lines join into the whole value, one mask.
        ("{line}\n", 1),
        ("'{line}'\n", 4),
        ('"{line}"\n', 4),
        ("    {line}\r\n", 4),
    ],
)
def test_multiline_secret_line_by_line(template: str, masks: int) -> None:
    masker = SecretMasker([PRIVATE_KEY])
    printed = "".join(template.format(line=line) for line in PRIVATE_KEY.splitlines())

    masked = feed_all(masker.stream(), printed.splitlines(keepends=True))

    for line in PRIVATE_KEY.splitlines():
        assert line not in masked
    assert masked.count(DEFAULT_MASK) == masks


def test_multiline_secret_json_escaped() -> None:
    masker = SecretMasker([PRIVATE_KEY])
    printed = json.dumps({"key": PRIVATE_KEY})

    masked = masker.mask(printed)

    assert masked == '{"key": "' + DEFAULT_MASK + '"}'


def test_multiline_secret_through_terminal() -> None:
    masker = SecretMasker([PRIVATE_KEY])

    masked = masker.mask(PRIVATE_KEY.replace("\n", "\r\n"))

    assert masked == DEFAULT_MASK


def test_shell_quoted_secret() -> None:
    secret = "it's-a-secret"
    masker = SecretMasker([secret])

    xtrace = masker.mask("+ curl -u 'it'\\''s-a-secret' https://example.test")
    quoted = masker.mask("token='it'\"'\"'s-a-secret'")

    assert "s-a-secret" not in xtrace
    assert "s-a-secret" not in quoted


@pytest.mark.parametrize(
    "url",
    [
        "https://TOKEN-1234@github.example/org/repo.git",
        "https://x-access-token:TOKEN-1234@github.example/org/repo.git",
        "git clone https://user:TOKEN-1234@host.example",
    ],
)
def test_url_user_part_masked(url: str) -> None:
    masker = SecretMasker(["TOKEN-1234"])

    masked = masker.mask(url)

    assert "TOKEN-1234" not in masked
    assert DEFAULT_MASK + "@" in masked


def test_percent_encoded_secret_masked() -> None:
    secret = "p@ss/w:rd ü"
    masker = SecretMasker([secret])
    url = "https://deploy:p%40ss%2Fw%3Ard%20%C3%BC@registry.example/v2/"

    masked = masker.mask(url)
    plus_form = masker.mask("password=p%40ss%2Fw%3Ard+%C3%BC&x=1")

    assert masked == f"https://deploy:{DEFAULT_MASK}@registry.example/v2/"
    assert plus_form == f"password={DEFAULT_MASK}&x=1"


def test_short_values_not_masked() -> None:
    masker = SecretMasker(["abc", "1", "true", ""])

    masked = masker.mask("abc 1 true")

    assert masked == f"abc 1 {DEFAULT_MASK}"
    assert masker.forms == ("true",)


def test_min_length_configurable() -> None:
    masker = SecretMasker(["abc"], mask="[masked]", min_length=3)

    assert masker.mask("xabcx") == "x[masked]x"


def test_invalid_min_length_rejected() -> None:
    with pytest.raises(ValueError, match="invalid min_length 0"):
        SecretMasker(["secret"], min_length=0)


def test_mask_with_backslash_inserted_literally() -> None:
    masker = SecretMasker(["secret-value"], mask=r"\1\g<0>")

    assert masker.mask("a secret-value b") == r"a \1\g<0> b"


def test_no_secrets_passes_text_through() -> None:
    masker = SecretMasker([])
    stream = masker.stream()

    assert stream.feed("anything at all") == "anything at all"
    assert stream.held == 0
    assert masker.mask("text") == "text"
    assert masker.mask_bytes(b"\xffraw") == b"\xffraw"


def test_hold_back_bounded_by_longest_secret() -> None:
    masker = SecretMasker([PRIVATE_KEY, *SECRETS])
    stream = masker.stream()
    text = ("noise " + PRIVATE_KEY[:-1] + " hunter2-pass") * 20

    for start in range(0, len(text), 37):
        stream.feed(text[start : start + 37])
        assert stream.held <= masker.max_hold
    assert masker.max_hold == max(len(form) for form in masker.forms) - 1


def test_unrelated_text_released_at_once() -> None:
    masker = SecretMasker(["hunter2-password"])
    stream = masker.stream()

    assert stream.feed("plain output\n") == "plain output\n"
    assert stream.feed("ends with h") == "ends with "
    assert stream.held == 1


def test_flush_releases_partial_prefix() -> None:
    masker = SecretMasker(["supersecret"])
    stream = masker.stream()

    released = stream.feed("x super")
    tail = stream.flush()

    assert released == "x "
    assert tail == "super"
    assert stream.held == 0


def test_flush_masks_completed_secret() -> None:
    masker = SecretMasker(["abcd", "abcdefgh"])
    stream = masker.stream()

    released = stream.feed("--abcdef")
    tail = stream.flush()

    assert released == "--"
    assert tail == f"{DEFAULT_MASK}ef"


def test_streams_independent() -> None:
    masker = SecretMasker(["hunter2-password"])
    stdout, stderr = masker.stream(), masker.stream()

    out = stdout.feed("hunter2-")
    err = stderr.feed("password ok\n")
    out += stdout.feed("password\n") + stdout.flush()
    err += stderr.flush()

    assert out == f"{DEFAULT_MASK}\n"
    assert err == "password ok\n"


def test_builtin_stream_feed_and_flush() -> None:
    masker = SecretMasker(["hunter2-password"])

    output = masker.feed("pw=hunter2-pa") + masker.feed("ssword\n") + masker.flush()

    assert output == f"pw={DEFAULT_MASK}\n"


def test_mask_bytes_masks_utf8_encoding() -> None:
    masker = SecretMasker(["p@ss/wörd€"])
    raw = b"\xff\xfe p@ss/w\xc3\xb6rd\xe2\x82\xac \x80 p%40ss%2Fw%C3%B6rd%E2%82%AC"

    masked = masker.mask_bytes(raw)

    assert masked == b"\xff\xfe ******** \x80 ********"


def test_byte_stream_masked_at_every_split_point() -> None:
    masker = SecretMasker(SECRETS)
    raw = ("before " + " | ".join(SECRETS) + " after").encode() + b"\xff"
    expected = masker.mask_bytes(raw)

    for cut in range(len(raw) + 1):
        stream = masker.byte_stream()
        output = stream.feed(raw[:cut]) + stream.feed(raw[cut:]) + stream.flush()
        assert output == expected, cut
    for secret in SECRETS:
        assert secret.encode() not in expected


def test_secret_cut_by_long_line_split_masked() -> None:
    secret = "hunter2-password"
    line = ("x" * 10 + secret + "y" * 30 + "\n").encode()
    capture = OutputCapture(16)
    masker = SecretMasker([secret])
    text_stream, byte_stream = masker.stream(), masker.byte_stream()

    pieces = capture.feed("stdout", line) + capture.flush()
    text = ""
    raw = b""
    for piece in pieces:
        text += text_stream.feed(piece.body)
        if piece.continued:
            text += CONTINUATION
        raw += byte_stream.feed(piece.raw)
    text += text_stream.flush()
    raw += byte_stream.flush()

    assert any(piece.continued for piece in pieces)
    assert secret not in text.replace(CONTINUATION, "")
    assert DEFAULT_MASK in text
    assert raw == ("x" * 10 + DEFAULT_MASK + "y" * 30 + "\n").encode()


def test_large_input_masked_in_linear_time() -> None:
    masker = SecretMasker([PRIVATE_KEY, *SECRETS])
    block = ("lorem ipsum ghp_abc hunter2 " * 40 + "hunter2-password\n") * 64
    stream = masker.stream()

    started = time.perf_counter()
    masked_size = 0
    for _ in range(20 * 1024 * 1024 // len(block)):
        masked_size += len(stream.feed(block))
        assert stream.held <= masker.max_hold
    elapsed = time.perf_counter() - started

    assert masked_size > 0
    assert elapsed < 20


TEXT_ALPHABET = st.sampled_from(["a", "b", "c", "-", " ", "\n", "é", "€", "%", "h"])


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.text(TEXT_ALPHABET, max_size=12),
            st.sampled_from([*SECRETS, "hunter2-", "ghp_abc", "p%40ss", "abcd-"]),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_streamed_output_equals_whole_mask(parts: list[str], cuts: list[int]) -> None:
    masker = SecretMasker([*SECRETS, "abcd-abcd", "bcab"])
    text = "".join(parts)
    bounds = tuple(sorted(cut for cut in set(cuts) if cut <= len(text)))
    chunks = split_at(text, bounds)

    streamed = feed_all(masker.stream(), chunks)
    raw_stream = masker.byte_stream()
    raw_chunks = [chunk.encode() for chunk in chunks]
    streamed_raw = b"".join(raw_stream.feed(chunk) for chunk in raw_chunks)
    streamed_raw += raw_stream.flush()

    assert streamed == masker.mask(text)
    assert streamed_raw == masker.mask_bytes(text.encode())
