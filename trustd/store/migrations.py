"""The one migration list for every store backend (portable SQL: TEXT, BIGINT).

Append only: a released migration is never edited. Timestamps are integer
Unix seconds; certificates are PEM text; lists are JSON text.
"""

MIGRATIONS: list[str] = [
    # 1: registry, CA, ledger, agents
    """
    CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        ttl_seconds BIGINT,
        dns_names TEXT NOT NULL,
        revision BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (spiffe_id, selectors)
    );
    CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
    CREATE TABLE entry_changes (
        revision BIGINT PRIMARY KEY,
        entry_id TEXT NOT NULL,
        op TEXT NOT NULL
    );
    CREATE TABLE authorities (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        tainted BIGINT NOT NULL,
        revoked BIGINT NOT NULL,
        key_ref TEXT NOT NULL,
        certificate TEXT NOT NULL,
        upstream_chain TEXT NOT NULL,
        upstream_roots TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        activated_at BIGINT
    );
    CREATE TABLE ledger (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        not_after BIGINT NOT NULL,
        authority_id TEXT NOT NULL,
        caller TEXT NOT NULL,
        entry_id TEXT,
        issued_at BIGINT NOT NULL
    );
    CREATE INDEX ledger_authority ON ledger (authority_id, not_after);
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        used_at BIGINT,
        agent_id TEXT
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after BIGINT NOT NULL,
        joined_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        evicted BIGINT NOT NULL,
        hostname TEXT NOT NULL,
        meta TEXT NOT NULL
    );
    CREATE TABLE docs (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: entries may be pinned to one agent (node), like SPIRE's parent ID
    """
    ALTER TABLE entries ADD COLUMN agent_id TEXT
    """,
    # 3: federation with other trust domains (SPIFFE Federation): one relationship per
    # foreign trust domain, with the last good bundle fetched from its bundle endpoint;
    # entries name the foreign trust domains their workloads may see the bundles of
    """
    CREATE TABLE federations (
        trust_domain TEXT PRIMARY KEY,
        endpoint_url TEXT NOT NULL,
        profile TEXT NOT NULL,
        endpoint_spiffe_id TEXT NOT NULL,
        bundle TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        refreshed_at BIGINT,
        next_refresh_at BIGINT NOT NULL,
        last_error TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    ALTER TABLE entries ADD COLUMN federates_with TEXT
    """,
    # 4: what every proxy reports (through whichever server its agent talks to), and
    # named leases: one server at a time does a job such as advancing the rollout
    """
    CREATE TABLE proxy_statuses (
        proxy_id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        acked_version BIGINT NOT NULL,
        report TEXT NOT NULL,
        server_id TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX proxy_statuses_updated ON proxy_statuses (updated_at);
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )
    """,
    # 5: every server's audit chain mirrored (exact lines), so that export and verify
    # through any server cover every chain of the deployment
    """
    CREATE TABLE audit_events (
        server_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at TEXT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (server_id, seq)
    );
    CREATE TABLE audit_checkpoints (
        server_id TEXT NOT NULL,
        n BIGINT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (server_id, n)
    );
    CREATE TABLE audit_keys (
        server_id TEXT PRIMARY KEY,
        key_file TEXT NOT NULL
    )
    """,
]
