-- Idempotency records: one per (API key, Idempotency-Key). A request first claims the
-- row ('pending'); its response is stored when it ends ('done'), so a replay with the
-- same key and body gets the same status and body without doing the work twice.
CREATE TABLE idempotency (
    key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    status BIGINT,
    body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
