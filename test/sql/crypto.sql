-- dbrag.encrypt / dbrag.decrypt / dbrag.encryption_key_id: what comes back
-- for good values, and the errors for tampered, truncated or foreign ones.
-- The cluster runs with dbrag.master_key set; ciphertexts are random, so
-- only their shape and what decrypts from them are shown.
\pset format unaligned
\pset fieldsep ' | '
CREATE TABLE regress_util.sealed AS SELECT dbrag.encrypt('hello', 'ctx-a') AS c;
SELECT length(c) AS bytes, get_byte(c, 0) AS format_version,
       dbrag.encryption_key_id(c) ~ '^m[0-9a-f]{8}$' AS key_id_shape,
       dbrag.decrypt(c, 'ctx-a') AS plaintext
FROM regress_util.sealed;
-- A fresh nonce each time: two encryptions of one value differ.
SELECT dbrag.encrypt('hello', 'ctx-a') <> dbrag.encrypt('hello', 'ctx-a') AS differ;
SELECT n, regress_util.mask(regress_util.try(s)) AS result FROM (VALUES
    -- round trips
    (1, $q$SELECT dbrag.decrypt(dbrag.encrypt('', ''), '')$q$),
    (2, $q$SELECT dbrag.decrypt(dbrag.encrypt('héllo wörld ✓', 'ctx'), 'ctx')$q$),
    -- the wrong context, tampered or extended values
    (3, $q$SELECT dbrag.decrypt(c, 'ctx-b') FROM regress_util.sealed$q$),
    (4, $q$SELECT dbrag.decrypt(c, 'CTX-A') FROM regress_util.sealed$q$),
    (5, $q$SELECT dbrag.decrypt(set_byte(c, length(c) - 1, get_byte(c, length(c) - 1) # 1), 'ctx-a') FROM regress_util.sealed$q$),
    (6, $q$SELECT dbrag.decrypt(set_byte(c, 20, get_byte(c, 20) # 128), 'ctx-a') FROM regress_util.sealed$q$),
    (7, $q$SELECT dbrag.decrypt(c || '\x00'::bytea, 'ctx-a') FROM regress_util.sealed$q$),
    -- a key id this server does not hold
    (8, $q$SELECT dbrag.decrypt(set_byte(c, 3, get_byte(c, 3) # 1), 'ctx-a') FROM regress_util.sealed$q$),
    -- truncated values and wrong lengths
    (9, $q$SELECT dbrag.decrypt('\x'::bytea, 'ctx-a')$q$),
    (10, $q$SELECT dbrag.decrypt('\x01'::bytea, 'ctx-a')$q$),
    (11, $q$SELECT dbrag.decrypt(substr(c, 1, 20), 'ctx-a') FROM regress_util.sealed$q$),
    (12, $q$SELECT dbrag.decrypt(substr(c, 1, length(c) - 1), 'ctx-a') FROM regress_util.sealed$q$),
    -- not an envelope at all
    (13, $q$SELECT dbrag.decrypt(convert_to('plain text, never encrypted', 'UTF8'), 'ctx-a')$q$),
    (14, $q$SELECT dbrag.decrypt(decode(repeat('00', 64), 'hex'), 'ctx-a')$q$),
    -- NULLs: STRICT, like pgcrypto
    (15, $q$SELECT dbrag.encrypt(NULL, 'ctx')$q$),
    (16, $q$SELECT dbrag.encrypt('x', NULL)$q$),
    (17, $q$SELECT dbrag.decrypt(NULL, 'ctx')$q$),
    (18, $q$SELECT dbrag.decrypt(c, NULL) FROM regress_util.sealed$q$),
    (19, $q$SELECT dbrag.encryption_key_id(NULL)$q$),
    -- key ids of foreign values
    (20, $q$SELECT dbrag.encryption_key_id('\x'::bytea)$q$),
    (21, $q$SELECT dbrag.encryption_key_id('\x0203'::bytea)$q$),
    -- size limits
    (22, $q$SELECT length(dbrag.encrypt('x', repeat('c', 65536)))$q$),
    (23, $q$SELECT dbrag.encrypt('x', repeat('c', 65537))$q$),
    (24, $q$SELECT dbrag.decrypt(decode(repeat('00', 16 * 1024 * 1024 + 1025), 'hex'), 'ctx')$q$)
) AS t(n, s) ORDER BY n;
-- As a client reads a refusal:
SELECT dbrag.decrypt(c, 'ctx-b') FROM regress_util.sealed;
DROP TABLE regress_util.sealed;
