"""The one harness of the tests and the benchmarks: a Fluxgate gateway on real processes.

- ``processes``: a process in its own group, logging to a file, measured and stopped; free
  ports, waiting for something to happen.
- ``claims``: a new PostgreSQL database and a claimed Redis db number for each stack.
- ``stack``: ``Stack``, the gateway (simulator, migrations, API, workers, beat, keys, SQL) and
  ``running_gateway``; the simulator's client.
- ``faultproxy``: a TCP proxy that takes PostgreSQL or Redis away from a stack's processes.
- ``images``: pictures, real and hostile, made on the fly.
"""
