"""Webhooks: signed job events pushed to a job's webhook_url, retried for days."""
