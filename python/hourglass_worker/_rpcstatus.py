"""google.rpc.Status with ErrorInfo / BadRequest details, by hand.

gRPC carries rich error details as a serialized ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer. The Python helpers for that
(``grpcio-status``, ``googleapis-common-protos``) are on neither Debian's
python3-grpcio nor the GPU machine, so the few messages the worker protocol
needs are encoded here with the protobuf wire format, which is stable and
independent of the protobuf runtime's version. ``decode_status`` exists for
tests and for callers that want to read the details back.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"
ERROR_INFO_TYPE = _TYPE_PREFIX + "google.rpc.ErrorInfo"
BAD_REQUEST_TYPE = _TYPE_PREFIX + "google.rpc.BadRequest"


def _varint(n: int) -> bytes:
    if n < 0:  # int32 negative values are sign-extended to 64 bits
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _field_str(number: int, s: str) -> bytes:
    return _field_bytes(number, s.encode("utf-8")) if s else b""


def _field_varint(number: int, n: int) -> bytes:
    return _varint(number << 3) + _varint(n) if n else b""


def error_info(reason: str, domain: str, metadata: Optional[Dict[str, str]] = None) -> Tuple[str, bytes]:
    """An ErrorInfo detail: (type URL, serialized message)."""
    body = _field_str(1, reason) + _field_str(2, domain)
    for k, v in sorted((metadata or {}).items()):
        body += _field_bytes(3, _field_str(1, k) + _field_str(2, v))
    return ERROR_INFO_TYPE, body


def bad_request(violations: Sequence[Tuple[str, str]]) -> Tuple[str, bytes]:
    """A BadRequest detail from (field, description) pairs."""
    body = b"".join(_field_bytes(1, _field_str(1, f) + _field_str(2, d)) for f, d in violations)
    return BAD_REQUEST_TYPE, body


def encode_status(code: int, message: str, details: Sequence[Tuple[str, bytes]] = ()) -> bytes:
    """A serialized google.rpc.Status; code is the numeric gRPC code."""
    body = _field_varint(1, code) + _field_str(2, message)
    for type_url, value in details:
        any_body = _field_str(1, type_url) + (_field_bytes(2, value) if value else b"")
        body += _field_bytes(3, any_body)
    return body


# --- decoding (tests, callers) ---------------------------------------------


def _read_varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _fields(buf: bytes) -> List[Tuple[int, object]]:
    out: List[Tuple[int, object]] = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
            out.append((number, v))
        elif wire == 2:
            n, i = _read_varint(buf, i)
            out.append((number, bytes(buf[i:i + n])))
            i += n
        elif wire == 1:
            out.append((number, bytes(buf[i:i + 8])))
            i += 8
        elif wire == 5:
            out.append((number, bytes(buf[i:i + 4])))
            i += 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
    return out


def decode_status(data: bytes) -> dict:
    """Decodes a serialized google.rpc.Status into a plain dict:
    {"code", "message", "error_info": {"reason","domain","metadata"} or None,
    "field_violations": [(field, description)], "details": [type URLs]}."""
    res = {"code": 0, "message": "", "error_info": None, "field_violations": [], "details": []}
    for number, v in _fields(data):
        if number == 1:
            res["code"] = v
        elif number == 2:
            res["message"] = v.decode("utf-8")
        elif number == 3:
            type_url, value = "", b""
            for n2, v2 in _fields(v):
                if n2 == 1:
                    type_url = v2.decode("utf-8")
                elif n2 == 2:
                    value = v2
            res["details"].append(type_url)
            if type_url == ERROR_INFO_TYPE:
                info = {"reason": "", "domain": "", "metadata": {}}
                for n3, v3 in _fields(value):
                    if n3 == 1:
                        info["reason"] = v3.decode("utf-8")
                    elif n3 == 2:
                        info["domain"] = v3.decode("utf-8")
                    elif n3 == 3:
                        kv = dict(_fields(v3))
                        info["metadata"][kv.get(1, b"").decode()] = kv.get(2, b"").decode()
                res["error_info"] = info
            elif type_url == BAD_REQUEST_TYPE:
                for n3, v3 in _fields(value):
                    if n3 == 1:
                        fv = dict(_fields(v3))
                        res["field_violations"].append((fv.get(1, b"").decode(), fv.get(2, b"").decode()))
    return res


def status_from_trailers(trailing_metadata) -> Optional[dict]:
    """The decoded Status in a call's trailing metadata, or None."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY:
            return decode_status(value)
    return None
