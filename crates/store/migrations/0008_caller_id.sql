-- The number presented as the caller on calls out through trunks: per extension, else
-- per tenant, else the tenant's first number. Always one of the tenant's own numbers
-- (checked on write; one released later is no longer presented).
ALTER TABLE tenants ADD COLUMN caller_id TEXT;
ALTER TABLE extensions ADD COLUMN caller_id TEXT;
