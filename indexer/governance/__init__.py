"""Governance: accounts, audit trail, pseudonymous patient references and de-identified export."""
