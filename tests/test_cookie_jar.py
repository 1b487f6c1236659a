"""The upstream cookie jar (RFC 6265 rules via http.cookiejar) and Cloudflare page recognition."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from memory_routing.upstream.cloudflare_pages import classify_cloudflare_error
from memory_routing.upstream.cookie_jar import JarChanges, UpstreamCookieJar, read_scope, write_changes

API = "https://api.example.com/v1/chat/completions"


def jar_with(*set_cookies: str, url: str = API) -> UpstreamCookieJar:
    jar = UpstreamCookieJar()
    jar.store(url, "machine", list(set_cookies))
    return jar


@pytest.mark.parametrize(
    "set_cookie, url, sent",
    [
        ("__cf_bm=a; Path=/", API, "__cf_bm=a"),
        ("__cf_bm=a; Path=/", "https://other.example.com/v1/x", None),  # host-only
        ("__cf_bm=a; Path=/; Domain=example.com", "https://other.example.com/v1/x", "__cf_bm=a"),
        ("__cf_bm=a; Path=/; Domain=example.com", "https://example.org/", None),
        ("__cf_bm=a; Path=/v1", "https://api.example.com/v2/x", None),
        ("__cf_bm=a; Path=/v1", API, "__cf_bm=a"),
        ("__cf_bm=a; Path=/; Secure", "http://api.example.com/v1/x", None),
        ("__cf_bm=a; Path=/; Secure", API, "__cf_bm=a"),
        ("session=a; Path=/", API, None),  # not a Cloudflare cookie: never stored
        ("__cf_bm=a; Path=/; Max-Age=0", API, None),
        ("__cf_bm=a; Path=/; Expires=Wed, 01 Jan 2020 00:00:00 GMT", API, None),
        ("__cf_bm=a; Path=/; Max-Age=600; Expires=Wed, 01 Jan 2020 00:00:00 GMT", API, "__cf_bm=a"),  # Max-Age wins
    ],
)
def test_rfc6265_matching(set_cookie: str, url: str, sent: str | None):
    assert jar_with(set_cookie).cookie_header(url, "machine", None) == sent


def test_expiry_by_max_age(monkeypatch: pytest.MonkeyPatch):
    jar = jar_with("__cf_bm=a; Path=/; Max-Age=1")
    assert jar.cookie_header(API, "machine", None) == "__cf_bm=a"
    later = time.time() + 2  # http.cookiejar reads the wall clock: move it past Max-Age
    monkeypatch.setattr(time, "time", lambda: later)
    assert jar.cookie_header(API, "machine", None) is None


def test_client_cookies_are_kept_and_win():
    jar = jar_with("__cf_bm=jar; Path=/", "cf_clearance=jar2; Path=/")
    assert jar.cookie_header(API, "machine", "__cf_bm=client; x=1") == "__cf_bm=client; x=1; cf_clearance=jar2"


def test_scopes_are_separate():
    jar = UpstreamCookieJar()
    jar.store(API, "alice", ["__cf_bm=a; Path=/"])
    assert jar.cookie_header(API, "alice", None) == "__cf_bm=a"
    assert jar.cookie_header(API, "bob", None) is None


def test_configured_names():
    jar = UpstreamCookieJar(["custom"])
    jar.store(API, "machine", ["custom=1; Path=/", "__cf_bm=2; Path=/"])
    assert jar.cookie_header(API, "machine", None) == "custom=1"


def test_store_reports_changes_only():
    jar = UpstreamCookieJar()
    assert jar.store(API, "machine", ["__cf_bm=a; Path=/"]) is True
    assert jar.store(API, "machine", ["__cf_bm=a; Path=/"]) is False
    assert jar.store(API, "machine", ["other=x"]) is False


def test_persistence_roundtrip_is_private_and_skips_expired(tmp_path: Path):
    jar = jar_with("__cf_bm=a; Path=/; Max-Age=600", "cf_clearance=b; Path=/; Domain=example.com; Secure")
    jar.store(API, "bob", ["_cfuvid=c; Path=/"])
    path = tmp_path / "jar.json"
    write_changes(path, jar.take_changes())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = UpstreamCookieJar()
    assert again.load(path) == 3
    assert again.cookie_header(API, "machine", None) == "__cf_bm=a; cf_clearance=b"
    assert again.cookie_header("https://x.example.com/", "machine", None) == "cf_clearance=b"
    assert again.cookie_header(API, "bob", None) == "_cfuvid=c"

    data = json.loads(path.read_text())
    data["cookies"][0]["expires"] = int(time.time()) - 10
    path.write_text(json.dumps(data))
    assert UpstreamCookieJar().load(path) == 2


def test_only_changed_scopes_are_snapshotted_and_the_file_keeps_the_rest(tmp_path: Path):
    path = tmp_path / "jar.json"
    jar = UpstreamCookieJar()
    jar.store(API, "alice", ["__cf_bm=a; Path=/"])
    jar.store(API, "bob", ["__cf_bm=b; Path=/"])
    write_changes(path, first := jar.take_changes())
    jar.saved(first)
    assert not jar.has_changes
    jar.store(API, "bob", ["__cf_bm=b2; Path=/"])
    changes = jar.take_changes()
    assert set(changes.scopes) == {"bob"}
    write_changes(path, changes)
    assert [e["value"] for e in read_scope(path, "alice")] == ["a"]
    assert [e["value"] for e in read_scope(path, "bob")] == ["b2"]
    write_changes(path, JarChanges({"bob": ()}))  # an emptied scope leaves the file
    assert read_scope(path, "bob") == [] and len(read_scope(path, "alice")) == 1


def test_jars_beyond_the_limit_leave_memory_least_recently_used_first(tmp_path: Path):
    path = tmp_path / "jar.json"
    jar = UpstreamCookieJar(limit=2)
    jar.store(API, "alice", ["__cf_bm=a; Path=/"])
    jar.store(API, "bob", ["__cf_bm=b; Path=/"])
    assert jar.cookie_header(API, "alice", None) == "__cf_bm=a"  # alice used: bob is the oldest now
    jar.store(API, "carol", ["__cf_bm=c; Path=/"])
    assert jar.resident_count == 2 and not jar.holds("bob")
    changes = jar.take_changes()
    assert changes.evicted == {"bob"} and set(changes.scopes) == {"alice", "bob", "carol"}
    write_changes(path, changes)
    jar.saved(changes)
    assert jar.resident("alice") and not jar.resident("bob")  # bob must be read back from the file
    with pytest.raises(LookupError):
        jar.store(API, "bob", ["__cf_bm=hides-the-file; Path=/"])
    jar.restore("bob", read_scope(path, "bob"))
    assert jar.cookie_header(API, "bob", None) == "__cf_bm=b" and jar.resident_count == 2
    assert jar.resident("dave")  # never seen: nothing to read


def test_start_up_loads_up_to_the_limit_and_leaves_the_rest_in_the_file(tmp_path: Path):
    path = tmp_path / "jar.json"
    full = UpstreamCookieJar()
    for user in ("alice", "bob", "carol"):
        full.store(API, user, [f"__cf_bm={user}; Path=/"])
    write_changes(path, full.take_changes())
    jar = UpstreamCookieJar(limit=1)
    assert jar.load(path) == 1
    away = [user for user in ("alice", "bob", "carol") if not jar.resident(user)]
    assert len(away) == 2
    for user in away:
        jar.restore(user, read_scope(path, user))
        assert jar.cookie_header(API, user, None) == f"__cf_bm={user}"


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 99}', '{"version": 1, "cookies": [{"name": "x"}]}'])
def test_bad_files_are_refused(tmp_path: Path, text: str):
    path = tmp_path / "jar.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        UpstreamCookieJar().load(path)


def test_describe_hides_values():
    info = jar_with("__cf_bm=secret-value; Path=/").describe()
    assert [(i.scope, i.name, i.domain, i.path) for i in info] == [("machine", "__cf_bm", "api.example.com", "/")]
    assert "secret-value" not in repr(info)


CF = {"server": "cloudflare", "cf-ray": "8f-FRA"}


@pytest.mark.parametrize(
    "status, headers, body, expected",
    [
        (429, CF | {"content-type": "text/plain"}, b"error code: 1200", (429, "1200", False, 10)),
        (503, CF | {"content-type": "text/html", "retry-after": "30"}, b"<html>error code: 1015</html>",
         (503, "1015", False, 30)),
        (403, CF | {"content-type": "text/html", "cf-mitigated": "challenge"}, b"<html>Just a moment...</html>",
         (403, None, True, 10)),
    ],
)
def test_cloudflare_pages_are_recognised(status, headers, body, expected):
    refusal = classify_cloudflare_error(status, headers, body)
    assert (refusal.status, refusal.code, refusal.challenge, refusal.retry_after) == expected


@pytest.mark.parametrize(
    "status, headers",
    [
        (429, CF | {"content-type": "application/json"}),  # the provider's own rate limit, behind Cloudflare
        (500, CF | {"content-type": "text/html"}),
        (429, {"content-type": "text/plain"}),  # not from Cloudflare
    ],
)
def test_provider_answers_pass_through(status, headers):
    assert classify_cloudflare_error(status, headers, b"error code: 1200") is None
