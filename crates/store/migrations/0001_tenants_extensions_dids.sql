-- One schema for SQLite and PostgreSQL: TEXT ids, BIGINT epoch milliseconds, named
-- constraints (the API maps their names to 409 answers). Every tenant-scoped table
-- carries tenant_id.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
    placement TEXT NOT NULL DEFAULT 'shared',
    max_calls BIGINT NOT NULL DEFAULT 20,
    calls_per_second BIGINT NOT NULL DEFAULT 5,
    max_registrations BIGINT NOT NULL DEFAULT 100,
    max_extensions BIGINT NOT NULL DEFAULT 100,
    reg_expiry_min BIGINT NOT NULL DEFAULT 60,
    reg_expiry_max BIGINT NOT NULL DEFAULT 3600,
    reg_expiry_default BIGINT NOT NULL DEFAULT 600,
    config_version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    CONSTRAINT tenants_domain_unique UNIQUE (domain)
);

CREATE TABLE extension_ranges (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    first_number BIGINT NOT NULL,
    last_number BIGINT NOT NULL,
    CHECK (first_number <= last_number)
);
CREATE INDEX extension_ranges_tenant ON extension_ranges (tenant_id);

CREATE TABLE extensions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    range_id TEXT NOT NULL REFERENCES extension_ranges (id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    username TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    voicemail BOOLEAN NOT NULL DEFAULT FALSE,
    max_registrations BIGINT NOT NULL DEFAULT 3,
    created_at BIGINT NOT NULL,
    CONSTRAINT extensions_number_unique UNIQUE (tenant_id, number),
    CONSTRAINT extensions_username_unique UNIQUE (tenant_id, username)
);

CREATE TABLE dids (
    number TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'free' CHECK (state IN ('free', 'assigned', 'quarantined')),
    tenant_id TEXT REFERENCES tenants (id) ON DELETE SET NULL,
    target TEXT,
    quarantined_until BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dids_free ON dids (state, number);
CREATE INDEX dids_tenant ON dids (tenant_id);

-- Change events, written in the same transaction as the change. Every change bumps the
-- tenant's config_version under the tenant row's lock, so (tenant_id, config_version) is
-- the order of that tenant's events, with no gaps.
CREATE TABLE outbox (
    tenant_id TEXT NOT NULL,
    config_version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    published BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (tenant_id, config_version)
);
CREATE INDEX outbox_unpublished ON outbox (published, tenant_id, config_version);
