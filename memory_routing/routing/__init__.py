"""Routing a model call, pure: which client sent it (``classify``) and where it goes and what
changes on the way (``planner``; where LiteLLM says a model lives is llm.providers). The addon
that applies the decision to the flow is addons.router."""
