"""Token counts read from a response as it passes: the usage object at the end of a JSON body, or the usage event of
a server-sent-event stream (which the proxy may also remove, when it asked for it and the client did not)."""

import json
import re
from dataclasses import dataclass

_USAGE_KEY = b'"usage"'
# The member OpenAI adds to every chunk once usage is asked for. Only JSON's structure can hold it unescaped (in a
# string its quotes would be `\"`), and OpenAI writes it after the chunk's content, so the last one is the chunk's own.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])')
_decoder = json.JSONDecoder()


@dataclass
class TokenCounts:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # of the prompt tokens, those the upstream read from its prompt cache

    @property
    def used(self) -> int:
        """What a per-minute token limit counts: prompt plus completion."""
        if self.total_tokens is not None:
            return self.total_tokens
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def counts_from(usage: object) -> TokenCounts | None:
    """Chat/completions/embeddings name them prompt/completion; the Responses API input/output."""
    if not isinstance(usage, dict):
        return None

    def number(*keys: str) -> int | None:
        for key in keys:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    counts = TokenCounts(
        prompt_tokens=number("prompt_tokens", "input_tokens"),
        completion_tokens=number("completion_tokens", "output_tokens"),
        total_tokens=number("total_tokens"),
        cached_tokens=cached if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0 else None,
    )
    if counts == TokenCounts():
        return None
    return counts


def _usage_in(document: object) -> TokenCounts | None:
    if not isinstance(document, dict):
        return None
    found = counts_from(document.get("usage"))
    if found is None and isinstance(document.get("response"), dict):  # Responses API: response.completed
        found = counts_from(document["response"].get("usage"))
    return found


def counts_from_json_tail(tail: bytes) -> TokenCounts | None:
    """The `usage` object of a JSON body, from the body's last bytes (OpenAI puts it last, after the payload)."""
    position = len(tail)
    while (position := tail.rfind(_USAGE_KEY, 0, position)) > 0:
        if tail[position - 1 : position] != b"\\":  # a key, not an escaped quote inside some text
            rest = tail[position + len(_USAGE_KEY) :].lstrip()
            if rest.startswith(b":"):
                try:
                    value, _ = _decoder.raw_decode(rest[1:].lstrip().decode("utf-8", "replace"))
                except ValueError:
                    return None
                return counts_from(value)
    return None


def _event_boundary(buffer: bytes | bytearray) -> int:
    """The end of the last complete SSE event in the buffer (0 if none)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _split_events(block: bytes) -> list[bytes]:
    """Complete events (each with its terminating blank line) from a block that ends on an event boundary."""
    events, start = [], 0
    while start < len(block):
        lf = block.find(b"\n\n", start)
        crlf = block.find(b"\r\n\r\n", start)
        ends = [e + n for e, n in ((lf, 2), (crlf, 4)) if e >= 0]
        end = min(ends) if ends else len(block)
        events.append(block[start:end])
        start = end
    return events


def _event_document(event: bytes) -> object:
    """The JSON document of an event's data, or None."""
    data = b"".join(
        line[5:].lstrip(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
    )
    if not data or data == b"[DONE]":
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _without_null_usage(event: bytes) -> bytes:
    found = list(_NULL_USAGE.finditer(event))
    return event[: found[-1].start()] + event[found[-1].end() :] if found else event


class StreamUsage:
    """Finds the usage event of a server-sent-event stream as it passes, across any chunk boundaries.

    With `strip`, the client did not ask for usage: what asking added is taken out of what it receives, the usage
    event and the `"usage":null` member of every other chunk, so it gets the bytes it would have had. With `hold`,
    the usage event (unless stripped) and everything after it are kept back until `release()`: the request is
    charged first, so the client does not see its stream end before the charge counts. Complete events are passed on
    as soon as their end arrives; only an incomplete event is held, and a client cannot use half an event anyway.
    Without either, every chunk passes on at once, untouched.
    """

    MAX_PENDING = 1 << 20  # an "event" this long is no SSE event: stop looking

    def __init__(self, *, strip: bool, hold: bool = False) -> None:
        self.strip = strip
        self.hold = hold
        self.counts: TokenCounts | None = None
        self._pending = bytearray()
        self._held = bytearray()
        self._holding = False
        self._gave_up = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send on for this chunk."""
        if self._gave_up:
            return self._out(chunk)
        self._pending += chunk
        end = _event_boundary(self._pending)
        complete = bytes(self._pending[:end])
        del self._pending[:end]
        kept = self._scan(complete) if _USAGE_KEY in complete else self._out(complete)
        if len(self._pending) > self.MAX_PENDING:
            self._gave_up = True
            kept += self._out(bytes(self._pending))
            self._pending.clear()
        return kept if self.strip or self.hold else chunk

    def finish(self) -> bytes:
        """What is still held when the stream ends (an unterminated last event), but for what `hold` keeps."""
        rest = bytes(self._pending)
        self._pending.clear()
        rest = self._scan(rest) if rest and not self._gave_up and _USAGE_KEY in rest else self._out(rest)
        return rest if self.strip or self.hold else b""  # else every byte went on with its chunk already

    def release(self) -> bytes:
        """What `hold` kept back."""
        held = bytes(self._held)
        self._held.clear()
        return held

    def _out(self, data: bytes) -> bytes:
        """Data on its way to the client: passed on, or kept back once the usage event has gone by (`hold`)."""
        if self._holding:
            self._held += data
            return b""
        return data

    def _scan(self, complete: bytes) -> bytes:
        return b"".join(
            self._pass(event) if _USAGE_KEY in event else self._out(event) for event in _split_events(complete)
        )

    def _pass(self, event: bytes) -> bytes:
        """What goes on of an event that names usage: with `strip`, nothing of the usage event (its counts are
        kept) and the others without their null usage."""
        document = _event_document(event)
        counts = _usage_in(document)
        if counts is not None:
            self.counts = counts
            self._holding = self.hold
            return b"" if self.strip else self._out(event)
        if self.strip and isinstance(document, dict) and "usage" in document and document["usage"] is None:
            return self._out(_without_null_usage(event))
        return self._out(event)
