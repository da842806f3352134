-- The databases of deploy/postgres/init.sql (a test keeps them alike): one per stateful service.
CREATE DATABASE ingest;
CREATE DATABASE signer;
CREATE DATABASE audit;
