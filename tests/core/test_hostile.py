"""Hostile archives: refused cleanly, and nothing written outside the output.

Hostile LAYER tars are hand-built with tarfile (no real tool writes them);
the archive AROUND them is genuine: an OCI layout written by skopeo (from
the fixture build) whose layers tests/fixtures/ocipatch.py replaces, fixing
every digest, and the outer archive is then written by ``skopeo copy``
(oci-archive and docker-archive).  Corruption skopeo would refuse to copy
(flipped bytes, bad JSON, missing blobs) is applied to a skopeo-written
archive afterwards.

Every case runs with TMPDIR and the working directory inside a sandbox and
with symlink/hard-link targets pointing at a SENTINEL directory outside
the image: afterwards the sentinel must be byte-for-byte unchanged and the
sandbox must hold nothing but the output file.

Expectations:
* ``refuse``: a Docker2VMError (of the named class when given) with a
  one-line message; the CLI exits 1 printing exactly one line.
* ``contain``: the core may refuse (as above) OR neutralise the entry, but
  then the flattened tar must be safe to extract (tests/treecmp.py
  check_tar_safe: no absolute or ``..`` names, nothing below a symlink, hard
  links only to earlier members) and the entry must land INSIDE the tree,
  at the path resolved within the root (what umoci/containerd do).
"""

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zlib

import pytest

from docker_rootfs import errors
from docker_rootfs.archive import open_image
from docker_rootfs.limits import Limits
from tests import treecmp
from tests.fixtures import ocipatch

MiB = 1 << 20
DOCKER2VM = [str(pathlib.Path(sys.executable).with_name("docker2vm"))]
if not os.path.exists(DOCKER2VM[0]):
    DOCKER2VM = [sys.executable, "-m", "docker_rootfs.cli"]


# --------------------------------------------------------------------------
# Building hostile layers
# --------------------------------------------------------------------------

def ti(name, type=tarfile.REGTYPE, mode=0o644, linkname=""):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.linkname, t.mtime = type, mode, linkname, 1700000000
    return t


def layer(*members, fmt=tarfile.PAX_FORMAT):
    """A tar from (name, kind, arg) triples: kind file/dir/sym/link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, arg in members:
            if kind == "file":
                data = arg if isinstance(arg, bytes) else arg.encode()
                t = ti(name)
                t.size = len(data)
                tf.addfile(t, io.BytesIO(data))
            elif kind == "dir":
                tf.addfile(ti(name, tarfile.DIRTYPE, 0o755))
            elif kind == "sym":
                tf.addfile(ti(name, tarfile.SYMTYPE, 0o777, arg))
            elif kind == "link":
                tf.addfile(ti(name, tarfile.LNKTYPE, 0o644, arg))
    return buf.getvalue()


def gzip_bomb(zero_mib):
    """(gzip blob, diff_id): a tar holding one file of ``zero_mib`` MiB of
    zeros, gzip'ed to ~1/1000 of that without ever building it in memory
    (deflate output for a MiB of zeros is identical from the third MiB on)."""
    t = ti("bomb")
    t.size = zero_mib * MiB
    hdr = t.tobuf(tarfile.PAX_FORMAT)
    chunk = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [c.compress(hdr + chunk) + c.flush(zlib.Z_SYNC_FLUSH)]
    steady = [c.compress(chunk) + c.flush(zlib.Z_SYNC_FLUSH) for _ in range(2)]
    assert steady[0] == steady[1]
    body = steady[0] * (zero_mib - 1)
    tail = c.compress(bytes(1024)) + c.flush(zlib.Z_FINISH)
    crc = zlib.crc32(hdr)
    sha = hashlib.sha256(hdr)
    for _ in range(zero_mib):
        crc = zlib.crc32(chunk, crc)
        sha.update(chunk)
    crc = zlib.crc32(bytes(1024), crc)
    sha.update(bytes(1024))
    total = len(hdr) + zero_mib * MiB + 1024
    gz = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + parts[0] + body + tail
          + crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little"))
    return gz, "sha256:" + sha.hexdigest()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentinel")
    (d / "canary").write_text("HOST CANARY - must never be read or changed\n")
    (d / "sub").mkdir()
    return d


def snapshot(d):
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            data = open(p, "rb").read() if os.path.isfile(p) and not os.path.islink(p) else None
            out[os.path.relpath(p, d)] = (st.st_mode, data)
    return out


def _layers_for(case, s):
    """The hostile layers of one case; s = sentinel path without leading '/'."""
    S = "/" + s
    up = "../" * 12
    return {
        "traversal-dotdot": [layer(("ok", "file", "x"), ("../escape-dotdot", "file", "pwned"))],
        "traversal-nested": [layer(("a", "dir", None), ("a/../../escape-nested", "file", "pwned"))],
        "traversal-deep": [layer(("a/b", "dir", None),
                                 ("a/b/" + up + s + "/pwned-deep", "file", "pwned"))],
        "hardlink-outside-rel": [layer(("x", "link", "../../etc/passwd"))],
        "hardlink-outside-deep": [layer(("x", "link", up + s + "/canary"))],
        "hardlink-abs-missing": [layer(("x", "link", S + "/canary"))],
        "hardlink-via-symlink": [layer(("evil", "sym", S)),
                                 layer(("x", "link", "evil/canary"))],
        "absolute-path": [layer((S + "/abs-pwned", "file", "pwned"))],
        "symlink-escape-abs": [layer(("evil", "sym", S)),
                               layer(("evil/pwned", "file", "pwned"))],
        "symlink-escape-rel": [layer(("evil", "sym", up + s)),
                               layer(("evil/pwned", "file", "pwned"))],
        "symlink-escape-same-layer": [layer(("evil", "sym", S), ("evil/pwned", "file", "pwned"))],
        "symlink-escape-chain": [layer(("a", "sym", "b"), ("b", "sym", up + s)),
                                 layer(("a/sub/pwned", "file", "pwned"))],
        "symlink-escape-dir-entry": [layer(("evil", "sym", S)),
                                     layer(("evil/newdir", "dir", None),
                                           ("evil/newdir/pwned", "file", "pwned"))],
        "symlink-then-whiteout": [layer(("evil", "sym", S)),
                                  layer(("evil/.wh.canary", "file", ""))],
        "whiteout-dotdot": [layer(("keep", "file", "kept")),
                            layer((".wh...", "file", ""), ("x/.wh...", "file", ""))],
        "dot-symlink": [layer((".", "sym", S), ("pwned", "file", "pwned"))],
        "dot-file": [layer((".", "file", "not a dir"), ("after", "file", "x"))],
    }[case]


# case -> (expectation, error class or None, extra check, limits)
CONTAIN_CASES = {
    # path (inside the output tree) where the entry must land if not refused
    "absolute-path": None,
    "symlink-escape-abs": "pwned",
    "symlink-escape-rel": "pwned",
    "symlink-escape-same-layer": "pwned",
    "symlink-escape-chain": "sub/pwned",
    "symlink-escape-dir-entry": "newdir/pwned",
    "symlink-then-whiteout": None,
    "whiteout-dotdot": None,
    "dot-symlink": None,
    "dot-file": None,
}
REFUSE_CASES = {
    "traversal-dotdot": errors.UnsafeEntry,
    "traversal-nested": errors.UnsafeEntry,
    "traversal-deep": errors.UnsafeEntry,
    "hardlink-outside-rel": errors.UnsafeEntry,
    "hardlink-outside-deep": errors.UnsafeEntry,
    # these two name a file that does not exist INSIDE the image either way
    "hardlink-abs-missing": errors.ArchiveError,
    "hardlink-via-symlink": errors.ArchiveError,
}


@pytest.fixture(scope="module")
def base_layout(fixture_index):
    return fixture_index["layout_paths"]["basic-exec"]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def make_archive(base_layout, hostile_dir, name, layers, kind="oci"):
    """Wrap layer tars (bytes or ocipatch.Layer) in a skopeo-written archive."""
    work = hostile_dir / ("layout-" + name + "-" + kind)
    lay = ocipatch.Layout(str(base_layout), str(work))
    lay.set_layers([l if isinstance(l, ocipatch.Layer) else ocipatch.Layer.from_tar(l)
                    for l in layers])
    out = hostile_dir / ("%s.%s.tar" % (name, kind))
    if kind == "oci":
        lay.write_oci_archive(str(out))
    else:
        lay.write_docker_archive(str(out))
    return out


class Sandbox:
    def __init__(self, root, sentinel):
        self.root = root
        self.sentinel = sentinel
        self.cwd = root / "cwd"
        self.tmp = root / "tmp"
        self.cwd.mkdir()
        self.tmp.mkdir()
        self.out = self.cwd / "out.tar"
        self.before = snapshot(sentinel)

    def check_nothing_outside(self):
        assert snapshot(self.sentinel) == self.before, "sentinel directory was changed"
        left = sorted(p.name for p in self.cwd.iterdir() if p != self.out)
        assert not left, "files written next to the output: %s" % left
        left = sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*"))
        assert not left, "temporary files left behind: %s" % left


@pytest.fixture
def sandbox(tmp_path, sentinel, monkeypatch):
    sb = Sandbox(tmp_path, sentinel)
    monkeypatch.setenv("TMPDIR", str(sb.tmp))
    monkeypatch.setattr("tempfile.tempdir", str(sb.tmp))
    monkeypatch.chdir(sb.cwd)
    yield sb


def api_flatten(archive, sb, limits=None, **kw):
    """Flatten through the API; returns None on success or the error."""
    try:
        with open(sb.out, "wb") as f:
            with open_image(str(archive), limits=limits or Limits(), **kw) as img:
                img.flatten(f)
    except errors.Docker2VMError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, "error message is not one line: %r" % msg
        return exc
    return None


def cli(argv, sb):
    proc = subprocess.run(DOCKER2VM + argv, cwd=sb.cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, TMPDIR=str(sb.tmp)), timeout=300)
    return proc


def assert_cli_refuses(archive, sb, extra=()):
    proc = cli(["flatten", str(archive), "-o", str(sb.out)] + list(extra), sb)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, "exit %d, stderr: %s" % (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("docker2vm: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def assert_contained(out, sentinel, landing):
    problems = treecmp.check_tar_safe(out)
    assert not problems, "flattened tar is unsafe:\n" + "\n".join(problems)
    m = treecmp.manifest_from_tar(out)
    for path, e in m.items():
        assert e.sha256 != hashlib.sha256((sentinel / "canary").read_bytes()).hexdigest(), \
            "host file content leaked into %s" % path
    if "." in m:
        assert m["."].type == "dir", "root of the tree is a %s" % m["."].type
    if landing:
        inroot = str(sentinel).lstrip("/") + "/" + landing
        assert inroot in m and m[inroot].type == "file", (
            "expected %s inside the tree (the symlink resolved within the root); "
            "tree has: %s" % (inroot, sorted(m)[:40]))


# --------------------------------------------------------------------------
# Path, link and symlink tricks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["oci", "docker"])
@pytest.mark.parametrize("case", sorted(REFUSE_CASES))
def test_refused(case, kind, base_layout, hostile_dir, sandbox, sentinel):
    archive = make_archive(base_layout, hostile_dir, case,
                           _layers_for(case, str(sentinel).lstrip("/")), kind)
    exc = api_flatten(archive, sandbox)
    assert exc is not None, "%s was accepted" % case
    assert isinstance(exc, REFUSE_CASES[case]), "%s: %r" % (case, exc)
    sandbox.check_nothing_outside()
    assert_cli_refuses(archive, sandbox)
    sandbox.check_nothing_outside()


@pytest.mark.parametrize("kind", ["oci", "docker"])
@pytest.mark.parametrize("case", sorted(CONTAIN_CASES))
def test_contained(case, kind, base_layout, hostile_dir, sandbox, sentinel):
    archive = make_archive(base_layout, hostile_dir, case,
                           _layers_for(case, str(sentinel).lstrip("/")), kind)
    exc = api_flatten(archive, sandbox)
    sandbox.check_nothing_outside()
    if exc is not None:
        assert isinstance(exc, errors.ArchiveError), repr(exc)
        assert_cli_refuses(archive, sandbox)
    else:
        assert_contained(sandbox.out, sentinel, CONTAIN_CASES[case])
        if case == "whiteout-dotdot":
            assert "keep" in treecmp.manifest_from_tar(sandbox.out), \
                "a .wh... whiteout deleted the lower layers"
        proc = cli(["flatten", str(archive), "-o", str(sandbox.out)], sandbox)
        assert proc.returncode == 0, proc.stderr
    sandbox.check_nothing_outside()


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bomb_archive(base_layout, hostile_dir):
    gz, diff_id = gzip_bomb(2048)            # 2 GiB of zeros in ~2 MB
    assert len(gz) < 4 * MiB
    return make_archive(base_layout, hostile_dir, "bomb",
                        [ocipatch.Layer(gz, ocipatch.GZIP, diff_id)], "oci")


@pytest.mark.parametrize("limits", [
    Limits(),                                    # ratio limit after the grace bytes
    Limits(max_total_bytes=256 * MiB, max_compression_ratio=10 ** 9),
    Limits(max_file_size=100 * MiB, max_compression_ratio=10 ** 9),
], ids=["default-ratio", "max_total_bytes", "max_file_size"])
def test_decompression_bomb(limits, bomb_archive, sandbox):
    exc = api_flatten(bomb_archive, sandbox, limits=limits)
    assert isinstance(exc, errors.LimitExceeded), repr(exc)
    sandbox.check_nothing_outside()


def test_decompression_bomb_cli(bomb_archive, sandbox):
    line = assert_cli_refuses(bomb_archive, sandbox)
    assert "limit" in line
    sandbox.check_nothing_outside()


def test_too_many_entries(base_layout, hostile_dir, sandbox):
    many = layer(*[("f%04d" % i, "file", "x") for i in range(300)])
    archive = make_archive(base_layout, hostile_dir, "entries", [many])
    assert isinstance(api_flatten(archive, sandbox, Limits(max_entries=100)),
                      errors.LimitExceeded)
    assert api_flatten(archive, sandbox, Limits(max_entries=1000)) is None
    line = assert_cli_refuses(archive, sandbox, ["--max-entries", "100"])
    assert "max_entries" in line
    sandbox.check_nothing_outside()


def test_too_many_layers(base_layout, hostile_dir, sandbox):
    layers = [layer(("l%d" % i, "file", str(i))) for i in range(6)]
    archive = make_archive(base_layout, hostile_dir, "layers", layers)
    exc = None
    try:
        with open(sandbox.out, "wb") as f:
            with open_image(str(archive), limits=Limits(max_layers=3)) as img:
                img.flatten(f)
    except errors.Docker2VMError as e:
        exc = e
    assert isinstance(exc, errors.LimitExceeded), repr(exc)
    assert api_flatten(archive, sandbox, Limits(max_layers=6)) is None
    line = assert_cli_refuses(archive, sandbox, ["--max-layers", "3"])
    assert "max_layers" in line
    sandbox.check_nothing_outside()


def test_path_too_long(base_layout, hostile_dir, sandbox):
    deep = "/".join(["d" * 200] * 25) + "/f"           # ~5 KB path
    archive = make_archive(base_layout, hostile_dir, "longpath", [layer((deep, "file", "x"))])
    exc = api_flatten(archive, sandbox)
    assert isinstance(exc, (errors.LimitExceeded, errors.UnsafeEntry)), repr(exc)
    sandbox.check_nothing_outside()


# --------------------------------------------------------------------------
# Broken archives
# --------------------------------------------------------------------------

def test_truncated_layer(base_layout, hostile_dir, sandbox):
    full = layer(("big", "file", os.urandom(20000)), ("after", "file", "x"))
    cut = full[:512 + 7000]                      # mid-way through big's data
    archive = make_archive(base_layout, hostile_dir, "truncated", [cut])
    exc = api_flatten(archive, sandbox)
    assert isinstance(exc, errors.ArchiveError), repr(exc)
    assert_cli_refuses(archive, sandbox)
    sandbox.check_nothing_outside()


@pytest.fixture(scope="module")
def good_archives(base_layout, hostile_dir):
    layers = [layer(("a", "dir", None), ("a/f", "file", "hello " * 100)),
              layer(("b", "file", "second layer"))]
    return {kind: make_archive(base_layout, hostile_dir, "good", layers, kind)
            for kind in ("oci", "docker")}


def test_good_archives_flatten(good_archives, sandbox):
    """Control: the untampered archives the corruption tests start from work."""
    for kind, archive in good_archives.items():
        assert api_flatten(archive, sandbox) is None, kind
        m = treecmp.manifest_from_tar(sandbox.out)
        assert {"a", "a/f", "b"} <= set(m), (kind, sorted(m))


def _layer_members(archive):
    """Names of the layer blobs in an archive (largest first)."""
    with tarfile.open(archive) as tf:
        members = [m for m in tf if m.isfile()]
        names = {m.name for m in members}
        if "manifest.json" in names:
            manifest = json.load(tf.extractfile("manifest.json"))
            layers = manifest[0]["Layers"]
        else:
            index = json.load(tf.extractfile("index.json"))
            mdig = index["manifests"][0]["digest"].replace(":", "/")
            manifest = json.load(tf.extractfile("blobs/" + mdig))
            layers = ["blobs/" + l["digest"].replace(":", "/") for l in manifest["layers"]]
    return layers


def _flip(data):
    b = bytearray(data)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_digest_mismatch(kind, good_archives, hostile_dir, sandbox):
    target = _layer_members(good_archives[kind])[0]
    bad = ocipatch.rewrite_tar(good_archives[kind], hostile_dir / ("flip-%s.tar" % kind),
                               lambda n, d: _flip(d) if n == target else d)
    exc = api_flatten(bad, sandbox)
    assert isinstance(exc, errors.DigestMismatch), repr(exc)
    assert_cli_refuses(bad, sandbox)
    sandbox.check_nothing_outside()


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_missing_blob(kind, good_archives, hostile_dir, sandbox):
    target = _layer_members(good_archives[kind])[-1]
    bad = ocipatch.rewrite_tar(good_archives[kind], hostile_dir / ("missing-%s.tar" % kind),
                               lambda n, d: None if n == target else d)
    exc = api_flatten(bad, sandbox)
    assert isinstance(exc, errors.ArchiveError), repr(exc)
    assert_cli_refuses(bad, sandbox)
    sandbox.check_nothing_outside()


@pytest.mark.parametrize("kind,member,payload", [
    ("docker", "manifest.json", b'[{"Config": "x.json", "Layers": ['),
    ("docker", "manifest.json", b'{"not": "a list"}'),
    ("docker", "manifest.json", b'[{"Config": 7, "Layers": "nope"}]'),
    ("oci", "index.json", b'{"schemaVersion": 2, "manifests": [{"digest": '),
    ("oci", "index.json", b'{"schemaVersion": 2, "manifests": "nope"}'),
    ("oci", "index.json", b'\xff\xfe not json'),
], ids=["docker-truncated", "docker-not-list", "docker-bad-types", "oci-truncated",
        "oci-bad-types", "oci-binary"])
def test_malformed_json(kind, member, payload, good_archives, hostile_dir, sandbox):
    bad = ocipatch.rewrite_tar(good_archives[kind],
                               hostile_dir / ("json-%s-%d.tar" % (kind, hash(payload) & 0xffff)),
                               lambda n, d: payload if n.lstrip("./") == member else d)
    exc = api_flatten(bad, sandbox)
    assert isinstance(exc, errors.ArchiveError), repr(exc)
    assert_cli_refuses(bad, sandbox)
    sandbox.check_nothing_outside()


def test_malformed_manifest_blob(base_layout, hostile_dir, sandbox):
    """An OCI manifest blob that is not JSON (digest fixed so only JSON is wrong)."""
    lay = ocipatch.Layout(str(base_layout), str(hostile_dir / "layout-badmanifest"))
    bad = b'{"schemaVersion": 2, "config": '
    d = lay.write_blob(bad)
    lay.index["manifests"][0].update(digest=d, size=len(bad))
    with open(os.path.join(lay.dir, "index.json"), "w") as f:
        json.dump(lay.index, f)
    archive = lay.write_oci_archive_raw(str(hostile_dir / "badmanifest.tar"))
    exc = api_flatten(archive, sandbox)
    assert isinstance(exc, errors.ArchiveError), repr(exc)
    assert_cli_refuses(archive, sandbox)
    sandbox.check_nothing_outside()


def test_not_an_archive(hostile_dir, sandbox):
    junk = hostile_dir / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    assert isinstance(api_flatten(junk, sandbox), errors.ArchiveError)
    empty = hostile_dir / "empty.tar"
    empty.write_bytes(b"")
    assert isinstance(api_flatten(empty, sandbox), errors.ArchiveError)
    assert_cli_refuses(junk, sandbox)
    sandbox.check_nothing_outside()
