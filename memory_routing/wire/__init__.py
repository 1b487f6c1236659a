"""What goes over the wire, without a flow: the client's protocol and its error shape
(``protocol``), header values and the header index (``header_values``, ``headers``), model-call
endpoints (``model_calls``), answers the proxy makes itself (``responses``), token usage read as
answers pass (``usage``), large bodies read in a worker process (``large_bodies``,
``body_worker``) and the flow-log file (``flow_log``)."""
