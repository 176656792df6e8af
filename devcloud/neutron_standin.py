"""NEUTRON STAND-IN (development cloud only): not Neutron.

Why a stand-in: the development cloud runs servers with ``--nic none``
only (no tenant networks on this machine: no OVS/OVN dataplane, no bridge
may be left on the host). For such servers Nova still asks Neutron, on
create, delete, start, reboot, rebuild and rescue, which ports the server
has; real ``neutron-server`` (its own database, ML2, RPC workers and
agents) was not brought up here this session. This WSGI app answers those
read calls the way an empty Neutron does:

* ``GET /`` and ``GET /v2.0``: the version document;
* ``GET /v2.0/<collection>`` (ports, networks, subnets, security-groups,
  floatingips, extensions, ...): ``{"<collection>": []}`` (quotas: defaults);
* ``GET /v2.0/<collection>/<id>``: 404 in Neutron's error format;
* anything that would create or change something: 501 with a message
  naming this stand-in, so a test that needs real networking fails loudly.

No token is checked (127.0.0.1 only). Served by gunicorn:
``devcloud.neutron_standin:application``.
"""

import json

_HEADERS = [("Content-Type", "application/json")]


def _reply(start_response, status, body):
    data = json.dumps(body).encode()
    start_response(status, _HEADERS + [("Content-Length", str(len(data)))])
    return [data]


def _error(start_response, status, kind, msg):
    return _reply(start_response, status,
                  {"NeutronError": {"type": kind, "message": msg, "detail": ""}})


def application(environ, start_response):
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "/").rstrip("/")
    host = environ.get("HTTP_HOST", "127.0.0.1")
    base = f"http://{host}"
    if path.endswith(".json"):
        path = path[:-5]
    if path in ("", "/v2.0") and method == "GET":
        version = {"id": "v2.0", "status": "CURRENT",
                   "links": [{"href": base + "/v2.0/", "rel": "self"}]}
        if path == "":
            return _reply(start_response, "200 OK", {"versions": [version]})
        return _reply(start_response, "200 OK", {"resources": []})
    parts = path.split("/")[1:]
    if not parts or parts[0] != "v2.0":
        return _error(start_response, "404 Not Found", "HTTPNotFound", "no such path")
    parts = parts[1:]
    if method != "GET":
        return _error(start_response, "501 Not Implemented", "NotImplemented",
                      "devcloud Neutron stand-in: only read calls are answered "
                      "(servers must use --nic none)")
    if len(parts) == 1:
        key = parts[0].replace("-", "_")
        return _reply(start_response, "200 OK", {key: []})
    if len(parts) == 2 and parts[0] == "quotas":
        return _reply(start_response, "200 OK", {"quota": {
            "port": -1, "network": -1, "subnet": -1, "router": -1,
            "floatingip": -1, "security_group": -1, "security_group_rule": -1}})
    return _error(start_response, "404 Not Found", "NotFound",
                  f"{'/'.join(parts)} not found (devcloud Neutron stand-in has no resources)")
