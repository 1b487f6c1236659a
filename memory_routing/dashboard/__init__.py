"""The dashboard: usage rows, their cost, the local management API and the page.

usage_rows  UsageRow and the usage table in the memory's SQLite file (totals, series, retention)
cost        a call's cost in USD as LiteLLM prices its usage, cache and reasoning included (imported lazily)
recorder    router log lines become priced usage rows, on a writer thread
api         pure handlers of /memory-routing/ (page), /usage and /memories*, dispatched by a route table
page        the HTML page: templates/page.html rendered by jinja2 with autoescaping, same-origin assets only
charts      the charts' geometry (bars, axes, labels); the template draws it as SVG
"""
