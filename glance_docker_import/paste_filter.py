"""Paste filter giving Glance an import method named ``docker-convert``.

Glance validates import method names against a fixed choice list, so a
plugin cannot add one. This filter, placed in ``glance-api-paste.ini`` in
front of ``rootapp``, does three things and nothing else:

* ``POST /v2/images/{id}/import`` with ``{"method": {"name":
  "docker-convert", ...}}`` is rewritten to the real method Glance runs
  (``glance-direct``, or ``web-download`` when the body has a ``uri``) and
  gains the marker ``method["docker_convert"] = {"requested_method":
  "docker-convert"}``. The ``docker_convert`` import plugin converts only
  imports that carry this marker (or the explicit image property
  ``docker_import_method=docker-convert``); every other import, including
  plain ``docker save`` tarballs stored with ``container_format=docker``,
  passes through it untouched.
* ``GET /v2/info/import`` lists ``docker-convert`` among the import methods
  whenever ``glance-direct`` or ``web-download`` is enabled, so clients
  (python-glanceclient checks this list) accept the name.
* The ``OpenStack-image-import-methods`` header of image-create responses
  gains ``docker-convert`` the same way.

The filter trusts nothing in the request: it never changes anything but the
method name and the marker, and Glance still applies all of its own checks
(image state, policy, web-download URI filtering) to the rewritten request.

Paste configuration::

    [filter:docker-convert]
    paste.filter_factory = glance_docker_import.paste_filter:filter_factory
"""

import json
import logging
import re

import webob
import webob.dec

from glance_docker_import import MARKER_KEY, METHOD_NAME

LOG = logging.getLogger(__name__)

# PATH_INFO as Glance's routes see it, before or after version negotiation
# (which may map /v2.16/... to /v2/...).
_IMPORT_RE = re.compile(r"^/v2(?:\.\d+)?/images/[^/]+/import/?$")
_INFO_RE = re.compile(r"^/v2(?:\.\d+)?/info/import/?$")
_IMAGES_RE = re.compile(r"^/v2(?:\.\d+)?/images/?$")

HEADER = "OpenStack-image-import-methods"
# The real methods docker-convert rides on; it is advertised only if one is on.
CARRIERS = ("glance-direct", "web-download")
MAX_BODY = 64 * 1024  # import request bodies are tiny JSON documents


def rewrite_import_body(body):
    """Return the rewritten import request document, or None if not ours."""
    if not isinstance(body, dict):
        return None
    method = body.get("method")
    if not isinstance(method, dict) or method.get("name") != METHOD_NAME:
        return None
    method = dict(method)
    method["name"] = "web-download" if method.get("uri") else "glance-direct"
    method[MARKER_KEY] = {"requested_method": METHOD_NAME}
    body = dict(body)
    body["method"] = method
    return body


def _advertise(methods):
    methods = list(methods)
    if METHOD_NAME not in methods and any(m in methods for m in CARRIERS):
        methods.append(METHOD_NAME)
    return methods


class DockerConvertFilter:
    def __init__(self, app, conf=None):
        self.app = app
        self.conf = conf or {}

    @webob.dec.wsgify
    def __call__(self, req):
        path = req.path_info
        if req.method == "POST" and _IMPORT_RE.match(path):
            self._rewrite_import(req)
            return req.get_response(self.app)
        if req.method == "GET" and _INFO_RE.match(path):
            return self._patch_info(req, req.get_response(self.app))
        if req.method == "POST" and _IMAGES_RE.match(path):
            return self._patch_header(req.get_response(self.app))
        return self.app

    def _rewrite_import(self, req):
        if req.content_length is not None and req.content_length > MAX_BODY:
            return  # not a request we understand; Glance answers it
        raw = req.body
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return  # Glance reports the malformed body itself
        new = rewrite_import_body(body)
        if new is None:
            return
        LOG.debug("docker-convert: import request rewritten to method %s",
                  new["method"]["name"])
        req.body = json.dumps(new).encode()
        req.content_type = "application/json"

    @staticmethod
    def _patch_info(req, resp):
        if resp.status_int != 200:
            return resp
        try:
            doc = json.loads(resp.body)
            entry = doc["import-methods"]
            entry["value"] = _advertise(entry["value"])
        except (ValueError, KeyError, TypeError):
            return resp
        resp.body = json.dumps(doc).encode()
        return resp

    @staticmethod
    def _patch_header(resp):
        value = resp.headers.get(HEADER)
        if value:
            resp.headers[HEADER] = ",".join(_advertise(value.split(",")))
        return resp


def filter_factory(global_conf, **local_conf):
    conf = dict(global_conf, **local_conf)
    _start_sweeper()

    def _filter(app):
        return DockerConvertFilter(app, conf)
    return _filter


def _start_sweeper():
    """glance-api loads this filter at start-up: sweep the work directories
    of conversions that died with an earlier glance-api now, not at the
    first import (glance_docker_import.recovery)."""
    try:
        from glance_docker_import import recovery
        recovery.Sweeper.ensure_started()
    except Exception:   # never stop glance-api from starting
        import logging
        logging.getLogger(__name__).exception("docker-convert: cannot start the sweeper")
