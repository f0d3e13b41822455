"""Cloudflare Workers AI: the client, the FLUX.2 model catalog, and the account-wide limiter."""
