"""``trustd proxy``: the bundled mTLS sidecar (SPEC §10).

Public surface:

- :class:`Proxy` (:mod:`.proxy`), configured by :class:`ProxyConfig`
  (:mod:`.config`, ``load_config(path)``), run by :func:`serve` / :func:`run`;
- the seams it reads from: :class:`IdentitySource` (:mod:`.identity`,
  :mod:`.sds`) and :class:`PolicySource` (:mod:`.policysource`);
- the data-plane cores: the native one (:mod:`.native`, C on OpenSSL, whole
  listeners in its own threads) and the pure-Python fallback behind the
  per-connection seam :class:`Core` (:mod:`.core`, :class:`PythonCore`);
- :class:`DenialEvent`, handed to ``on_denial`` for the audit log.
"""

from trustd.dataplane.config import ProxyConfig, load_config, parse_config
from trustd.dataplane.core import Core, PythonCore, Stream, TlsInfo
from trustd.dataplane.errors import (
    IdentityUnavailableError,
    InvalidIdentityError,
    PeerRejectedError,
    ProxyConfigError,
)
from trustd.dataplane.identity import (
    FileIdentitySource,
    Identity,
    IdentitySource,
    StaticIdentitySource,
)
from trustd.dataplane.metrics import ProxyMetrics
from trustd.dataplane.policysource import FilePolicySource, PolicySource, StaticPolicySource
from trustd.dataplane.proxy import DenialEvent, Proxy
from trustd.dataplane.run import build_identity_source, build_policy_source, run, serve
from trustd.dataplane.sds import SdsIdentitySource

__all__ = [
    "Core",
    "DenialEvent",
    "FileIdentitySource",
    "FilePolicySource",
    "Identity",
    "IdentitySource",
    "IdentityUnavailableError",
    "InvalidIdentityError",
    "PeerRejectedError",
    "PolicySource",
    "Proxy",
    "ProxyConfig",
    "ProxyConfigError",
    "ProxyMetrics",
    "PythonCore",
    "SdsIdentitySource",
    "StaticIdentitySource",
    "StaticPolicySource",
    "Stream",
    "TlsInfo",
    "build_identity_source",
    "build_policy_source",
    "load_config",
    "parse_config",
    "run",
    "serve",
]
