"""A federation relationship: a foreign trust domain, where its bundle comes from, and
the last good bundle it served."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from trustd.bundle import Bundle
from trustd.spiffeid import TrustDomain

HTTPS_SPIFFE = "https_spiffe"  # endpoint authenticated by SPIFFE ID with the foreign bundle
HTTPS_WEB = "https_web"  # endpoint authenticated by Web PKI and hostname
PROFILES = (HTTPS_SPIFFE, HTTPS_WEB)


@dataclass(frozen=True, slots=True, kw_only=True)
class Relationship:
    trust_domain: TrustDomain  # the foreign trust domain
    endpoint_url: str  # https URL of its bundle endpoint
    profile: str  # one of PROFILES
    endpoint_spiffe_id: str  # https_spiffe: the SPIFFE ID its endpoint presents; else ""
    bundle: Bundle  # the last good bundle (the bootstrap bundle until the first refresh)
    refreshed_at: dt.datetime | None  # when the endpoint last served a good bundle
    next_refresh_at: dt.datetime  # when it is fetched next
    last_error: str  # why the last refresh failed ("" when it did not)
    created_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateFederation:
    trust_domain: str  # the foreign trust domain ("other.example" or "spiffe://other.example")
    endpoint_url: str  # https URL of its bundle endpoint
    profile: str  # https_spiffe | https_web
    endpoint_spiffe_id: str = ""  # required for https_spiffe: what its endpoint presents
    bundle: bytes = b""  # bootstrap bundle: SPIFFE bundle JSON or PEM CA certificates
