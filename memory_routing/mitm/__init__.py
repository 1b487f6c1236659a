"""What leans on mitmproxy beyond its public addon API: the one dispatcher of the stages
(``pipeline``), the routed-call predicate and header index of a flow (``flows``), a flow's request
and answer JSON parsed once (``request_json``, ``answer_json``), the parsed ``mode`` option, the
CA bundle. Private internals of mitmproxy are used only in this package (see ``internals``)."""
