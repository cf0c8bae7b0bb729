"""Changing models while serving, on the supervisor's side: the desired state and its file
(``state.py``), version policies (``policy.py``), the fleet that makes every worker converge
on one change (``fleet.py``), the store poller (``poll.py``) and canary rollouts
(``rollout.py``). Nothing here imports an engine or numpy: it runs in the supervisor."""
