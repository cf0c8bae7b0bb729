"""The web console at ``/console`` on the management listener: its static page
(``files``) and the JSON it reads (``api``: the models, their live figures, the server, the
sources a load may offer, a forwarder for try-it requests). Supervisor side: it never imports
torch, numpy, an engine or the worker's app."""
