-- Long operations of one tenant (bulk imports), run one after another per tenant in the
-- order they were queued. Their steps are idempotent, so a job interrupted by a restart
-- runs again from the start and ends in the same state.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    payload TEXT NOT NULL,
    result TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT jobs_order_unique UNIQUE (tenant_id, seq)
);
