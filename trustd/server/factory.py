"""Builds the real components that the configuration names."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from trustd.ca.authority import UpstreamAuthority
from trustd.ca.kms.base import KeyManager
from trustd.config import (
    LocalKeyManagerConfig,
    MemoryKeyManagerConfig,
    Pkcs11Config,
    ServerConfig,
    VaultTransitConfig,
)
from trustd.errors import ConfigError
from trustd.server.changes import ChangeHub
from trustd.store.base import Store
from trustd.telemetry.metrics import ServerMetrics

if TYPE_CHECKING:
    from trustd.store.pg_changes import PgChangeFeed


def make_store(cfg: ServerConfig) -> Store:
    if cfg.store.kind == "sqlite":
        from trustd.store.sqlite import SqliteStore

        path = Path(cfg.store.path) if cfg.store.path else cfg.data_path / "trustd.db"
        return SqliteStore(path)
    from trustd.store.postgresql import PostgresStore

    if cfg.store.dsn is None:
        raise ConfigError("store.dsn is required for the postgresql store")
    return PostgresStore(cfg.store.dsn.get_secret_value())


def _secret_file(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None


def make_key_manager(cfg: ServerConfig, metrics: ServerMetrics | None = None) -> KeyManager:
    """The key manager; its Vault or PKCS#11 metrics count on the server's registry."""
    km = cfg.key_manager
    if isinstance(km, LocalKeyManagerConfig):
        from trustd.ca.kms.local import LocalKeyManager, load_kek

        directory = Path(km.directory) if km.directory else cfg.data_path / "keys"
        kek_file = Path(km.kek_file) if km.kek_file else cfg.data_path / "kek"
        return LocalKeyManager(directory, load_kek(kek_file=kek_file, create=km.kek_file is None))
    if isinstance(km, MemoryKeyManagerConfig):
        from trustd.ca.kms.memory import MemoryKeyManager

        return MemoryKeyManager()
    if isinstance(km, VaultTransitConfig):
        from trustd.ca.kms import vault_transit

        return vault_transit.from_config(km, metrics.vault if metrics else None)
    if isinstance(km, Pkcs11Config):
        from trustd.ca.kms import pkcs11

        return pkcs11.from_config(km, metrics.pkcs11 if metrics else None)
    raise ConfigError(f"unknown key manager kind {km.kind!r}")


def make_upstream(
    cfg: ServerConfig, metrics: ServerMetrics | None = None
) -> UpstreamAuthority | None:
    if cfg.upstream_authority is None:
        return None
    from trustd.ca.upstream import vault_pki

    return vault_pki.from_config(cfg.upstream_authority, metrics.vault if metrics else None)


def prepare_data_dir(path: Path) -> None:
    """D is 0711 (so public/agent.sock is reachable), everything else in it 0700/0600."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711)  # noqa: S103 - traversable so public/agent.sock is reachable (SPEC §3)
    public = path / "public"
    public.mkdir(exist_ok=True)
    os.chmod(public, 0o755)  # noqa: S103 - any local process may reach the agent socket


def server_id(data_dir: Path) -> str:
    """This server's ID, kept in ``D/server-id`` (made on first start): what names it among
    several servers sharing one store (change notifications, its audit chain)."""
    path = data_dir / "server-id"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if re.fullmatch(r"srv-[0-9a-f]{16}", text):
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # one written 0644 by an earlier version
        return text
    text = f"srv-{secrets.token_hex(8)}"
    tmp = path.with_name(".server-id.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)
    return text


def make_change_feed(cfg: ServerConfig, server: str, hub: ChangeHub) -> PgChangeFeed | None:
    """With PostgreSQL, the feed that carries changes between the servers sharing it."""
    if cfg.store.kind != "postgresql" or cfg.store.dsn is None:
        return None
    from trustd.store.pg_changes import PgChangeFeed

    feed = PgChangeFeed(
        cfg.store.dsn.get_secret_value(),
        server_id=server,
        wake=lambda topic: hub.notify(topic, remote=True),
    )
    hub.set_broadcast(feed.publish)
    return feed
