"""The runtime: parts that carry out what the pure state machine decides, one job each.

- ``commit``: transitions of many sagas committed in one transaction (group
  commit); effects handed on only once committed (write-ahead);
- ``attempts``: step functions run as tasks or on threads, timed and cancelled;
- ``leases``: claims of due sagas (of this engine's definitions), lease renewal;
- ``timers``: the machine's wake times of the sagas held here;
- ``requests``: operators' commands for sagas this engine holds;
- ``messaging``: commands into the outbox, the relay, replies and triggers in;
- ``retention``: finished sagas older than the engine's retention deleted in the background.

The parts share ``_base.RuntimeBase`` and never import one another;
``SagaEngine`` combines them and is the only place that routes between them.
"""
