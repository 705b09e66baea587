#!/usr/bin/env python3
"""Tests tools/fetch-fineweb against a local HTTP server that plays Hugging Face.

The server serves the dataset's file listing (paginated, with Git LFS sha256s)
and the shards (small, made here, in the real llm.c format), honours Range
requests or not, and can cut a download short or serve corrupt bytes. Each case
runs the script as a user would and checks its exit code, its files and the
requests it made. Run by tests/test_fineweb.cpp; prints 'N passed, 0 failed'.
"""
import hashlib
import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "fetch-fineweb")
REPO = "kjj0/fineweb10B-gpt2"


def shard_bytes(n_tokens, seed):
    head = struct.pack("<3i", 20240520, 1, n_tokens) + b"\0" * (1024 - 12)
    toks = struct.pack("<%dH" % n_tokens, *[(seed * 7919 + i * 31) % 50257 for i in range(n_tokens)])
    return head + toks


class World:
    def __init__(self):
        self.files = {"fineweb_val_000000.bin": shard_bytes(3000, 0)}
        for i in range(1, 6):
            self.files["fineweb_train_%06d.bin" % i] = shard_bytes(20000 + 1000 * i, i)
        self.honour_range = True
        self.cut_after = {}  # name -> bytes after which the connection is dropped (once)
        self.corrupt = set()  # names served with one byte flipped
        self.unlisted = set()  # names missing from the listing (no published sha256)
        self.requests = []  # (name, Range header)

    def listing(self):
        out = []
        for name, b in sorted(self.files.items()):
            if name in self.unlisted:
                continue
            out.append({"type": "file", "path": name, "size": len(b), "oid": "0" * 40,
                        "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}})
        out.append({"type": "file", "path": ".gitattributes", "size": 10, "oid": "1" * 40})
        return out


def make_handler(world):
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            tree = f"/api/datasets/{REPO}/tree/main"
            if self.path.startswith(tree):
                entries = world.listing()
                page = 2 if self.path.endswith("?cursor=2") else 1
                half = len(entries) // 2
                body = json.dumps(entries[:half] if page == 1 else entries[half:]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if page == 1:
                    self.send_header("Link", f'<http://127.0.0.1:{self.server.server_port}{tree}?cursor=2>; rel="next"')
                self.end_headers()
                self.wfile.write(body)
                return
            prefix = f"/datasets/{REPO}/resolve/main/"
            name = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if name not in world.files:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            world.requests.append((name, rng))
            data = bytearray(world.files[name])
            if name in world.corrupt:
                data[-1] ^= 0xFF
            start = 0
            if rng and world.honour_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = bytes(data[start:])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = world.cut_after.pop(name, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return H


class Server:
    def __init__(self, world):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(world))
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def run(args):
    p = subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


passed, failed = 0, 0


def check(cond, what, out=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAILED: {what}\n{out}")


def same(d, world, name):
    p = os.path.join(d, name)
    return os.path.exists(p) and open(p, "rb").read() == world.files[name]


def main():
    tmp = tempfile.mkdtemp()
    try:
        world = World()
        srv = Server(world)
        d = os.path.join(tmp, "fw")
        base = ["--dir", d, "--base", srv.base]

        # A fresh download of the val shard and train shards 1..2, checked against
        # the published sha256s (the second page of the listing included).
        code, out = run(["2"] + base)
        check(code == 0, "fresh download exits 0", out)
        for n in ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]:
            check(same(d, world, n), f"{n} downloaded intact", out)
            check(os.path.exists(os.path.join(d, n + ".sha256")), f"{n} recorded as checked")
        check(not os.path.exists(os.path.join(d, "fineweb_train_000003.bin")), "COUNT limits the train shards")
        check(not [f for f in os.listdir(d) if f.endswith(".part")], "no .part left")
        check(len(world.requests) == 3, "one request per shard", str(world.requests))

        # Again: nothing is downloaded.
        world.requests.clear()
        code, out = run(["2"] + base)
        check(code == 0 and world.requests == [] and out.count("present, checked") == 3, "a second run downloads nothing", out)

        # Resume: a partial .part continues with a Range request from its size.
        part = os.path.join(d, "fineweb_train_000003.bin.part")
        open(part, "wb").write(world.files["fineweb_train_000003.bin"][:5000])
        world.requests.clear()
        code, out = run(["3"] + base)
        check(code == 0 and same(d, world, "fineweb_train_000003.bin"), "a partial download is completed", out)
        check(world.requests == [("fineweb_train_000003.bin", "bytes=5000-")], "resumed with Range: bytes=5000-", str(world.requests))
        check("continued from 5000" in out, "the resume is reported", out)

        # A connection cut mid-shard: exit 1 and a .part; the next run finishes it.
        world.cut_after["fineweb_train_000004.bin"] = 7000
        world.requests.clear()
        code, out = run(["4"] + base)
        part = os.path.join(d, "fineweb_train_000004.bin.part")
        check(code == 1 and "run again" in out, "a cut download exits 1 saying to run again", out)
        check(not os.path.exists(os.path.join(d, "fineweb_train_000004.bin")), "a cut download has no final file")
        have = os.path.getsize(part) if os.path.exists(part) else -1
        check(0 < have < len(world.files["fineweb_train_000004.bin"]), f"the cut download kept its bytes ({have})", out)
        world.requests.clear()
        code, out = run(["4"] + base)
        check(code == 0 and same(d, world, "fineweb_train_000004.bin"), "the next run completes the cut shard", out)
        check(world.requests == [("fineweb_train_000004.bin", f"bytes={have}-")], "it asked for the rest only", str(world.requests))

        # A server that ignores Range: the shard starts over and is still right.
        world.honour_range = False
        part = os.path.join(d, "fineweb_train_000005.bin.part")
        open(part, "wb").write(b"garbage" * 100)
        code, out = run(["5"] + base)
        check(code == 0 and same(d, world, "fineweb_train_000005.bin"), "without Range support the shard is fetched whole", out)
        check("ignored the range request" in out, "the restart is reported", out)
        world.honour_range = True

        # Corrupt bytes: the sha256 check refuses them, nothing is left under the final name.
        d2 = os.path.join(tmp, "fw2")
        world.corrupt.add("fineweb_train_000001.bin")
        code, out = run(["1", "--dir", d2, "--base", srv.base])
        check(code == 1 and "is not the published" in out, "a corrupt shard fails its sha256 check", out)
        check(not os.path.exists(os.path.join(d2, "fineweb_train_000001.bin")), "a corrupt shard is not kept")
        check(not os.path.exists(os.path.join(d2, "fineweb_train_000001.bin.part")), "a corrupt download is removed")
        world.corrupt.clear()

        # A file already in place but wrong is fetched again.
        open(os.path.join(d2, "fineweb_train_000001.bin"), "wb").write(b"x" * 100)
        code, out = run(["1", "--dir", d2, "--base", srv.base])
        check(code == 0 and same(d2, world, "fineweb_train_000001.bin"), "a wrong file in place is replaced", out)

        # No published sha256: the header and size are still checked.
        d3 = os.path.join(tmp, "fw3")
        world.unlisted.add("fineweb_train_000001.bin")
        code, out = run(["1", "--dir", d3, "--base", srv.base])
        check(code == 0 and "no published sha256" in out and same(d3, world, "fineweb_train_000001.bin"), "unlisted shard: header check", out)
        world.files["fineweb_train_000001.bin"] = world.files["fineweb_train_000001.bin"][:-2]  # one token short of its header
        os.remove(os.path.join(d3, "fineweb_train_000001.bin"))
        os.remove(os.path.join(d3, "fineweb_train_000001.bin.sha256"))
        code, out = run(["1", "--dir", d3, "--base", srv.base])
        check(code == 1 and "header says" in out, "a shard whose size disagrees with its header is refused", out)
        world.unlisted.clear()

        # Bad arguments: exit 2.
        for args in (["0"], ["104"], ["abc"], ["--bogus"], ["1", "2"], ["--dir"]):
            code, out = run(args + ["--base", srv.base] if args != ["--dir"] else args)
            check(code == 2, f"bad arguments {args} exit 2", out)
        srv.stop()

        # No server at all: the listing fails, then the download: exit 1, a clear message.
        code, out = run(["1", "--dir", os.path.join(tmp, "fw4"), "--base", "http://127.0.0.1:9"])
        check(code == 1 and "cannot read the published checksums" in out, "an unreachable server exits 1", out)
    finally:
        shutil.rmtree(tmp)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
