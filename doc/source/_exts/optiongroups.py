"""Sphinx directive ``show-option-groups``: oslo.config's ``show-options``
limited to some groups of a namespace.

The Glance and Nova namespaces of docker2vm share the ``[docker_limits]``
group; ``show-options`` of both would define each of its options twice
(duplicate labels, a warning). Usage (in RST, or a MyST ``{eval-rst}``
block)::

    .. show-option-groups:: docker2vm.nova
       :groups: docker2vm

The text comes from oslo.config's own formatter, as ``show-options`` and
``oslo-config-generator`` use it.
"""

from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from oslo_config import generator, sphinxext
from sphinx.util.nodes import nested_parse_with_titles


def _lines(namespace, groups):
    found = {}
    for _ns, opt_list in generator._list_opts([namespace]):
        for group, opts in opt_list:
            name = getattr(group, "name", group) or "DEFAULT"
            found.setdefault(name, (group if not isinstance(group, str) else None, []))[1].extend(opts)
    missing = [g for g in groups if g not in found]
    if missing:
        raise ValueError(f"namespace {namespace} has no option group {', '.join(missing)}")
    for name in groups:
        group_obj, opts = found[name]
        yield from sphinxext._format_group_opts(namespace=None, group_name=name, group_obj=group_obj,
                                                opt_list=opts)


class ShowOptionGroups(Directive):
    required_arguments = 1
    option_spec = {"groups": directives.unchanged_required}

    def run(self):
        from docutils import nodes
        groups = self.options["groups"].split()
        try:
            lines = list(_lines(self.arguments[0], groups))
        except ValueError as exc:
            raise self.error(str(exc)) from None
        source = self.state.document.current_source
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=source), node)
        return node.children


def setup(app):
    app.setup_extension("oslo_config.sphinxext")
    app.add_directive("show-option-groups", ShowOptionGroups)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
