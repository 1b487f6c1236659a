"""Routing a model call: which client sent it (``classify``), where LiteLLM says the model lives
(``providers``) and what changes on the way (``planner``, pure). The addon that applies the
decision to the flow is addons.router."""
