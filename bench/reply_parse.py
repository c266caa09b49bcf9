"""Parse cost of one probe reply: `registry.http11.read_reply` on a 1.4 KB /api/tags reply.

The reply sits whole in a StreamReader, so only parsing is timed (no socket, no event loop):
    .venv/bin/python bench/reply_parse.py [--number 20000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from registry.http11 import read_reply  # noqa: E402

BODY = (BASE_DIR / "tests" / "fixtures" / "ollama" / "tags.json").read_bytes()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nDate: Mon, 02 Jun 2025 10:00:00 GMT\r\n"
REPLIES = {
    "Content-Length": HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "chunked": HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
}


def parse(reader: asyncio.StreamReader) -> bytes:
    """Run read_reply to the end without a loop: the whole reply is buffered, so it never waits."""
    coro = read_reply(reader)
    try:
        coro.send(None)
    except StopIteration as done:
        return b"".join(done.value.parts)
    raise RuntimeError("read_reply waited for data")


def reader_with(raw: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    return reader


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    gc.disable()  # as in a sweep (registry.http11.run_sweep)
    for name, raw in REPLIES.items():
        assert parse(reader_with(raw)) == BODY
        runs = []
        for _ in range(args.repeat):
            readers = [reader_with(raw) for _ in range(args.number)]
            start = time.perf_counter()
            for reader in readers:
                parse(reader)
            runs.append((time.perf_counter() - start) / args.number * 1e6)
        print(f"{name:>14}  {len(raw)} bytes  median {statistics.median(runs):.2f} us  best {min(runs):.2f} us")


if __name__ == "__main__":
    asyncio.run(main())  # a StreamReader wants a running loop
