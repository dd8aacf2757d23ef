"""Run as some uid against the agent socket; ask for every name; print what came back (JSON).

Usage: agent_probe.py SOCKET NAMES_JSON
SPIFFE_ENDPOINT_SOCKET must point at the same socket (the spiffe client reads it).
Each answer is recorded as {"ok": [...]} or {"error": "STATUS_CODE"}; an SVID is
reported by its URI SAN, serial and a fingerprint of its private key, so the test
can check that nothing of another identity ever came back.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS = "/envoy.service.secret.v3.SecretDiscoveryService/"


def _uri(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ",".join(san.get_values_for_type(x509.UniformResourceIdentifier))


def _describe(resp: DiscoveryResponse) -> list[dict[str, Any]]:
    out = []
    for any_msg in resp.resources:
        s = secret_pb2.Secret()
        any_msg.Unpack(s)
        if s.HasField("tls_certificate"):
            chain = x509.load_pem_x509_certificates(
                s.tls_certificate.certificate_chain.inline_bytes
            )
            key = s.tls_certificate.private_key.inline_bytes
            out.append(
                {
                    "name": s.name,
                    "kind": "svid",
                    "uri": _uri(chain[0]),
                    "serial": f"{chain[0].serial_number:x}",
                    "key": hashlib.sha256(key).hexdigest()[:16],
                }
            )
        else:
            out.append({"name": s.name, "kind": "bundle"})
    return out


def main() -> None:
    socket_path, names = sys.argv[1], json.loads(sys.argv[2])
    result: dict[str, Any] = {"fetch": {}, "stream": {}}
    with grpc.insecure_channel(f"unix://{socket_path}") as ch:
        fetch = ch.unary_unary(
            SDS + "FetchSecrets",
            request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString,
        )
        stream = ch.stream_stream(
            SDS + "StreamSecrets",
            request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString,
        )
        for group in names:
            label = json.dumps(group)
            req = DiscoveryRequest(resource_names=group, type_url=TYPE)
            try:
                result["fetch"][label] = {"ok": _describe(fetch(req, timeout=20))}
            except grpc.RpcError as exc:
                result["fetch"][label] = {"error": exc.code().name}
            try:
                first = next(stream(iter([req]), timeout=20))
                result["stream"][label] = {"ok": _describe(first)}
            except grpc.RpcError as exc:
                result["stream"][label] = {"error": exc.code().name}
            except StopIteration:
                result["stream"][label] = {"error": "NO_RESPONSE"}

    # The real SPIFFE client, finding the socket through SPIFFE_ENDPOINT_SOCKET.
    from spiffe import WorkloadApiClient

    client = WorkloadApiClient(default_timeout=20)
    try:
        ctx = client.fetch_x509_context()
        result["workload"] = {
            "ok": [
                {
                    "uri": str(svid.spiffe_id),
                    "serial": f"{svid.leaf.serial_number:x}",
                    "key": hashlib.sha256(
                        svid.private_key.private_bytes(
                            serialization.Encoding.PEM,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption(),
                        )
                    ).hexdigest()[:16],
                }
                for svid in ctx.x509_svids
            ],
            "bundles": {
                str(b.trust_domain): sorted(f"{c.serial_number:x}" for c in b.x509_authorities)
                for b in ctx.x509_bundle_set.bundles
            },
        }
    except Exception as exc:
        result["workload"] = {"error": type(exc).__name__, "detail": str(exc)[:300]}
    try:
        bundles = client.fetch_x509_bundles()
        result["workload_bundles"] = {"ok": sorted(str(b.trust_domain) for b in bundles.bundles)}
    except Exception as exc:
        result["workload_bundles"] = {"error": type(exc).__name__, "detail": str(exc)[:300]}
    client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
