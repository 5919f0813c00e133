"""RQ job functions and the escalation ladder (one module per step in ``workers.steps``)."""
