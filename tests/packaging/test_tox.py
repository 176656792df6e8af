"""tox.ini: py3, functional and e2e split the suite by pytest marker. For
every combination of the markers pyproject.toml declares, exactly one of
them selects a test carrying that combination (a new marker must be placed
in one of them)."""

import configparser
import itertools
import os
import re
import shlex

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLIT = ("py3", "functional", "e2e")
ENVS = ("py3", "functional", "e2e", "pep8", "genconfig", "docs", "releasenotes", "bench")


def _tox():
    p = configparser.RawConfigParser(interpolation=None)
    p.read(os.path.join(TOP, "tox.ini"))
    return p


def _markers():
    # [tool.pytest.ini_options] markers = ["name: help", ...] (no tomllib on 3.10)
    with open(os.path.join(TOP, "pyproject.toml")) as f:
        block = re.search(r"^markers = \[(.*?)^\]", f.read(), re.M | re.S).group(1)
    return re.findall(r'^\s*"([a-z_]+):', block, re.M)


def _expression(tox, env):
    section = "testenv" if env == "py3" else f"testenv:{env}"
    args = shlex.split(tox.get(section, "commands").strip().splitlines()[0])
    rest = args[args.index("pytest") + 1:]  # python -m pytest -m EXPR
    return rest[rest.index("-m") + 1]


def test_envs_exist():
    tox = _tox()
    for env in ENVS:
        assert env == "py3" or tox.has_section(f"testenv:{env}"), env


def test_marker_split_selects_each_test_once():
    tox = _tox()
    markers = _markers()
    exprs = {env: _expression(tox, env) for env in SPLIT}
    for env, expr in exprs.items():
        unknown = set(re.findall(r"[A-Za-z_]+", expr)) - {"and", "or", "not"} - set(markers)
        assert not unknown, (env, unknown)
    # Each marker means "needs something or takes time": none stays in py3.
    assert set(markers) <= set(re.findall(r"[A-Za-z_]+", exprs["py3"])), exprs["py3"]
    for n in range(len(markers) + 1):
        for combo in itertools.combinations(markers, n):
            names = {m: m in combo for m in markers}
            chosen = [env for env, expr in exprs.items()
                      if eval(expr, {"__builtins__": {}}, names)]  # noqa: S307 (our own file)
            assert len(chosen) == 1, (combo, chosen)
