-- Call forwarding per extension: where calls go always, when busy, and when unanswered
-- (an extension number of the tenant or an E.164 number), and after how many seconds.
ALTER TABLE extensions ADD COLUMN forward_always TEXT;
ALTER TABLE extensions ADD COLUMN forward_busy TEXT;
ALTER TABLE extensions ADD COLUMN forward_no_answer TEXT;
ALTER TABLE extensions ADD COLUMN no_answer_seconds BIGINT NOT NULL DEFAULT 25;
