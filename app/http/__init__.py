"""HTTP plumbing: the request session, body reading and limits, Server-Sent Events, the
OpenAPI document, serving, and the operations endpoints."""
