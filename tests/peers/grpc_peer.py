#!/usr/bin/env python3
"""Independent gRPC peers for blockferry's tests, written with grpc-python and
no code of blockferry's: the protobuf framing is done by hand here.

  grpc_peer.py publish ENDPOINT DIR   a consensus node: streams the blocks of DIR
                                      (N.blk / N.blk.gz), each item exactly as in
                                      the file, waits for every acknowledgement,
                                      ends with EndStream RESET; prints "ack N"
  grpc_peer.py garbage ENDPOINT       sends one request that is not protobuf;
                                      prints "end_of_stream STATUS BLOCK_NUMBER"
  grpc_peer.py serve PORT OUT         a block node (grpc-python's server: response
                                      headers go out with the first response);
                                      writes each received block to OUT/N.blk and
                                      acknowledges it
"""
import gzip
import os
import queue
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/org.hiero.block.api.BlockStreamPublishService/publishBlockStream"
IDENTITY = lambda b: b  # noqa: E731 - requests and responses are raw bytes


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def fields(buf):
    """(field number, wire type, value) of a message; value is bytes or int."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = read_varint(buf, i)
            yield field, wire, buf[i : i + n]
            i += n
        elif wire == 0:
            v, i = read_varint(buf, i)
            yield field, wire, v
        else:
            raise ValueError(f"wire type {wire} not expected here")


def ld(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def uint(field, value):
    return varint(field << 3) + varint(value)


def header_number(item):
    for field, _, header in fields(item):
        if field == 1:
            return dict((f, v) for f, w, v in fields(header) if w == 0).get(3, 0)
    raise ValueError("the first item is not a block_header")


def read_blocks(directory):
    blocks = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(".blk.gz"):
            data = gzip.open(path).read()
        elif name.endswith(".blk"):
            data = open(path, "rb").read()
        else:
            continue
        items = [v for f, _, v in fields(data) if f == 1]
        blocks.append((header_number(items[0]), items))
    return sorted(blocks)


def response_of(message):
    """(kind, block_number[, status]) of a PublishStreamResponse."""
    for field, _, body in fields(message):
        inner = dict((f, v) for f, w, v in fields(body) if w == 0)
        return field, inner.get(1, 0), inner.get(2, 0)
    return None, None, None


def publish(endpoint, directory):
    blocks = read_blocks(directory)
    acked = set()
    done = threading.Event()

    def requests():
        for number, items in blocks:
            # Items as they are in the file, a few per request.
            for start in range(0, len(items), 64):
                batch = b"".join(ld(1, item) for item in items[start : start + 64])
                yield ld(1, batch)
            yield ld(3, uint(1, number))
        done.wait(60)
        last = blocks[-1][0]
        yield ld(2, uint(1, 1) + uint(2, blocks[0][0]) + uint(3, last))

    with grpc.insecure_channel(endpoint) as channel:
        call = channel.stream_stream(METHOD, request_serializer=IDENTITY, response_deserializer=IDENTITY)
        for message in call(requests(), timeout=120):
            kind, number, status = response_of(message)
            if kind == 1:
                print(f"ack {number}", flush=True)
                acked.add(number)
                if all(n in acked for n, _ in blocks):
                    done.set()
            else:
                print(f"response {kind} {number} {status}", flush=True)
                if kind == 2:
                    break
    missing = [n for n, _ in blocks if n not in acked]
    if missing:
        sys.exit(f"not acknowledged: {missing}")


def garbage(endpoint):
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.stream_stream(METHOD, request_serializer=IDENTITY, response_deserializer=IDENTITY)
        # Field 1 with wire type 7: no protobuf decoder accepts it.
        for message in call(iter([b"\x0f\x01\x02"]), timeout=30):
            kind, number, status = response_of(message)
            if kind == 2:
                body = next(v for f, _, v in fields(message) if f == 2)
                values = dict((f, v) for f, w, v in fields(body) if w == 0)
                print(f"end_of_stream {values.get(1, 0)} {values.get(2, 0)}", flush=True)
                return
    sys.exit("no EndOfStream")


def serve(port, out):
    os.makedirs(out, exist_ok=True)

    def handler(request_iterator, context):
        items = []
        for request in request_iterator:
            for field, _, body in fields(request):
                if field == 1:
                    items.extend(v for f, _, v in fields(body) if f == 1)
                elif field == 3:
                    number = dict((f, v) for f, w, v in fields(body) if w == 0).get(1, 0)
                    block = b"".join(ld(1, item) for item in items)
                    items = []
                    tmp = os.path.join(out, f"{number}.tmp")
                    with open(tmp, "wb") as f:
                        f.write(block)
                    os.rename(tmp, os.path.join(out, f"{number}.blk"))
                    yield ld(1, uint(1, number))
                elif field == 2:
                    return

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc = grpc.stream_stream_rpc_method_handler(handler, request_deserializer=IDENTITY, response_serializer=IDENTITY)
    service = grpc.method_handlers_generic_handler("org.hiero.block.api.BlockStreamPublishService",
                                                   {"publishBlockStream": rpc})
    server.add_generic_rpc_handlers((service,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"publish": publish, "garbage": garbage, "serve": lambda p, o: serve(int(p), o)}[command](*args)
