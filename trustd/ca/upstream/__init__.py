"""Upstream authorities: who signs trustd's CA certificate when it is not a self-signed root.

``base`` holds the seam (``UpstreamAuthority``, ``UpstreamResult``); ``vault_pki``
makes trustd's CA an intermediate of an OpenBao/Vault PKI mount.
"""

from trustd.ca.upstream.base import UpstreamAuthority, UpstreamResult

__all__ = ["UpstreamAuthority", "UpstreamResult"]
