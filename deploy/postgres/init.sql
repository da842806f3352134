-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d),
-- as POSTGRES_USER. One database per stateful service: no two services share a database
-- (design invariant 1). The deliverer keeps no state. Each service creates its own tables
-- (Alembic migrations) when it starts.
--
-- For production, give each service its own role too, so that a leaked DSN opens one store:
--   CREATE ROLE dihya_signer LOGIN PASSWORD '…';
--   ALTER DATABASE signer OWNER TO dihya_signer;
--   REVOKE ALL ON DATABASE signer FROM PUBLIC;
CREATE DATABASE ingest;
CREATE DATABASE signer;
CREATE DATABASE audit;
