"""rootless-sandbox's pytest plugin (entry point ``sandbox``): a fresh container per test.

``plugin`` (options, marker, hooks), ``marker`` (the frozen request), ``factory`` (the session's
engine, containers and retention), ``isolate`` (test bodies inside a container), ``fixtures``
(``container``, ``sandbox``, ``container_factory``), ``hooks`` (our hookspecs).
"""

__all__: list[str] = []
