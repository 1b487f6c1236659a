"""Stage 4, the upstream's front door: the cookies upstreams set (``cookie_jar`` pure, ``cookies``
addon), the per-host cap on requests in flight (``in_flight``) and Cloudflare's own error pages
(``pages`` pure, ``guard`` addon)."""
