"""SPIFFE federation with other trust domains.

- ``endpoint``: our bundle endpoint (``https_spiffe`` or ``https_web``);
- ``fetch`` and ``check``: a foreign endpoint's bundle, and the checks it must pass;
- ``relationships``: the relationships admins create, refreshed on the bundles'
  refresh hints, their bundles pushed to agents with our own.
"""
