"""Any WSGI application for gunicorn, named by $DEVCLOUD_WSGI_APP
(``module:callable``).

Keystone's and Nova's WSGI entry points parse sys.argv with oslo.config and
refuse gunicorn's own arguments, so the arguments are dropped before the
application module is imported. Served as ``devcloud.wsgi:application``.
"""

import importlib
import os
import sys

sys.argv = sys.argv[:1]
_module, _, _name = os.environ["DEVCLOUD_WSGI_APP"].partition(":")
application = getattr(importlib.import_module(_module), _name or "application")

if os.environ.get("DEVCLOUD_CONFIGURE_MAPPERS"):
    # Neutron reads backref attributes (Port.port_forwardings) at class level;
    # SQLAlchemy 2.1 creates backrefs only when the mappers are configured.
    from sqlalchemy import orm
    orm.configure_mappers()
