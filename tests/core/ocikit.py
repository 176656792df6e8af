"""Assemble OCI / docker-save archives around given layer tars, for tests
of the archive reader's own checks (digests, media types, selection).
Real-tool archives are used wherever a tool can write the case
(tests/fixtures/); these cover what no tool writes on purpose.
"""

import gzip
import hashlib
import io
import json
import tarfile

import zstandard

from docker_rootfs.archive import layouts


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data, how):
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


MEDIA = {"none": "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def config_blob(diff_ids, arch="amd64", cfg=None):
    return json.dumps({"architecture": arch, "os": "linux", "config": cfg or {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


class OCIBuilder:
    def __init__(self):
        self.blobs = {}
        self.index = []

    def blob(self, data):
        d = sha(data)
        self.blobs[d] = data
        return d

    def image(self, layers, compression="none", arch="amd64", tag=None, cfg=None,
              media_type=None, platform=True):
        descs = []
        for raw in layers:
            c = compress(raw, compression)
            descs.append({"mediaType": media_type or MEDIA[compression], "digest": self.blob(c),
                          "size": len(c)})
        config = config_blob([sha(raw) for raw in layers], arch, cfg)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": layouts.OCI_MANIFEST,
                               "config": {"mediaType": layouts.OCI_CONFIG,
                                          "digest": self.blob(config), "size": len(config)},
                               "layers": descs}).encode()
        desc = {"mediaType": layouts.OCI_MANIFEST, "digest": self.blob(manifest),
                "size": len(manifest)}
        if platform:
            desc["platform"] = {"os": "linux", "architecture": arch}
        if tag:
            desc["annotations"] = {layouts.REF_NAME: tag}
        self.index.append(desc)
        return desc

    def write(self, path, tamper=None):
        files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                 "index.json": json.dumps({"schemaVersion": 2, "manifests": self.index}).encode()}
        for d, data in self.blobs.items():
            files["blobs/sha256/" + d.split(":")[1]] = data
        if tamper:
            tamper(files)
        write_tar(path, files)
        return path


def write_tar(path, files):
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
