"""Stage 3, routing a model call: which client sent it (``classify``), which endpoint it is
(``model_calls``), where LiteLLM says the model lives (``providers``, the one module here that
imports LiteLLM), what changes on the way (``planner``, pure), and the addon that applies the
decision to the flow (``router``)."""
