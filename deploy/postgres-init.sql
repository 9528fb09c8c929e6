-- The ledger (PRISM_STATE_URL) lives in its own database beside Dagster's instance.
CREATE DATABASE prism_state;
