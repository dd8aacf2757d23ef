"""trustd: SPIFFE certificate authority, node agent, policy engine and mTLS data plane."""

__version__ = "0.1.0"

import warnings as _warnings

# spiffe (whose Workload API messages the agent serves) names DSA keys in a type list,
# which cryptography >= 51 warns about at import: noise on every process's stderr that
# says nothing about trustd (trustd never accepts DSA keys). Only that one warning, only
# from spiffe, is silenced.
_warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"spiffe(\.|$)")
