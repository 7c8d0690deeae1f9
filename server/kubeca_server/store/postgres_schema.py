"""The PostgreSQL store's schema, as numbered migrations.

The same tables as SQLite's, in PostgreSQL's own types (timestamptz, text[], interval,
bytea). ``kubeca_schema`` records the version; only ``init`` and ``migrate`` apply
migrations, each in its own transaction under an advisory lock, so two replicas running
``init`` at once apply each migration once.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: everything the SQLite store has at its version 2.
    """
    CREATE TABLE audit_chain (
        seq        bigint PRIMARY KEY,
        record     text NOT NULL,  -- canonical JSON, "seq" inside: hashed as written
        prev_hash  text NOT NULL,
        hash       text NOT NULL UNIQUE
    );
    CREATE TABLE certificates (
        serial               text PRIMARY KEY,  -- lower-case hex
        authority            text NOT NULL,
        profile              text NOT NULL,
        subject              text NOT NULL,
        sans                 text[] NOT NULL,
        public_key_sha256    text NOT NULL,
        fingerprint_sha256   text NOT NULL,
        not_before           timestamptz NOT NULL,
        not_after            timestamptz NOT NULL,
        caller               text NOT NULL,
        request_fingerprint  text NOT NULL,
        certificate_pem      text NOT NULL,
        audit_seq            bigint NOT NULL REFERENCES audit_chain(seq),
        revoked_at           timestamptz,
        revocation_reason    text,
        issuer_key_id        text NOT NULL DEFAULT ''
    );
    CREATE INDEX certificates_request ON certificates(request_fingerprint);
    CREATE INDEX certificates_authority ON certificates(authority, revoked_at);
    CREATE INDEX certificates_expiry ON certificates(not_after, serial);
    CREATE INDEX certificates_authority_expiry ON certificates(authority, not_after, serial);
    CREATE INDEX certificates_profile_expiry ON certificates(profile, not_after, serial);
    CREATE INDEX certificates_revoked_expiry ON certificates(not_after, serial)
        WHERE revoked_at IS NOT NULL;
    CREATE INDEX certificates_issuer ON certificates(authority, issuer_key_id, not_after);
    CREATE TABLE issuance_claims (
        request_fingerprint  text PRIMARY KEY,
        claimed_at           timestamptz NOT NULL
    );
    CREATE TABLE bootstrap_tokens (
        token_id      text PRIMARY KEY,
        secret_hash   text NOT NULL,
        profiles      text[] NOT NULL,
        node_name     text NOT NULL,
        addresses     text[] NOT NULL,
        expires_at    timestamptz NOT NULL,
        created_by    text NOT NULL,
        created_at    timestamptz NOT NULL,
        revoked_at    timestamptz,
        max_lifetime  interval NOT NULL
    );
    CREATE TABLE bootstrap_token_uses (
        token_id  text NOT NULL REFERENCES bootstrap_tokens(token_id),
        profile   text NOT NULL,
        used_at   timestamptz NOT NULL,
        PRIMARY KEY (token_id, profile)
    );
    CREATE TABLE checkpoints (
        seq        bigint PRIMARY KEY,
        head_hash  text NOT NULL,
        signed_at  timestamptz NOT NULL,
        signature  bytea NOT NULL
    );
    CREATE TABLE crl_numbers (
        authority  text PRIMARY KEY,
        number     bigint NOT NULL
    );
    CREATE TABLE ca_generations (
        authority        text NOT NULL,
        generation       integer NOT NULL,
        key_label        text NOT NULL,
        certificate_pem  text NOT NULL,
        state            text NOT NULL,
        provenance       text NOT NULL,
        created_at       timestamptz NOT NULL,
        kind             text NOT NULL DEFAULT 'ca',
        public_key_pem   text NOT NULL DEFAULT '',
        PRIMARY KEY (authority, generation)
    );
    """,
    # 2: bootstrap tokens listed page by page, latest to expire first, and revoked
    # certificates of one CA or profile: each page a range of an index (SQLite's 3).
    """
    CREATE INDEX bootstrap_tokens_expiry ON bootstrap_tokens(expires_at, token_id);
    CREATE INDEX certificates_revoked_authority ON certificates(authority, not_after, serial)
        WHERE revoked_at IS NOT NULL;
    CREATE INDEX certificates_revoked_profile ON certificates(profile, not_after, serial)
        WHERE revoked_at IS NOT NULL;
    """,
    # 3: CA rotation: the new generation's cross-signed certificate, and when each
    # generation's state last changed (SQLite's 4).
    """
    ALTER TABLE ca_generations ADD COLUMN cross_certificate_pem text NOT NULL DEFAULT '';
    ALTER TABLE ca_generations ADD COLUMN state_changed_at timestamptz;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
