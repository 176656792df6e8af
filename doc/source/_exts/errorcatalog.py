"""Sphinx directive ``error-catalog``: every user-facing error message of
the product code, read from the source at build time so the troubleshooting
page cannot fall behind the code.

Python: each ``raise X(...)`` in docker_rootfs/, glance_docker_import/ and
nova_image_handler/ whose class is one of :data:`USER_FACING` (f-strings
shown with their ``{expressions}``). C: each ``die("...")`` of the guest's
PID 1 (docker_rootfs/guest/d2vinit.c), which the console shows as
``docker2vm: error: ...`` followed by ``docker2vm: exit status 125``.

``catalog()`` is also what tests/packaging/test_docs.py checks the page
against (every class and every limit name has its own advice there).
"""

import ast
import os
import re

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PACKAGES = ("docker_rootfs", "glance_docker_import", "nova_image_handler")

# class name -> where the message is seen (and its fixed prefix there)
USER_FACING = {
    "Docker2VMError": "docker2vm command; Glance task message",
    "ArchiveError": "docker2vm command; Glance task message; Nova fault (share unpack)",
    "UnsupportedMediaType": "docker2vm command; Glance task message",
    "DigestMismatch": "docker2vm command; Glance task message",
    "ImageSelectionError": "docker2vm command; Glance task message",
    "UnsafeEntry": "docker2vm command; Glance task message; Nova fault (share unpack)",
    "LimitExceeded": "docker2vm command; Glance task message; Nova fault (share unpack)",
    "LayerTarError": "docker2vm command; Glance task message",
    "ToolError": "docker2vm command; Glance task message",
    "NoSpace": "docker2vm command; Glance task message",
    "Ext2Error": "docker2vm command; Glance task message",
    "ContractError": "docker2vm command (run, config-drive); Nova fault (server metadata)",
    "ConversionAborted": "Glance task message",
    "ConversionFailed": "Glance task message (after docker-convert: )",
    "UploadException": "Glance task message",
    "ImageError": "Nova instance fault",
    "HostError": "Nova instance fault",
    "MigrationPreCheckError": "Nova live-migration error",
}

# Fixed text around the message where it is seen.
PREFIX = {
    "UploadException": "",  # messages already start with "docker-convert: "
    "ImageError": "docker2vm image <image id>: ",
    "HostError": "docker2vm on this host: ",
}


def _template(node):
    """A message argument as text with {expression} placeholders."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                out.append(str(v.value))
            else:
                out.append("{" + ast.unparse(v.value) + "}")
        return "".join(out)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Add):
            return _template(node.left) + _template(node.right)
        if isinstance(node.op, ast.Mod):  # "..." % args
            return _template(node.left)
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
        # self._message("docker-convert: ...") and the like
        return _template(node.args[0])
    return "{" + ast.unparse(node) + "}"


def _message(cls, call):
    if cls in ("Ext2Error", "NoSpace"):
        return "libext2fs: {what}: {the library's message for code}", None
    if cls == "LimitExceeded":
        args = [_template(a) for a in call.args]
        name = args[0] if args else "?"
        where = f" ({args[3]})" if len(args) > 3 else ""
        return f"limit {name} exceeded: {{value}} > {{maximum}}{where}", name
    kw = {k.arg: k.value for k in call.keywords}
    node = kw.get("reason") or (call.args[0] if call.args else None)
    if node is None:
        return "", None
    return PREFIX.get(cls, "") + _template(node), None


def _python_entries():
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(TOP, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, TOP)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), rel)
                for node in ast.walk(tree):
                    if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                        continue
                    func = node.exc.func
                    cls = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if cls not in USER_FACING:
                        continue
                    msg, limit = _message(cls, node.exc)
                    yield {"class": cls, "message": msg, "file": rel, "line": node.lineno,
                           "seen": USER_FACING[cls], "limit": limit}


_DIE = re.compile(r'\bdie\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)')
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _c_entries():
    rel = os.path.join("docker_rootfs", "guest", "d2vinit.c")
    with open(os.path.join(TOP, rel), encoding="utf-8") as f:
        text = f.read()
    for m in _DIE.finditer(text):
        if text[:m.start()].rstrip().endswith("void __attribute__((noreturn, format(printf, 1, 2)))"):
            continue
        fmt = "".join(_STR.findall(m.group(1)))
        if fmt == "%s":
            continue
        line = text.count("\n", 0, m.start()) + 1
        yield {"class": "guest", "message": "docker2vm: error: " + fmt, "file": rel, "line": line,
               "seen": "console log (exit status 125)", "limit": None}


def catalog():
    """Every user-facing message: dicts with class, message, file, line, seen, limit."""
    entries = list(_python_entries()) + list(_c_entries())
    return sorted(entries, key=lambda e: (e["class"], e["file"], e["line"]))


def _rst_escape(text):
    return text.replace("\\", "\\\\").replace("`", "\\`").replace("*", "\\*").replace("|", "\\|")


def setup(app):
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList
    from sphinx.util.nodes import nested_parse_with_titles

    class ErrorCatalog(Directive):
        has_content = False

        def run(self):
            from docutils import nodes
            entries = catalog()
            lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 62 20", "",
                     "   * - class", "     - message (``{...}``: filled in at run time)", "     - raised in"]
            for e in entries:
                msg = " ".join(e["message"].split()) or "(no text)"
                lines += [f"   * - ``{e['class']}``",
                          f"     - {_rst_escape(msg)}",
                          f"     - ``{e['file']}:{e['line']}``"]
            node = nodes.container()
            nested_parse_with_titles(self.state, StringList(lines, source="errorcatalog"), node)
            return node.children

    app.add_directive("error-catalog", ErrorCatalog)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
