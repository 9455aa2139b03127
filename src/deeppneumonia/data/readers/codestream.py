"""JPEG and JPEG 2000 codestream headers, read without decoding: dimensions, and whether a JPEG's scans are complete.

Two guards read here, both before a decoder runs. :func:`jpeg_dims` / :func:`j2k_dims` give the dimensions of
the frame (the SOF marker of a JPEG or JPEG-LS codestream, the SIZ marker of a JPEG 2000 one), so a
decompression bomb is refused from its header. :func:`check_jpeg_complete` refuses a truncated JPEG: the last
scan must be followed by the end-of-image (EOI) marker, and each Huffman-coded scan must hold at least the bits
its blocks need. The second part matters because libjpeg (inside Pillow and pylibjpeg) fills whatever the
entropy-coded data does not cover with zeros, silently, when a marker (e.g. an EOI appended to a cut file) ends
it early: a file cut after 1 % of its scan decodes to a flat image without an error.

The bound is a lower one, so it never refuses a valid file: every 8x8 block of a sequential Huffman scan costs at
least one DC code plus one AC code (an end-of-block), each at least as long as the shortest code of its table
(ITU-T T.81, F.1.2); the first DC scan of a progressive JPEG costs at least one DC code per block. Byte stuffing
and restart markers are counted as coded data (they only add bytes). Arithmetic-coded, lossless and
hierarchical JPEGs, and frames whose height comes later (DNL), are checked for the EOI marker only.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from deeppneumonia.errors import ImageReadError

__all__ = ["check_jpeg_complete", "j2k_dims", "jpeg_dims"]

# JPEG start-of-frame markers (C0-CF less DHT C4, JPG C8, DAC CC) and JPEG-LS's SOF55 (F7): height, width follow.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})  # baseline and extended sequential, Huffman coded
_PROGRESSIVE_HUFFMAN = 0xC2
_SOS, _EOI, _DHT = 0xDA, 0xD9, 0xC4


def _standalone(marker: int) -> bool:
    """Markers without a length field: TEM and the restart markers RST0-RST7 (SOI and EOI are handled apart)."""
    return marker == 0x01 or 0xD0 <= marker <= 0xD7


def _segments(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(marker, payload, bytes of entropy-coded data after it) of each marker segment after SOI, in order, up to
    EOI or the first byte that is not a marker where one belongs (structure errors are the decoder's to report).
    The coded data follows SOS segments only (0 for the others)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            return
        if _standalone(marker):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        pos = _entropy_end(data, end) if marker == _SOS else end
        yield marker, data[end - length + 2:end], pos - end


def jpeg_dims(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the SOF (or JPEG-LS SOF55) marker of a JPEG codestream, or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    for marker, payload, _ in _segments(data):
        if marker in SOF_MARKERS:
            if len(payload) < 5:
                return None
            height, width = struct.unpack_from(">HH", payload, 1)
            return width, height
        if marker == _SOS:  # a scan before any frame header
            return None
    return None


def j2k_dims(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the SIZ marker of a JPEG 2000 codestream (also inside a JP2 file), or None."""
    at = data.find(b"\xff\x4f\xff\x51", 0, 65536)
    if at < 0 or at + 28 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, at + 8)
    return xsiz - xosiz, ysiz - yosiz


@dataclass
class _Frame:
    marker: int
    width: int
    height: int
    sampling: dict[int, tuple[int, int]]  # component id -> (H, V)


@dataclass
class _Tables:
    shortest: dict[tuple[int, int], int] = field(default_factory=dict)  # (class 0=DC/1=AC, id) -> shortest code


def _read_dht(payload: bytes, tables: _Tables) -> None:
    pos = 0
    while pos + 17 <= len(payload):
        tc, th = payload[pos] >> 4, payload[pos] & 0x0F
        counts = payload[pos + 1:pos + 17]
        shortest = next((length for length, n in enumerate(counts, start=1) if n), None)
        if shortest is not None:
            tables.shortest[(tc, th)] = shortest
        pos += 17 + sum(counts)


def _read_sof(marker: int, payload: bytes) -> _Frame | None:
    if len(payload) < 6:
        return None
    height, width, n = struct.unpack_from(">HHB", payload, 1)
    sampling = {}
    for i in range(n):
        at = 6 + 3 * i
        if at + 3 > len(payload):
            return None
        sampling[payload[at]] = (payload[at + 1] >> 4, payload[at + 1] & 0x0F)
    return _Frame(marker, width, height, sampling)


def _entropy_end(data: bytes, start: int) -> int:
    """Index of the first marker after the entropy-coded data that starts at ``start`` (or len(data))."""
    pos = start
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:  # stuffed 0xFF, restart marker: still coded data
            pos += 2
        elif nxt == 0xFF:  # fill bytes before a marker
            pos += 1
        else:
            return pos


def _scan_min_bits(frame: _Frame, tables: _Tables, payload: bytes) -> tuple[int, int] | None:
    """(blocks, least bits) the scan must hold, or None where the bound does not apply."""
    if frame.height == 0 or not frame.sampling or len(payload) < 1:
        return None
    progressive = frame.marker == _PROGRESSIVE_HUFFMAN
    if not progressive and frame.marker not in _SEQUENTIAL_HUFFMAN:
        return None
    n = payload[0]
    if len(payload) < 1 + 2 * n + 3:
        return None
    ss, ah = payload[1 + 2 * n], payload[3 + 2 * n] >> 4
    if progressive and not (ss == 0 and ah == 0):  # only the first DC scan has a per-block cost
        return None
    hmax = max(h for h, _ in frame.sampling.values())
    vmax = max(v for _, v in frame.sampling.values())
    if hmax == 0 or vmax == 0:
        return None
    mcus = math.ceil(frame.width / (8 * hmax)) * math.ceil(frame.height / (8 * vmax))
    blocks = bits = 0
    for i in range(n):
        cid, td, ta = payload[1 + 2 * i], payload[2 + 2 * i] >> 4, payload[2 + 2 * i] & 0x0F
        if cid not in frame.sampling:
            return None
        h, v = frame.sampling[cid]
        if n == 1:  # non-interleaved: the component's own blocks
            count = (math.ceil(math.ceil(frame.width * h / hmax) / 8)
                     * math.ceil(math.ceil(frame.height * v / vmax) / 8))
        else:
            count = mcus * h * v
        dc = tables.shortest.get((0, td))
        ac = 0 if progressive else tables.shortest.get((1, ta))
        if dc is None or ac is None:
            return None
        blocks += count
        bits += count * (dc + ac)
    return blocks, bits


def check_jpeg_complete(data: bytes, name: str) -> None:
    """Refuse a truncated JPEG: no EOI after the last scan, or a scan shorter than its blocks need (see module)."""
    last_sos = data.rfind(b"\xff\xda")
    if last_sos < 0:
        raise ImageReadError(f"{name}: truncated or corrupt JPEG file: no image scan (SOS marker)")
    if data.rfind(b"\xff\xd9") < last_sos:
        raise ImageReadError(
            f"{name}: truncated JPEG file: no end-of-image marker after the last scan ({len(data)} bytes)"
        )
    if not data.startswith(b"\xff\xd8"):
        return
    frame: _Frame | None = None
    tables = _Tables()
    scan = 0
    for marker, payload, coded in _segments(data):
        if marker in SOF_MARKERS and frame is None:
            frame = _read_sof(marker, payload)
        elif marker == _DHT:
            _read_dht(payload, tables)
        elif marker == _SOS:
            need = _scan_min_bits(frame, tables, payload) if frame is not None else None
            if need is not None and coded * 8 < need[1]:
                blocks, bits = need
                covered = min(100.0, 100.0 * coded * 8 / bits)
                raise ImageReadError(
                    f"{name}: truncated JPEG file: scan {scan} holds {coded} bytes of coded data, fewer than "
                    f"the {math.ceil(bits / 8)} its {blocks} blocks need at least (the decoder would invent at least "
                    f"{100 - covered:.1f} % of the image)")
            scan += 1
