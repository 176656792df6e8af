"""DEVELOPMENT AND TESTS ONLY: map a client token to trusted identity headers.

Never put this filter in a production pipeline: it believes any token. It
lets the real ``glance`` CLI and openstacksdk (which send ``X-Auth-Token``)
talk to a keystone-less glance-api whose ``context`` filter trusts
``X-Identity-Status``/``X-Project-Id``/``X-Roles`` headers, as Glance's own
functional tests do.

Token syntax: ``PROJECT`` or ``PROJECT:ROLE,ROLE``; default roles are
``member,reader``. The token ``admin`` means project ``admin`` with roles
``admin,member,reader``. Identity headers sent by the client are discarded
first, so only the token decides.
"""

import webob.dec

_IDENTITY_HEADERS = ("X-Identity-Status", "X-Project-Id", "X-Tenant-Id",
                     "X-User-Id", "X-Roles", "X-Domain-Id",
                     "X-Project-Domain-Id", "X-User-Domain-Id")


def identity_from_token(token):
    if not token:
        return None
    if token == "admin":
        return "admin", ["admin", "member", "reader"]
    project, _, roles = token.partition(":")
    roles = [r for r in roles.split(",") if r] or ["member", "reader"]
    return project, roles


class DevAuthFilter:
    def __init__(self, app):
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req):
        for h in _IDENTITY_HEADERS:
            req.headers.pop(h, None)
        ident = identity_from_token(req.headers.get("X-Auth-Token"))
        if ident:
            project, roles = ident
            req.headers["X-Identity-Status"] = "Confirmed"
            req.headers["X-Project-Id"] = project
            req.headers["X-Tenant-Id"] = project
            req.headers["X-User-Id"] = f"{project}-user"
            req.headers["X-Roles"] = ",".join(roles)
        return self.app


def filter_factory(global_conf, **local_conf):
    return DevAuthFilter
