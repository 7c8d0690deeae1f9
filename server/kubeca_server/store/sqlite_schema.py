"""The SQLite store's schema, as numbered migrations.

Each migration brings a database from the version before it to its own number, which
``PRAGMA user_version`` records; only ``init`` and ``migrate`` apply them.
"""

from __future__ import annotations

# Each entry brings a database from the version before it to its own number.
MIGRATIONS: tuple[str, ...] = (
    # 1: the first wave's schema (tables created by earlier versions are kept as they are).
    """
    CREATE TABLE IF NOT EXISTS bootstrap_tokens (
        token_id     TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL,
        profiles     TEXT NOT NULL,  -- JSON list
        node_name    TEXT NOT NULL,
        addresses    TEXT NOT NULL,  -- JSON list
        expires_at   REAL NOT NULL,  -- unix seconds
        created_by   TEXT NOT NULL,
        created_at   REAL NOT NULL,
        revoked_at   REAL,
        max_lifetime REAL NOT NULL DEFAULT 31536000  -- seconds: the creator's ceiling
    );
    CREATE TABLE IF NOT EXISTS audit_chain (
        seq        INTEGER PRIMARY KEY,
        record     TEXT NOT NULL,  -- canonical JSON, "seq" inside
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS certificates (
        serial               TEXT PRIMARY KEY,  -- lower-case hex
        authority            TEXT NOT NULL,
        profile              TEXT NOT NULL,
        subject              TEXT NOT NULL,
        sans                 TEXT NOT NULL,  -- JSON list
        public_key_sha256    TEXT NOT NULL,
        fingerprint_sha256   TEXT NOT NULL,
        not_before           REAL NOT NULL,
        not_after            REAL NOT NULL,
        caller               TEXT NOT NULL,
        request_fingerprint  TEXT NOT NULL,
        certificate_pem      TEXT NOT NULL,
        audit_seq            INTEGER NOT NULL REFERENCES audit_chain(seq),
        revoked_at           REAL,
        revocation_reason    TEXT
    );
    CREATE INDEX IF NOT EXISTS certificates_request ON certificates(request_fingerprint);
    CREATE INDEX IF NOT EXISTS certificates_authority ON certificates(authority, revoked_at);
    CREATE TABLE IF NOT EXISTS issuance_claims (
        request_fingerprint  TEXT PRIMARY KEY,
        claimed_at           REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS checkpoints (
        seq        INTEGER PRIMARY KEY,
        head_hash  TEXT NOT NULL,
        signed_at  REAL NOT NULL,
        signature  BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS crl_numbers (
        authority  TEXT PRIMARY KEY,
        number     INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS bootstrap_token_uses (
        token_id  TEXT NOT NULL REFERENCES bootstrap_tokens(token_id),
        profile   TEXT NOT NULL,
        used_at   REAL NOT NULL,
        PRIMARY KEY (token_id, profile)
    );
    """,
    # 2: CA generations in the store (replicas share them), which generation signed each
    # certificate, and indexes that keep every inventory page a bounded range scan.
    """
    ALTER TABLE certificates ADD COLUMN issuer_key_id TEXT NOT NULL DEFAULT '';
    CREATE TABLE ca_generations (
        authority        TEXT NOT NULL,
        generation       INTEGER NOT NULL,
        key_label        TEXT NOT NULL,
        certificate_pem  TEXT NOT NULL,
        state            TEXT NOT NULL,
        provenance       TEXT NOT NULL,
        created_at       REAL NOT NULL,
        kind             TEXT NOT NULL DEFAULT 'ca',
        public_key_pem   TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (authority, generation)
    );
    CREATE INDEX certificates_expiry ON certificates(not_after, serial);
    CREATE INDEX certificates_authority_expiry ON certificates(authority, not_after, serial);
    CREATE INDEX certificates_profile_expiry ON certificates(profile, not_after, serial);
    CREATE INDEX certificates_revoked_expiry ON certificates(not_after, serial)
        WHERE revoked_at IS NOT NULL;
    CREATE INDEX certificates_issuer ON certificates(authority, issuer_key_id, not_after);
    """,
    # 3: bootstrap tokens listed page by page, latest to expire first, and revoked
    # certificates of one CA or profile: each page a range of an index, however large
    # the table (issue 10).
    """
    CREATE INDEX bootstrap_tokens_expiry ON bootstrap_tokens(expires_at, token_id);
    CREATE INDEX certificates_revoked_authority ON certificates(authority, not_after, serial)
        WHERE revoked_at IS NOT NULL;
    CREATE INDEX certificates_revoked_profile ON certificates(profile, not_after, serial)
        WHERE revoked_at IS NOT NULL;
    """,
    # 4: CA rotation: the new generation's cross-signed certificate, and when each
    # generation's state last changed (rotation steps and their audit records).
    """
    ALTER TABLE ca_generations ADD COLUMN cross_certificate_pem TEXT NOT NULL DEFAULT '';
    ALTER TABLE ca_generations ADD COLUMN state_changed_at REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
