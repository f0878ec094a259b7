"""A Forward protocol client for the `forward` input tests.

Message mode goes through fluent-logger (the Python Fluentd client, EventTime timestamps);
Forward, PackedForward and CompressedPackedForward (gzip, zstd) frames are built with the
`msgpack` package, each with a `chunk` option, and every ack is checked against its chunk.

usage: forward_client.py ADDR MODE TAG PREFIX START COUNT PER_FRAME [PROGRESS_FILE]
  ADDR      host:port or unix:/path
  MODE      message | forward | packed | gzip | zstd
  records carry {"log": "PREFIX-<n:08>", "seq": n} for n in START..START+COUNT, and the time
  1700000000 + n seconds plus n microseconds.
Prints "sent N acked M" and exits 0 only if every chunk was acked.
"""
import base64
import gzip
import os
import socket
import sys
import threading

import msgpack


def event_time(n):
    return msgpack.ExtType(0, (1700000000 + n).to_bytes(4, "big") + (n * 1000).to_bytes(4, "big"))


def record(prefix, n):
    return {"log": "%s-%08d" % (prefix, n), "seq": n}


def connect(addr):
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr[5:])
    else:
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    return s


def via_fluent_logger(addr, tag, prefix, start, count):
    from fluent import sender

    if addr.startswith("unix:"):
        host, port = "unix://" + addr[5:], 0
    else:
        host, port = addr.rsplit(":", 1)
        port = int(port)
    logger = sender.FluentSender(tag, host=host, port=port, nanosecond_precision=True)
    for n in range(start, start + count):
        ts = sender.EventTime(1700000000 + n, n * 1000)
        if not logger.emit_with_time(None, ts, record(prefix, n)):
            raise SystemExit("fluent-logger failed: %r" % logger.last_error)
    logger.close()
    print("sent %d acked 0" % count)


def frames(mode, tag, prefix, start, count, per_frame):
    for first in range(start, start + count, per_frame):
        ns = range(first, min(first + per_frame, start + count))
        chunk = base64.b64encode(os.urandom(16)).decode()
        entries = [[event_time(n), record(prefix, n)] for n in ns]
        option = {"chunk": chunk, "size": len(entries)}
        if mode == "forward":
            msg = [tag, entries, option]
        else:
            payload = b"".join(msgpack.packb(e) for e in entries)
            if mode == "gzip":
                # Two gzip members, as Fluentd writes a compressed chunk in pieces.
                half = len(entries) // 2
                payload = gzip.compress(b"".join(msgpack.packb(e) for e in entries[:half])) + \
                    gzip.compress(b"".join(msgpack.packb(e) for e in entries[half:]))
                option["compressed"] = "gzip"
            elif mode == "zstd":
                import zstandard
                payload = zstandard.ZstdCompressor().compress(payload)
                option["compressed"] = "zstd"
            msg = [tag, payload, option]
        yield chunk, len(entries), msgpack.packb(msg, use_bin_type=True)


def main():
    addr, mode, tag, prefix = sys.argv[1:5]
    start, count, per_frame = (int(x) for x in sys.argv[5:8])
    progress = sys.argv[8] if len(sys.argv) > 8 else None
    if mode == "message":
        return via_fluent_logger(addr, tag, prefix, start, count)
    s = connect(addr)
    pending = {}
    lock = threading.Lock()
    acked = [0]
    errors = []

    def read_acks():
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = s.recv(65536)
            if not data:
                break
            unpacker.feed(data)
            for obj in unpacker:
                chunk = obj.get("ack") if isinstance(obj, dict) else None
                with lock:
                    if chunk not in pending:
                        errors.append("unexpected ack %r" % (obj,))
                        continue
                    acked[0] += pending.pop(chunk)
                    if progress:
                        with open(progress + ".tmp", "w") as f:
                            f.write(str(acked[0]))
                        os.replace(progress + ".tmp", progress)
                    if not pending and sent_all.is_set():
                        return

    sent_all = threading.Event()
    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    sent = 0
    for chunk, n, frame in frames(mode, tag, prefix, start, count, per_frame):
        with lock:
            pending[chunk] = n
        s.sendall(frame)
        sent += n
    with lock:
        sent_all.set()
        done = not pending
    if not done:
        reader.join()
    s.close()
    print("sent %d acked %d" % (sent, acked[0]))
    if errors or pending:
        raise SystemExit("errors %r, %d chunks never acked (connection closed?)" % (errors, len(pending)))


main()
