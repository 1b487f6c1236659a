"""The upstream's front door, pure: the cookies upstreams set (``cookie_jar``) and Cloudflare's own
error pages (``cloudflare_pages``). Their addons: addons.upstream_cookies, addons.cloudflare_guard."""
