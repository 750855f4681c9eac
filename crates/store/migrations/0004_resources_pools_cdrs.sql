-- Call-flow resources of a tenant (ring groups, IVR menus, voicemail boxes, time
-- conditions, outbound routes, trunks). Each kind has a typed spec the store validates
-- (JSON text here), including that every reference stays inside the tenant.
CREATE TABLE tenant_resources (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('ring_group', 'ivr_menu', 'voicemail_box', 'time_condition', 'outbound_route', 'trunk')),
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT tenant_resources_name_unique UNIQUE (tenant_id, kind, name)
);
CREATE INDEX tenant_resources_tenant ON tenant_resources (tenant_id, kind);

-- Media pools: shared, or dedicated to one tenant; their limits become cgroup limits.
CREATE TABLE media_pools (
    name TEXT PRIMARY KEY,
    dedicated_tenant_id TEXT REFERENCES tenants (id) ON DELETE SET NULL,
    max_sessions BIGINT NOT NULL,
    cpu_percent BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Call detail records, written by the core when a call ends.
CREATE TABLE cdrs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    call_id TEXT NOT NULL,
    from_uri TEXT NOT NULL,
    to_uri TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    disposition TEXT NOT NULL,
    hangup_side TEXT,
    legs TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX cdrs_tenant ON cdrs (tenant_id, started_at);
