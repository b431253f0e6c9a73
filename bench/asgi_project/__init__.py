"""The small Django project of the ASGI benchmark (``bench/asgi_run.py``).

``settings`` picks the engine and the cache from environment variables, so that the
hardened and the stock side run as separate uvicorn processes of the same code;
``urls`` holds the async views; ``prepare`` creates the sessions through the engine's
own API; ``sessions.lua`` is the ``wrk`` script that sends them.
"""
