"""Plumbing every domain uses: settings, the database, the outbox, the broker port, errors,
ids, money, text and image checks. Nothing here imports a domain."""
