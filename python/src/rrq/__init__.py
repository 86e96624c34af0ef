"""RRQ: a distributed job queue with a Rust orchestrator and Python runners.

Producers use :class:`rrq.client.RRQClient`; runner apps declare a
:class:`rrq.registry.Registry` in :class:`rrq.runner_settings.PythonRunnerSettings`
and are started by the orchestrator through ``rrq-runner``.
"""
