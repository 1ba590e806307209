"""Token counts read from a response as it passes: the usage object at the end of a JSON body, or the usage event of
a server-sent-event stream (which the proxy may also remove, when it asked for it and the client did not).

OpenAI's APIs and Anthropic's Messages API both end with their counts, in one usage record of OpenAI's meaning: prompt
tokens include the cached ones. Anthropic counts the prompt tokens read from its cache and those written to it apart
from `input_tokens`, and streams them in two events: `message_start` (the input side) and `message_delta` (the final
counts, at the end).
"""

import json
import re
from dataclasses import dataclass

_USAGE_KEY = b'"usage"'
# The member OpenAI adds to every chunk once usage is asked for. Only JSON's structure can hold it unescaped (in a
# string its quotes would be `\"`), and OpenAI writes it after the chunk's content, so the last one is the chunk's own.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])')
# That member as the last of a line's document.
_NULL_USAGE_LAST = re.compile(rb',\s*"usage"\s*:\s*null\s*\}\Z')
# Any `"usage": null` member, first or not: an event whose every `"usage"` is one of these holds no counts.
_ANY_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null(?=\s*[,}])')
# How OpenAI writes that member as a chunk's last, at the end of its event.
_NULL_USAGE_END = b'"usage":null}\n\n'
_decoder = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Members only Anthropic's usage has: it counts cached prompt tokens apart from `input_tokens`.
_ANTHROPIC_CACHE_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens")
_ANTHROPIC_USAGE_EVENTS = frozenset({"message_start", "message_delta"})
_MAX_USAGE_KEYS = 16  # how many `"usage"` keys of a body's tail are tried for the body's own


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


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def counts_from(usage: object) -> TokenCounts | None:
    """Chat/completions/embeddings name them prompt/completion; the Responses API input/output (with a total and
    `input_tokens_details`); Anthropic input/output, without a total, with its cache counts apart."""
    if not isinstance(usage, dict):
        return None
    if _is_anthropic(usage):
        return anthropic_counts(usage)

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


def _is_anthropic(usage: dict) -> bool:
    """Anthropic's usage, told by its cache counts (the API has sent them, if only as 0, since caching came). Without
    them it reads as the Responses API's would: the same prompt and completion, no total."""
    return "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage


def anthropic_counts(usage: dict) -> TokenCounts | None:
    """Anthropic's usage in OpenAI's meaning: the prompt is every input token, those read from the cache (also
    counted as cached) and those written to it included; the total is prompt plus completion."""
    prompt_parts = [_count(usage.get(key)) for key in ("input_tokens", *_ANTHROPIC_CACHE_KEYS)]
    known = [part for part in prompt_parts if part is not None]
    prompt = sum(known) if known else None
    completion = _count(usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return TokenCounts(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=(prompt or 0) + (completion or 0),
        cached_tokens=prompt_parts[1],
    )


def _usage_in(document: object) -> TokenCounts | None:
    if not isinstance(document, dict):
        return None
    found = counts_from(document.get("usage"))
    if found is None and isinstance(document.get("response"), dict):  # Responses API: response.completed
        found = counts_from(document["response"].get("usage"))
    return found


def counts_from_json_tail(tail: bytes) -> TokenCounts | None:
    """The `usage` object of a JSON body, from the body's last bytes.

    OpenAI and Anthropic put it after the payload, last or nearly (members may follow it). The body's own usage is
    the last `"usage"` key whose value is followed by nothing but the document's other members and its end: a
    `"usage"` key in something after it (a tool's input, a newer member) is passed over. Should no key be the body's
    own, the last one is read, as it always was. Only the last few keys are looked at: each look reads to the end.
    """
    last: TokenCounts | None = None
    seen_last = False
    position = len(tail)
    looks = 0
    while looks < _MAX_USAGE_KEYS and (position := tail.rfind(_USAGE_KEY, 0, position)) > 0:
        if tail[position - 1 : position] == b"\\":  # an escaped quote inside some text, not a key
            continue
        rest = tail[position + len(_USAGE_KEY) :].lstrip()
        if not rest.startswith(b":"):
            continue
        looks += 1
        text = rest[1:].decode("utf-8", "replace")
        try:
            value, end = _decoder.raw_decode(text, _WHITESPACE.match(text).end())
        except ValueError:
            if not seen_last:
                return None  # the last key's value is cut or broken: as before, nothing is read
            continue
        counts = counts_from(value)
        if not seen_last:
            seen_last, last = True, counts
            if _ends_document(text, end):
                return counts
        elif _ends_document(text, end):
            return counts
    return last


def _ends_document(text: str, index: int) -> bool:
    """Whether `text` from `index` (just after a member's value) is the rest of its object's members, the object's
    end, then nothing: the member is one of the document's own, not of something nested in it."""
    while True:
        index = _WHITESPACE.match(text, index).end()
        if text.startswith("}", index):
            return not text[index + 1 :].strip()
        if not text.startswith(",", index):
            return False
        index = _WHITESPACE.match(text, index + 1).end()
        if not text.startswith('"', index):
            return False
        try:
            _, index = _decoder.raw_decode(text, index)  # the key
            index = _WHITESPACE.match(text, index).end()
            if not text.startswith(":", index):
                return False
            _, index = _decoder.raw_decode(text, _WHITESPACE.match(text, index + 1).end())  # its value
        except ValueError:
            return False


def _event_boundary(buffer: bytes | bytearray) -> int:
    """The end of the last complete SSE event in the buffer (0 if none)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def split_events(block: bytes) -> list[bytes]:
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


def _ends_with_null_usage(event: bytes) -> bool:
    """Whether an event is one `data:` line whose object ends with a `"usage": null` member: its top-level one (the
    `}` after it closes the line's document), which `strip` removes. Told without decoding the line: were it not JSON
    (which no client could read anyway), the member would still be removed."""
    line = event.rstrip(b"\r\n")
    if not line.startswith(b"data:") or b"\n" in line or b"\r" in line:
        return False
    return _NULL_USAGE_LAST.search(line) is not None


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

    An Anthropic stream names usage twice: `message_start` gives the input side (kept as the counts, should the
    stream be cut), `message_delta` the final counts (cumulative; where it repeats the input and cache counts, its
    own are taken). Only `message_delta` is the usage event that `hold` starts at; neither is ever stripped.
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
        self._message_start_usage: dict | None = None  # Anthropic's, from `message_start`

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send on for this chunk."""
        if self._gave_up:
            return self._out(chunk)
        if not self._pending and chunk.find(b"\n") == len(chunk) - 2 and chunk.endswith(b"\n\n") and not self.strip:
            # The usual chunk: one whole one-line event. Without a `"usage"` key, or with only the null one every
            # chunk carries once usage is asked for, it has nothing to count (what `_pass` would find, less the
            # buffering and the regular expressions).
            usages = chunk.count(_USAGE_KEY)
            if usages == 0 or (usages == 1 and chunk.endswith(_NULL_USAGE_END)):
                kept = self._out(chunk)
                return kept if self.hold else chunk
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
            self._pass(event) if _USAGE_KEY in event else self._out(event) for event in split_events(complete)
        )

    def _pass(self, event: bytes) -> bytes:
        """What goes on of an event that names usage: with `strip`, nothing of the usage event (its counts are
        kept) and the others without their null usage."""
        if event.count(_USAGE_KEY) == len(_ANY_NULL_USAGE.findall(event)):
            # Every chunk of a stream with usage asked for: nothing to count, so it is not decoded.
            if not self.strip:
                return self._out(event)
            if _ends_with_null_usage(event):
                return self._out(_without_null_usage(event))
        document = _event_document(event)
        counts = _usage_in(document)
        if counts is not None:
            if document.get("type") == "message_delta":  # Anthropic's: its counts complete message_start's
                return self._anthropic(document, event)
            self.counts = counts
            self._holding = self.hold
            return b"" if self.strip else self._out(event)
        if self.strip and isinstance(document, dict) and "usage" in document and document["usage"] is None:
            return self._out(_without_null_usage(event))
        if type(document) is dict and document.get("type") in _ANTHROPIC_USAGE_EVENTS:
            return self._anthropic(document, event)
        return self._out(event)

    def _anthropic(self, document: dict, event: bytes) -> bytes:
        if document["type"] == "message_start":
            message = document.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._message_start_usage = usage
                self.counts = anthropic_counts(usage) or self.counts
            return self._out(event)
        usage = document.get("usage")  # message_delta
        if isinstance(usage, dict):
            final = {**(self._message_start_usage or {}), **{k: v for k, v in usage.items() if v is not None}}
            counts = anthropic_counts(final)
            if counts is not None:
                self.counts = counts
                self._holding = self.hold
        return self._out(event)
