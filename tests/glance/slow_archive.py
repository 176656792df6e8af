"""A docker-archive whose conversion takes CPU time but little disk: one
gzip layer holding one big file of zeros, written as repeated gzip members
(so building it is cheap). Its ratio is far above the default
``max_compression_ratio``: use it with that limit raised."""

import hashlib
import io
import json
import tarfile
import zlib

CHUNK = 64 << 20


def _gzip_member(data, level=1):
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def build_zero_archive(path, chunks=64, verify_digest=False):
    """Write the archive to ``path``: one file of ``chunks`` x 64 MiB of
    zeros. With ``verify_digest`` False the layer's diff_id is left wrong
    (computing it means hashing all of it): the conversion then fails at
    the very end, after doing all the work."""
    header = tarfile.TarInfo("zeros")
    header.size = chunks * CHUNK
    header.mode = 0o644
    head = header.tobuf(format=tarfile.GNU_FORMAT)
    tail = b"\0" * 1024
    zero_member = _gzip_member(b"\0" * CHUNK)
    layer = io.BytesIO()
    layer.write(_gzip_member(head))
    for _ in range(chunks):
        layer.write(zero_member)
    layer.write(_gzip_member(tail))
    diff_id = "sha256:" + "0" * 64
    if verify_digest:
        h = hashlib.sha256(head)
        z = b"\0" * CHUNK
        for _ in range(chunks):
            h.update(z)
        h.update(tail)
        diff_id = "sha256:" + h.hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/zeros"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["localhost/zeros:1"],
                            "Layers": ["layer.tar.gz"]}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in ((config_name, config), ("layer.tar.gz", layer.getvalue()),
                           ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path
