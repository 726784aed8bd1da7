"""Pydantic models and pure rules of the data contract; no Flask, RQ or I/O in here."""
