"""trustd: SPIFFE certificate authority, node agent, policy engine and mTLS data plane."""

__version__ = "0.1.0"
