"""The management API, served by the supervisor on its own listener (loopback by default).

TorchServe's management API (``torchserve.py``), Triton's model repository extension
(``triton.py``), and torchferry's own traffic, shadow, version policy (``traffic.py``) and
rollout (``rollouts.py``) routes, all over one ``FleetAPI`` (``api.py``): the supervisor's
fleet, which makes every worker converge on each change. ``sources.py`` decides which
paths a load may read. The supervisor imports this package, so nothing here may import
numpy, an engine, or the workers' serving stack.
"""
