"""What goes back on the wire: the client's protocol and its error shape (``protocol``, pure),
answers the proxy makes itself (``responses``), token usage read as answers pass (``usage``),
a request's and an answer's JSON parsed once per flow (``request_json``, ``answer_json``; large
bodies in a worker process: ``large_bodies``, ``body_worker``),
upstream failures in the client's shape (``upstream_failures``) and the per-flow log line
(``flow_log``)."""
