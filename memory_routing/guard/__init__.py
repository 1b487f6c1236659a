"""Stage 1, the edge: what may listen (``listen``), which hosts are intercepted at all
(``intercept_scope``), who may use the gateway (``gateway_auth``) and which requests are too large
or ambiguous to route (``request_limits``). Every addon here enforces, so each fails closed."""
