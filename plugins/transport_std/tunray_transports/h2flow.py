"""HTTP/2 flow control as the gRPC stream (:mod:`.grpc`) and the XHTTP session (:mod:`.h2session`) both do it.

Sending: :func:`queue_data` hands ``h2`` as many DATA frames as the stream's and the
connection's send windows allow (each at most the peer's ``SETTINGS_MAX_FRAME_SIZE``);
the caller flushes ``data_to_send()``, and waits for a WINDOW_UPDATE when nothing fit.
Receiving: received DATA is buffered and acknowledged only as the application reads
it; :func:`take` hands out the front of that buffer.
"""

from __future__ import annotations

import h2.connection


def queue_data(conn: h2.connection.H2Connection, sid: int, view: memoryview, pos: int, end_stream: bool) -> int:
    """Queue ``view[pos:]`` on stream *sid* as far as the send windows allow; return the new position.

    The position comes back unchanged when a window is empty.  With *end_stream* the
    frame carrying the last byte of *view* has END_STREAM.  ``h2``'s
    ``StreamClosedError`` goes to the caller (the peer closed or reset the stream).
    """
    window = conn.local_flow_control_window(sid)
    if window <= 0:
        return pos
    frame = conn.max_outbound_frame_size
    total = len(view)
    stop = min(total, pos + window)
    while pos < stop:
        n = min(frame, stop - pos)
        conn.send_data(sid, bytes(view[pos : pos + n]), end_stream=end_stream and pos + n == total)
        pos += n
    return pos


def take(buf: bytearray, max_bytes: int) -> bytes:
    """Remove and return up to *max_bytes* from the front of *buf*."""
    if len(buf) <= max_bytes:
        out = bytes(buf)
        buf.clear()
        return out
    out = bytes(buf[:max_bytes])
    del buf[:max_bytes]
    return out
