"""Layer encodings at the edge of the formats: what podman (and umoci)
accept, checked live, against what the core does (issue 9, part 3: "whatever
a mainstream runtime accepts and the core refuses is a bug; whatever the
core accepts that runtimes refuse is justified in the docs").

Each case is one hand-built layer (tests/fixtures/ocipatch.py, on the
skopeo-written ``basic-exec`` layout) with a correct diff_id, packed as an
OCI archive.  ``podman pull`` is run on it each time, so the runtime's
verdict is a fact of this machine, not of this file.  doc/source/corpus.md keeps
the table.
"""

import bz2
import gzip
import hashlib
import lzma
import os
import subprocess
import tarfile
import tempfile

import pytest
import zstandard

from docker_rootfs import errors
from docker_rootfs.archive import open_image
from tests import treecmp
from tests.fixtures import build_fixtures as bf
from tests.fixtures import ocipatch

pytestmark = pytest.mark.tools

TAR = bf.tar_bytes([(bf.ti("probe", tarfile.DIRTYPE, 0o755), None),
                    (bf.ti("probe/f"), b"hello\n" * 10)])
PLAIN_MT = ocipatch.PLAIN


def _unpadded(tar):
    end = tar.index(b"hello\n" * 10) + 60
    return tar[:end]


ONE_ZERO_BLOCK = _unpadded(TAR) + bytes((-len(_unpadded(TAR))) % 512) + bytes(512)
GARBAGE_AFTER_END = TAR + b"not a tar header " * 40

# name -> (blob, media type, uncompressed tar, what podman does, what the core should do)
# core: "same" (flatten like podman), "refuse" (a one-line error; the
# runtimes refuse too or the docs justify it).
CASES = {
    # Media type and content disagree: podman (containers/image) and
    # Docker/containerd sniff the compression; umoci 0.4 trusts the type.
    "xz-as-plain-type": (lzma.compress(TAR), PLAIN_MT, TAR, "accepts", "same"),
    "bzip2-as-plain-type": (bz2.compress(TAR), PLAIN_MT, TAR, "accepts", "same"),
    "gzip-as-plain-type": (gzip.compress(TAR), PLAIN_MT, TAR, "accepts", "same"),
    "plain-as-gzip-type": (TAR, ocipatch.GZIP, TAR, "accepts", "same"),
    "zstd-as-gzip-type": (zstandard.ZstdCompressor().compress(TAR), ocipatch.GZIP, TAR,
                          "accepts", "same"),
    # Tar endings Go's archive/tar takes.
    "unpadded-end": (_unpadded(TAR), PLAIN_MT, _unpadded(TAR), "accepts", "same"),
    "one-zero-block-end": (ONE_ZERO_BLOCK, PLAIN_MT, ONE_ZERO_BLOCK, "accepts", "same"),
    "garbage-after-end": (GARBAGE_AFTER_END, PLAIN_MT, GARBAGE_AFTER_END, "accepts", "same"),
    # gzip framing.
    "gzip-multimember": (gzip.compress(TAR[:700], mtime=0) + gzip.compress(TAR[700:], mtime=0),
                         ocipatch.GZIP, TAR, "accepts", "same"),
    "gzip-trailing-zeros": (gzip.compress(TAR, mtime=0) + bytes(100), ocipatch.GZIP, TAR,
                            "refuses", "any"),
}

# Known core bugs (reported to the lead, issue 9 part 3): strict, so a fix
# turns them into failures until the mark is removed.
CORE_BUGS = {}   # name -> a core bug the probe shows (none open)


@pytest.fixture(scope="module")
def probe_archives(fixture_index, tmp_path_factory):
    base = fixture_index["layout_paths"]["basic-exec"]
    top = tmp_path_factory.mktemp("probes")
    out = {}
    for name, (blob, mt, raw, _, _) in CASES.items():
        lay = ocipatch.Layout(str(base), str(top / name))
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        lay.set_layers([ocipatch.Layer(blob, mt, diff_id)], keep_base=True)
        out[name] = lay.write_oci_archive_raw(str(top / (name + ".tar")))
    return out


def podman_flatten(archive, tmp_path):
    """(True, export manifest) or (False, last error line) from podman."""
    root = tmp_path / "podman"
    run = tempfile.mkdtemp(prefix="d2v-pr-", dir="/tmp")
    tl = ["podman", "--root", str(root), "--runroot", run, "--storage-driver", "overlay"]
    try:
        p = subprocess.run(tl + ["pull", "-q", "oci-archive:" + archive],
                           capture_output=True, text=True)
        if p.returncode:
            return False, (p.stderr.strip().splitlines() or [""])[-1]
        image = p.stdout.split()[-1]
        cid = subprocess.run(tl + ["create", image, "/bin/true"], capture_output=True,
                             text=True, check=True).stdout.split()[-1]
        exp = str(tmp_path / "export.tar")
        subprocess.run(tl + ["export", "-o", exp, cid], capture_output=True, check=True)
        return True, treecmp.manifest_from_tar(exp)
    finally:
        subprocess.run(tl + ["system", "reset", "-f"], capture_output=True)
        bf.unmount_under(str(root))
        bf.unmount_under(run)
        subprocess.run(["rm", "-rf", run, str(root)])


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=CORE_BUGS[n]))
    if n in CORE_BUGS else n for n in CASES])
def test_probe(name, probe_archives, tmp_path):
    blob, mt, raw, want_podman, want_core = CASES[name]
    archive = probe_archives[name]
    ok, podman = podman_flatten(archive, tmp_path)
    assert ok == (want_podman == "accepts"), "podman changed its mind: %s" % (podman,)
    out = tmp_path / "flat.tar"
    try:
        with open_image(archive) as img, open(out, "wb") as f:
            img.flatten(f)
    except errors.Docker2VMError as exc:
        assert "\n" not in str(exc)
        assert want_core in ("refuse", "any"), "core refuses what podman accepts: %s" % exc
        return
    assert want_core in ("same", "any")
    if ok:
        got = treecmp.manifest_from_tar(out)
        diff = treecmp.diff_manifests(podman, got, "podman", "docker2vm")
        assert not diff, treecmp.format_diff(diff)
    else:
        assert os.path.getsize(out) > 0
