"""Everything that leans on mitmproxy beyond its public addon API: the parsed ``mode`` option,
the replaced HTML error page, the start-up heap freeze, the CA bundle. Private internals of
mitmproxy are used only in this package (see ``internals``)."""
