"""Release notes (reno): every note under releasenotes/notes passes
``reno lint`` (valid YAML, known sections, strings or lists of strings)."""

import os
import subprocess
import sys

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTES = os.path.join(TOP, "releasenotes", "notes")
SECTIONS = {"prelude", "features", "issues", "upgrade", "deprecations", "critical",
            "security", "fixes", "other"}


def test_reno_lint():
    try:
        import reno  # noqa: F401
    except ImportError:
        raise AssertionError("reno is missing: it is in test-requirements.txt") from None
    reno = "import sys; from reno.main import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", reno, "lint"], cwd=TOP,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_notes_are_named_by_reno_and_not_empty():
    names = [n for n in os.listdir(NOTES) if not n.startswith(".")]
    assert names
    for name in names:
        # reno new: <slug>-<16 hex digits>.yaml
        stem, _, ext = name.rpartition(".")
        assert ext == "yaml" and len(stem.rsplit("-", 1)[-1]) == 16, name
        with open(os.path.join(NOTES, name)) as f:
            doc = yaml.safe_load(f)
        assert doc and set(doc) <= SECTIONS, (name, set(doc) - SECTIONS)
