"""Write a CA bundle = the usual roots + mitmproxy's CA, for clients behind the forward proxy.

Python clients read ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` as a *replacement* for their
default roots, so pointing them at mitmproxy's CA alone breaks every other HTTPS call they make.
Usage: ``python -m memory_routing.mitm.ca_bundle [--confdir ~/.mitmproxy] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

import certifi
from mitmproxy import certs

CA_NAME = "mitmproxy"
CA_KEY_SIZE = 2048  # mitmproxy's own default


def root_bundles() -> list[Path]:
    """certifi's roots, and the system's when it has a bundle file (corporate CAs live there)."""
    paths = [Path(certifi.where())]
    system = ssl.get_default_verify_paths().cafile
    if system and Path(system).is_file() and Path(system).resolve() != paths[0].resolve():
        paths.append(Path(system))
    return paths


def write_bundle(confdir: Path, out: Path) -> Path:
    # Creates mitmproxy's CA exactly as mitmproxy would on first start, if it is not there yet.
    certs.CertStore.from_store(str(confdir), CA_NAME, CA_KEY_SIZE)
    mitm_ca = confdir / f"{CA_NAME}-ca-cert.pem"
    parts = [path.read_text() for path in root_bundles()]
    parts.append(f"# mitmproxy CA ({mitm_ca})\n" + mitm_ca.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(part.rstrip("\n") + "\n" for part in parts))
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--confdir", default="~/.mitmproxy", help="mitmproxy's confdir (default ~/.mitmproxy)")
    parser.add_argument("--out", default=None, help="bundle to write (default CONFDIR/ca-bundle.pem)")
    args = parser.parse_args(argv)
    confdir = Path(args.confdir).expanduser()
    out = Path(args.out).expanduser() if args.out else confdir / "ca-bundle.pem"
    write_bundle(confdir, out)
    print(f"wrote {out}\n  export SSL_CERT_FILE={out} REQUESTS_CA_BUNDLE={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
