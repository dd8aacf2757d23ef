"""The ``trustd`` command: processes (up, server, agent, proxy) and admin nouns."""

from __future__ import annotations

import enum
import re
import sys
from typing import Annotated

import typer
from typer._completion_classes import completion_init
from typer.exceptions import TyperException

from trustd import __version__, durations
from trustd.cli import (
    agent,
    audit,
    authority,
    bundle,
    entry,
    federation,
    policy,
    rollout,
    svid,
    token,
)
from trustd.cli.client import ServerError
from trustd.cli.common import CheckFailed, OutputOpt, State, fmt
from trustd.cli.output import Format, emit
from trustd.errors import TrustdError

PROG = "trustd"
COMPLETE_VAR = "_TRUSTD_COMPLETE"  # set by the completion scripts when the shell asks

app = typer.Typer(
    name=PROG,
    help="trustd: SPIFFE CA, node agent, policy engine and mTLS sidecar.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class UsageError(Exception):
    """Bad flags or local input: exit code 1."""


def parse_ttl(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        delta = durations.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if delta.total_seconds() <= 0:
        raise UsageError(f"ttl must be positive, got {text!r}")
    return int(delta.total_seconds())


@app.callback()
def root(
    ctx: typer.Context,
    admin_socket: Annotated[
        # str, not Path: a Path option is checked for readability, and a socket the caller
        # may not use must reach the client as "permission denied" (exit 2), not bad flags
        str | None,
        typer.Option(
            "--admin-socket", envvar="TRUSTD_ADMIN_SOCKET", help="the server's admin socket"
        ),
    ] = None,
    output: Annotated[
        Format, typer.Option("--output", "-o", help="table, wide (every column), json or yaml")
    ] = Format.table,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from trustd.cli.client import admin_socket as resolve

    ctx.obj = State(
        admin_socket=resolve(admin_socket),
        output=output,
        debug=debug,
    )


@app.command("version")
def version(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Print the version."""
    f = fmt(ctx, output)
    if f.tabular:
        typer.echo(__version__)
    else:
        emit({"version": __version__}, f)


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command("completion")
def completion(
    shell: Annotated[Shell, typer.Argument(metavar="SHELL", help="bash, zsh or fish")],
) -> None:
    """Print the completion script for a shell.

    bash: `source <(trustd completion bash)` in ~/.bashrc; zsh: `source <(trustd completion zsh)`
    in ~/.zshrc, after compinit; fish: `trustd completion fish >
    ~/.config/fish/completions/trustd.fish`.
    """
    from typer._completion_shared import get_completion_script

    typer.echo(get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value))


# The options of the long-running commands; each also reads its TRUSTD_* variable.
ConfigFileOpt = Annotated[str | None, typer.Option("--config", help="YAML config file")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", envvar="TRUSTD_DATA_DIR")]
TrustDomainOpt = Annotated[str | None, typer.Option("--trust-domain", envvar="TRUSTD_TRUST_DOMAIN")]
AdminSocketOpt = Annotated[str | None, typer.Option("--admin-socket", envvar="TRUSTD_ADMIN_SOCKET")]
AgentSocketOpt = Annotated[str | None, typer.Option("--agent-socket", envvar="TRUSTD_AGENT_SOCKET")]
ServerAddressOpt = Annotated[
    str | None, typer.Option("--server-address", envvar="TRUSTD_SERVER_ADDRESS")
]
MetricsAddressOpt = Annotated[
    str | None, typer.Option("--metrics-address", envvar="TRUSTD_METRICS_ADDRESS")
]
BundleEndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--bundle-endpoint-address",
        help="serve the SPIFFE bundle endpoint (https_spiffe) on HOST:PORT, for federation",
    ),
]


def _overrides(**flags: str | None) -> dict[str, str | None]:
    """Command-line values under their config-file keys (``data_dir`` -> ``dataDir``)."""
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in flags.items()}


@app.command("up")
def up(
    config: ConfigFileOpt = None,
    data_dir: DataDirOpt = None,
    trust_domain: TrustDomainOpt = None,
    admin_socket: AdminSocketOpt = None,
    agent_socket: AgentSocketOpt = None,
    server_address: ServerAddressOpt = None,
    metrics_address: MetricsAddressOpt = None,
    bundle_endpoint_address: BundleEndpointOpt = None,
) -> None:
    """Server and node agent in one process, with embedded defaults (SQLite, local key file)."""
    from trustd.cli.run import run_up

    run_up(
        config,
        _overrides(
            data_dir=data_dir,
            trust_domain=trust_domain,
            admin_socket=admin_socket,
            agent_socket=agent_socket,
            server_address=server_address,
            metrics_address=metrics_address,
            bundle_endpoint_address=bundle_endpoint_address,
        ),
    )


@app.command("server")
def server(
    config: ConfigFileOpt = None,
    data_dir: DataDirOpt = None,
    trust_domain: TrustDomainOpt = None,
    admin_socket: AdminSocketOpt = None,
    server_address: ServerAddressOpt = None,
    metrics_address: MetricsAddressOpt = None,
    bundle_endpoint_address: BundleEndpointOpt = None,
) -> None:
    """CA, KMS bridge, registry, policy, audit, admin API and agent API."""
    from trustd.cli.run import run_server

    run_server(
        config,
        _overrides(
            data_dir=data_dir,
            trust_domain=trust_domain,
            admin_socket=admin_socket,
            server_address=server_address,
            metrics_address=metrics_address,
            bundle_endpoint_address=bundle_endpoint_address,
        ),
    )


app.add_typer(entry.app, name="entry")
app.add_typer(svid.app, name="svid")
app.add_typer(bundle.app, name="bundle")
app.add_typer(authority.app, name="authority")
app.add_typer(token.app, name="token")
app.add_typer(agent.app, name="agent")
app.add_typer(policy.app, name="policy")
app.add_typer(rollout.app, name="rollout")
app.add_typer(audit.app, name="audit")
app.add_typer(federation.app, name="federation")


@app.command("proxy")
def proxy(
    config: Annotated[str, typer.Option("--config", help="proxy config file (YAML)")],
) -> None:
    """The bundled mTLS sidecar: SVIDs and policy from the local agent."""
    from trustd.dataplane.run import run as run_proxy

    code = run_proxy(config)
    if code:
        raise typer.Exit(code)


def _fail(message: str, code: int) -> int:
    one_line = ""
    for part in (p.strip() for p in message.splitlines()):
        if part:
            # a list ("Choose from:", "bash,", "zsh") continues its line
            one_line += ("" if not one_line else " " if one_line[-1] in ":," else "; ") + part
    sys.stderr.write(f"trustd: {one_line}\n")
    return code


_GLOBAL_FLAGS = ("--debug",)
_GLOBAL_OPTIONS = ("--admin-socket",)


def hoist_global_options(args: list[str]) -> list[str]:
    """``--admin-socket X`` and ``--debug`` work after the noun and verb too, as in
    kubectl: they are moved in front of the noun, where the root command reads them.
    Nothing after ``--`` moves, and commands with an option of the same name (the
    long-running ones: ``up --admin-socket``) keep theirs."""
    if args and args[0] in ("up", "server"):
        return args
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _GLOBAL_FLAGS:
            front.append(a)
        elif a in _GLOBAL_OPTIONS and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 1
        elif a.split("=", 1)[0] in _GLOBAL_OPTIONS and "=" in a:
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> int:
    args = hoist_global_options(list(argv if argv is not None else sys.argv[1:]))
    debug = "--debug" in args
    completion_init()  # what the completion scripts ask (COMPLETE_VAR) is answered in their format
    try:
        # Without standalone mode, a command's `raise typer.Exit(n)` comes back as n.
        rc = app(args=args, prog_name=PROG, complete_var=COMPLETE_VAR, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        return _fail("aborted", 1)
    except TyperException as exc:  # bad flags, missing options
        message = exc.format_message()
        return _fail(message, 1) if message else 1  # no args: the help was printed already
    except ServerError as exc:
        if debug:
            raise
        return _fail(str(exc), 2)
    except CheckFailed as exc:
        return _fail(str(exc), 3) if str(exc) else 3
    except (UsageError, TrustdError) as exc:
        if debug:
            raise
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
