"""The dashboard: usage rows, their cost, the local management API and the page.

usage_rows  UsageRow and the usage table in the memory's SQLite file (totals, series, retention)
cost        a call's cost in USD from LiteLLM's bundled price table (imported lazily)
api         pure handlers of /memory-routing/ (page), /usage and /memories*
page        the HTML page: server-side SVG charts, escaped text, same-origin assets only
"""
