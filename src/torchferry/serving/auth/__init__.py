"""Bearer tokens with scopes (``torchferry serve --auth``).

Stdlib only (and Starlette for the supervisor's ASGI wrapper, ``guard.py``): the supervisor
imports it as well as the workers. ``scopes`` says what a token may do, ``keyfile`` reads and
writes the key file, ``ratelimit`` is the per-token bucket, ``keyring`` turns an
``Authorization`` value into a :class:`~torchferry.serving.auth.keyring.Principal` or the
error to answer, re-reading the key file when it changes.
"""
