"""Write a normalised ``docker save`` archive holding one flattened layer.

For ``docker_delivery=share`` the stored image stays a container archive,
but with the layers already merged (whiteouts applied, hostile entries
refused) so a compute host only copies one tar out. The result is a
classic docker-archive (``manifest.json`` + config + one layer) that
``docker load``, podman, skopeo and :func:`docker_rootfs.archive.open_image`
read.

The flattened layer is streamed straight into the output: its tar header
is written last, by seeking back, once its size is known, and its digest
is computed on the way; no second copy of the tree is made.
"""

import hashlib
import io
import json
import tarfile

LAYER_NAME = "rootfs/layer.tar"
BLOCK = 512


class _HashingWriter(io.RawIOBase):
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def writable(self):
        return True

    def write(self, b):
        b = bytes(b)
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)


def _header(name, size):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    # GNU format: sizes above 8 GiB in base-256, still one 512-byte block
    # for a short name, so the reserved block always fits.
    buf = ti.tobuf(format=tarfile.GNU_FORMAT)
    assert len(buf) == BLOCK
    return buf


def _add_bytes(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    ti.mtime = 0
    tf.addfile(ti, io.BytesIO(data))


def normalized_config(config_document, diff_id, source_digest, n_layers):
    doc = json.loads(json.dumps(config_document))  # deep copy
    doc["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    doc["history"] = [{
        "created": doc.get("created", "1970-01-01T00:00:00Z"),
        "created_by": "docker2vm: %d layer(s) of %s flattened into one"
                      % (n_layers, source_digest),
    }]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_single_layer_archive(img, out, progress=None):
    """Write ``img`` (an opened docker_rootfs image) to the seekable binary
    file ``out`` as a one-layer docker-archive. Returns the new config
    digest."""
    start = out.tell()
    out.write(b"\0" * BLOCK)                       # layer header, later
    hw = _HashingWriter(out)
    img.flatten(hw, progress)
    size = hw.n
    pad = (-size) % BLOCK
    out.write(b"\0" * pad)
    end = out.tell()
    out.seek(start)
    out.write(_header(LAYER_NAME, size))
    out.seek(end)

    diff_id = "sha256:" + hw.h.hexdigest()
    config = normalized_config(img.config_document, diff_id,
                               img.config.config_digest, len(img.layers))
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = [{"Config": config_hex + ".json",
                 "RepoTags": list(img.config.repo_tags),
                 "Layers": [LAYER_NAME]}]
    tf = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
    _add_bytes(tf, config_hex + ".json", config)
    _add_bytes(tf, "manifest.json",
               json.dumps(manifest, separators=(",", ":")).encode())
    tf.close()                                     # end-of-archive blocks
    return "sha256:" + config_hex
