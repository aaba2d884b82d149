#!/usr/bin/env python3
"""Per-request cost of small tus PATCHes (a client that uploads in chunks), beside a HEAD of
the same upload measured in the same run (one keep-alive connection, no lock, one database
read: the baseline). A benchmark, not a test.

Usage: bench/chunks.py HOST:PORT [COUNT] [CHUNK_BYTES]   (a running pirus-catalogue's HTTP
address; bench/chunks.sh starts one)
"""
import base64
import http.client
import os
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
size = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
tus = {"Tus-Resumable": "1.0.0", "Authorization": "Bearer " + os.environ["PIRUS_BENCH_TOKEN"]}
connection = http.client.HTTPConnection(host, int(port))


def request(method, path, body=None, headers=None):
    connection.request(method, path, body=body, headers={**tus, **(headers or {})})
    response = connection.getresponse()
    response.read()
    return response


created = request("POST", "/uploads/files/", headers={
    "Upload-Length": str(count * size),
    "Upload-Metadata": "filename " + base64.b64encode(b"chunks.bin").decode(),
})
location = created.getheader("Location")
path = location[location.index("/uploads/"):]

started = time.perf_counter()
for _ in range(count):
    assert request("HEAD", path).status == 200
head = (time.perf_counter() - started) / count

chunk = b"x" * size
started = time.perf_counter()
for i in range(count):
    answer = request("PATCH", path, body=chunk, headers={
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": str(i * size),
    })
    assert answer.status == 204, answer.status
patch = (time.perf_counter() - started) / count

print(f"{count} requests each, {size}-byte chunks, one keep-alive connection")
print(f"HEAD (baseline)          {head * 1e3:7.2f} ms")
print(f"PATCH (durable, locked)  {patch * 1e3:7.2f} ms  ({patch / head:.1f}x HEAD)")
