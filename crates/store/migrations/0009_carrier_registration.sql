-- Carriers we register to (digest credentials) instead of, or beside, recognising them by
-- source network: a JSON object {registrar, username, password, expires}; NULL for a
-- carrier recognised by its networks alone. The edge sends the REGISTERs and takes calls
-- from the registrar's address as that carrier's.
ALTER TABLE carriers ADD COLUMN registration TEXT;
