/* pgxn/walredo/walredo--1.0.sql */
\echo Use "CREATE EXTENSION walredo" to load this file. \quit

-- Never returns: serves Strata's binary redo protocol on stdin/stdout.
-- Only meaningful in `postgres --single` on a scratch cluster.
CREATE FUNCTION walredo_main() RETURNS void
AS 'MODULE_PATHNAME', 'walredo_main'
LANGUAGE C;
