"""trustd svid mint"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.api.admin.v1 import admin_pb2 as pb
from trustd.ca.der import certificate_pem
from trustd.cli import views
from trustd.cli.common import OutputOpt, call, fmt
from trustd.cli.output import Format, emit

app = typer.Typer(help="Mint X.509-SVIDs and JWT-SVIDs by hand.", no_args_is_help=True)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    # An existing file keeps its old mode through O_CREAT: narrow it before the key goes in.
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@app.command("mint")
def mint(
    ctx: typer.Context,
    spiffe_id: Annotated[str, typer.Option("--spiffe-id", help="spiffe://TD/path")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="writes svid.pem, svid.key, bundle.pem (X.509)"),
    ] = None,
    ttl: Annotated[str | None, typer.Option(help="e.g. 10m; default: the server's")] = None,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="extra DNS SAN; repeatable")
    ] = None,
    jwt: Annotated[
        bool, typer.Option("--jwt", help="a JWT-SVID instead: prints the token")
    ] = False,
    audience: Annotated[
        list[str] | None,
        typer.Option("--audience", help="with --jwt: the aud claim; repeatable, required"),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Mint an SVID. The private key is made here and never leaves this machine.

    With --jwt, a JWT-SVID signed by the server's JWT key for each --audience; the
    token is printed once, and is a bearer secret: anyone holding it is the identity.
    """
    from trustd.cli.main import UsageError, parse_ttl
    from trustd.spiffeid import SpiffeId

    SpiffeId.parse(spiffe_id)
    ttl_seconds = parse_ttl(ttl)
    if jwt:
        if out_dir is not None or dns:
            raise UsageError("--out-dir and --dns are for X.509-SVIDs: leave them out with --jwt")
        if not audience:
            raise UsageError("--jwt needs --audience: the service the token is for")
        _mint_jwt(ctx, spiffe_id, audience, ttl_seconds, output)
        return
    if audience:
        raise UsageError("--audience is for JWT-SVIDs: add --jwt")
    if out_dir is None:
        raise UsageError("--out-dir is required: where svid.pem, svid.key and bundle.pem go")
    from trustd.dnsnames import check_dns_name

    for name in dns or []:
        check_dns_name(name)
    if not out_dir.is_dir() and not out_dir.parent.is_dir():
        # one level is made, never a tree (a typo would plant directories at /)
        raise UsageError(f"--out-dir {out_dir}: {out_dir.parent} does not exist; create it first")
    writable = out_dir if out_dir.is_dir() else out_dir.parent
    if not os.access(writable, os.W_OK):
        raise UsageError(f"--out-dir {out_dir}: {writable} is not writable")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    request = pb.MintX509SvidRequest(
        spiffe_id=spiffe_id,
        csr=csr.public_bytes(serialization.Encoding.DER),
        ttl_seconds=ttl_seconds,
        dns_names=dns or [],
    )
    result: pb.MintX509SvidResponse = call(ctx, "SvidMint", request)
    try:
        out_dir.mkdir(mode=0o755, exist_ok=True)  # only once the server has signed
    except OSError as exc:
        raise UsageError(f"--out-dir {out_dir}: {exc.strerror or exc}") from None
    _write(
        out_dir / "svid.pem",
        b"".join(certificate_pem(d) for d in result.svid.cert_chain_der),
        0o644,
    )
    _write(
        out_dir / "svid.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(out_dir / "bundle.pem", result.bundle_pem, 0o644)
    shown: dict[str, object] = {**views.minted_x509(result), "out_dir": str(out_dir)}
    emit(
        shown,
        fmt(ctx, output),
        columns=["spiffe_id", "serial", "not_after", "out_dir"],
        narrow=["spiffe_id", "not_after", "out_dir"],
        extra=["authority_id"],
    )


def _mint_jwt(
    ctx: typer.Context,
    spiffe_id: str,
    audience: list[str],
    ttl_seconds: int | None,
    output: Format | None,
) -> None:
    request = pb.MintJwtSvidRequest(spiffe_id=spiffe_id, audience=audience, ttl_seconds=ttl_seconds)
    result: pb.MintJwtSvidResponse = call(ctx, "JwtSvidMint", request)
    f = fmt(ctx, output)
    if f.tabular:
        typer.echo(result.svid.token)
    else:
        emit(views.minted_jwt(result), f)
