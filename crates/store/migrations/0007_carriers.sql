-- Operator-level carriers: the provider's PSTN interconnects, shared by every tenant.
-- An initial INVITE from one of a carrier's source networks to a number of the DID pool
-- reaches the tenant that holds the number. `addresses` is a JSON array of networks
-- (`192.0.2.10`, `198.51.100.0/24`, `2001:db8::/48`).
CREATE TABLE carriers (
    name TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
