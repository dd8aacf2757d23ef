"""Policy engine: the objects of SPEC §8, effective policy, safety checks and rollouts.

- :mod:`.model` and :mod:`.loader`: strict YAML objects (PeerAuthentication,
  ClientTLSPolicy, AuthorizationPolicy);
- :mod:`.effective`: :class:`PolicySet`, versioned and immutable, with the
  decisions proxies make (mode, client transport, authorization);
- :mod:`.safety`: the "would drop traffic" check and ``policy diff``;
- :mod:`.rollout`: the lossless rollout state machine;
- :mod:`.hub`: an in-memory publisher that proxies read from.
"""

from trustd.policy.effective import (
    AuthzDecision,
    ClientDecision,
    ClientMode,
    Overlay,
    PeerDecision,
    PeerMode,
    PolicyLayer,
    PolicySet,
    Transport,
)
from trustd.policy.errors import (
    InvalidGlobError,
    NoRolloutError,
    PolicyValidationError,
    RolloutError,
    UnsafeChangeError,
)
from trustd.policy.glob import SpiffeGlob
from trustd.policy.hub import ApplyResult, HubPolicySource, PolicyHub, merge_objects
from trustd.policy.loader import load_files, load_text, parse_object
from trustd.policy.model import (
    API_VERSION,
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    ClientTLSPolicy,
    PeerAuthentication,
    PolicyObject,
)
from trustd.policy.rollout import (
    MemoryRolloutStore,
    PolicyPublisher,
    RolloutEngine,
    RolloutEvent,
    RolloutState,
    RolloutStatus,
    RolloutStore,
)
from trustd.policy.safety import PolicyDiff, check_change, diff
from trustd.policy.status import Destination, InboundStats, ProxyStatus

__all__ = [
    "API_VERSION",
    "ROOT_NAMESPACE",
    "ApplyResult",
    "AuthorizationPolicy",
    "AuthzDecision",
    "ClientDecision",
    "ClientMode",
    "ClientTLSPolicy",
    "Destination",
    "HubPolicySource",
    "InboundStats",
    "InvalidGlobError",
    "MemoryRolloutStore",
    "NoRolloutError",
    "Overlay",
    "PeerAuthentication",
    "PeerDecision",
    "PeerMode",
    "PolicyDiff",
    "PolicyHub",
    "PolicyLayer",
    "PolicyObject",
    "PolicyPublisher",
    "PolicySet",
    "PolicyValidationError",
    "ProxyStatus",
    "RolloutEngine",
    "RolloutError",
    "RolloutEvent",
    "RolloutState",
    "RolloutStatus",
    "RolloutStore",
    "SpiffeGlob",
    "Transport",
    "UnsafeChangeError",
    "check_change",
    "diff",
    "load_files",
    "load_text",
    "merge_objects",
    "parse_object",
]
