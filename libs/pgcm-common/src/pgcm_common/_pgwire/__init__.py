"""PostgreSQL's frontend/backend protocol, as little of it as pgcm needs (ADR 0005)."""
