"""The cloud's Glance: devcloud.glance_dev's configuration (the
docker-convert plugin, its paste filter, file store, staging) with Keystone
instead of the development token filter.

Reused by import, not copied: ``DevServer.write_config`` writes the files,
then the paste pipeline's ``devauth`` (believes any token) is replaced by
keystonemiddleware's ``authtoken`` and ``[keystone_authtoken]`` is added.
The cloud starts gunicorn itself (devcloud.cloud.Cloud.gunicorn), so only
the configuration, ``db_sync`` and ``env`` of DevServer are used.
"""

from devcloud.glance_dev import DevServer

AUTHTOKEN_FILTER = """
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
"""


class KeystoneGlance(DevServer):
    def __init__(self, workdir, port, database, authtoken, **kw):
        super().__init__(workdir, port=port, database=database, **kw)
        self.authtoken = authtoken

    def write_config(self):
        super().write_config()
        paste = f"{self.dir}/glance-api-paste.ini"
        with open(paste) as f:
            text = f.read()
        if " devauth context " not in text:
            raise RuntimeError("devcloud.glance_dev's paste pipeline changed: "
                               "no 'devauth context' to replace with keystone authtoken")
        text = text.replace(" devauth context ", " authtoken context ")
        with open(paste, "w") as f:
            f.write(text + AUTHTOKEN_FILTER)
        with open(f"{self.dir}/glance-api.conf", "a") as f:
            f.write("\n[keystone_authtoken]\n" + self.authtoken)
