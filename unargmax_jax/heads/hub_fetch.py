"""Byte ranges of a safetensors file on the Hugging Face Hub: its header, and a few tensors.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON (tensor
name -> dtype, shape, data_offsets), then the data. So the head of a checkpoint is read
with a ranged request for the header and one per tensor kept,
``[8 + n + begin, 8 + n + end)``, and written as a small safetensors file of its own:
checking a 70B model's head costs the head's bytes, not the checkpoint's.

Requests go through ``huggingface_hub``'s own HTTP session (its auth headers, proxies,
redirects to the CDN and retries on 429); the library is imported by the caller
(:mod:`.hub`), which maps its errors to one line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

from .safetensors import _SAFETENSORS_MAX_HEADER, _safetensors_entry, _TensorInfo
from .validate import HeadError

_FIRST_BYTES = 100_000  # as huggingface_hub's parse_safetensors_file_metadata: most headers fit
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RemoteHeader(NamedTuple):
    """A remote safetensors file's tensors, where its data starts, and its size in bytes."""

    tensors: dict[str, _TensorInfo]
    data_start: int
    size: int


class Progress:
    """Bytes fetched so far, on stderr, at most twice a second (silent when not ``enabled``)."""

    def __init__(self, total: int, label: str, *, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled
        self.done, self._shown = 0, 0.0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.5:
            self._shown = now
            print(f"\r{self.label}: {_size(self.done)} of {_size(self.total)}", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled and self.total:
            print(f"\r{self.label}: {_size(self.done)} of {_size(self.total)}, done", file=sys.stderr, flush=True)


def _size(count: int) -> str:
    return f"{count} bytes" if count < 10_000 else f"{count / 1e6:.1f} MB ({count} bytes)"


def get_range(hub, url: str, start: int, stop: int, sink, *, progress: Progress | None = None) -> int:
    """Write bytes ``[start, stop)`` of ``url`` (those before its end) to ``sink``; return its total size.

    Raises:
        HeadError: the server ignored the range, or sent fewer bytes than asked
            (an interrupted download).
    """
    headers = hub.utils.build_hf_headers()
    headers.update({"Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"})
    received = 0
    with hub.utils.http_stream_backoff(method="GET", url=url, headers=headers, retry_on_exceptions=(),
                                       retry_on_status_codes=(408, 429)) as response:
        hub.utils.hf_raise_for_status(response)
        total = _total_size(response, url, start, stop)
        stop = min(stop, total) if total >= 0 else stop  # a header read may ask past the end of a small file
        try:
            for chunk in response.iter_bytes(_CHUNK):
                chunk = chunk[: stop - start - received]  # never more than asked, whatever the server sends
                sink.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress.add(len(chunk))
                if received == stop - start:
                    break
        except hub.network_errors as err:  # the connection dropped part way
            raise _interrupted(url, start, stop, received, f" ({type(err).__name__})") from None
    if received != stop - start:
        raise _interrupted(url, start, stop, received, "")
    return total


def _interrupted(url: str, start: int, stop: int, received: int, why: str) -> HeadError:
    return HeadError(f"{url}: download interrupted{why}: got {received} of the {stop - start} bytes "
                     f"[{start}, {stop}); nothing was kept, run the command again")


def _total_size(response, url: str, start: int, stop: int) -> int:
    """The file size a ranged answer gives (``Content-Range: bytes a-b/size``)."""
    if response.status_code == 200:  # the whole file: acceptable only when that is what was asked
        length = int(response.headers.get("Content-Length", -1))
        if start == 0 and 0 <= length <= stop:
            return length
        raise HeadError(f"{url}: the server ignored the byte range {start}-{stop - 1} and sent the whole file; "
                        f"refusing to download it")
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if response.status_code != 206 or match is None or int(match.group(1)) != start:
        raise HeadError(f"{url}: expected a 206 answer with Content-Range bytes {start}-..., got "
                        f"{response.status_code} {response.headers.get('Content-Range')!r}")
    return int(match.group(3)) if match.group(3) != "*" else -1


class _Buffer:
    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def value(self) -> bytes:
        return b"".join(self.parts)


def remote_header(hub, url: str, label: str) -> RemoteHeader:
    """Read and check the header of the safetensors file at ``url`` with ranged requests."""
    first = _Buffer()
    size = get_range(hub, url, 0, _FIRST_BYTES, first)
    raw = first.value()
    if size < 0:
        raise HeadError(f"{label}: the server did not say the file's size (Content-Range .../size)")
    if len(raw) < 8:
        raise HeadError(f"{label}: expected a safetensors file (an 8-byte header length), got {len(raw)} bytes")
    n = int.from_bytes(raw[:8], "little")
    if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
        raise HeadError(f"{label}: expected a header length of at most {min(size - 8, _SAFETENSORS_MAX_HEADER)} "
                        f"bytes (file size {size}), got {n}: not a safetensors file")
    if len(raw) < 8 + n:
        rest = _Buffer()
        get_range(hub, url, len(raw), 8 + n, rest)
        raw += rest.value()
    try:
        header = json.loads(raw[8: 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeadError(f"{label}: expected a JSON header of {n} bytes, got unparseable text ({err})") from None
    if not isinstance(header, dict):
        raise HeadError(f"{label}: expected a JSON object as header, got {type(header).__name__}")
    tensors = {name: _safetensors_entry(label, name, info, size - 8 - n)
               for name, info in header.items() if name != "__metadata__"}
    return RemoteHeader(tensors, 8 + n, size)


def partial_header(tensors: dict[str, _TensorInfo], names: list[str]) -> bytes:
    """The header of a safetensors file holding only ``names``, their data back to back."""
    entries, position = {}, 0
    for name in names:
        info = tensors[name]
        length = info.end - info.begin
        entries[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [position, position + length]}
        position += length
    text = json.dumps(entries).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    return len(text).to_bytes(8, "little") + text


def write_partial(hub, url: str, header: RemoteHeader, names: list[str], path: Path, *,
                  progress: Progress) -> list[list[int]]:
    """Fetch the tensors ``names`` of the remote file into a new safetensors file ``path``.

    Returns:
        The byte ranges ``[start, stop)`` of the remote file that were read.
    """
    ranges = []
    with open(path, "wb") as handle:
        handle.write(partial_header(header.tensors, names))
        for name in names:
            info = header.tensors[name]
            start, stop = header.data_start + info.begin, header.data_start + info.end
            if stop > start:
                get_range(hub, url, start, stop, handle, progress=progress)
            ranges.append([start, stop])
    return ranges


def tensor_bytes(tensors: dict[str, _TensorInfo], names) -> int:
    """Bytes of the data of ``names``."""
    return sum(tensors[n].end - tensors[n].begin for n in names)


