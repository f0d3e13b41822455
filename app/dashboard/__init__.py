"""The admin dashboard (``/admin``): server-rendered pages over the same services as the API,
behind a server-side session that an admin key opens once."""
