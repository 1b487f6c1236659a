"""How long one 30 MB request stalls a concurrent stream: bare mitmdump vs the addon, offload on/off.

Uses the end-to-end test's pieces (tests/test_e2e_large_bodies.py): a stream ticking every
20 ms is read through the proxy while curl posts a 30 MB chat request. Prints, per run, the
stream's largest gap before and during the upload (ms) and the upload's wall time (s). Bare
mitmdump (reverse proxy, a one-line script that streams answers) is what mitmproxy itself
costs for the same body.

    .venv/bin/python bench/large_body_stall.py [runs]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import harness  # type: ignore[import-not-found]  # noqa: E402 - tests/ is put on sys.path above
from harness import RunningProxy, free_port, proxy_env  # noqa: E402
from test_e2e_large_bodies import (  # type: ignore[import-not-found]  # noqa: E402
    BODY_BYTES, TickingUpstream, proxy_for, upload_beside_a_stream,
)


def big_body(path: Path) -> Path:
    line = "All work and no play makes Jack a dull boy. \"Quoted\", tab\t, é, 😀 \\ end\n"
    text = line * (BODY_BYTES // len(json.dumps(line, ensure_ascii=False).encode()))
    path.write_bytes(json.dumps({"model": "gpt-alias", "max_tokens": 16, "messages": [
        {"role": "system", "content": "Summarise."}, {"role": "user", "content": text}]}, ensure_ascii=False).encode())
    return path


# Bare mitmdump buffers answers whole; this one-hook script streams them, as the addon does.
STREAM_ANSWERS = """
def responseheaders(flow):
    flow.response.stream = True
"""


def bare_mitmdump(workdir: Path, upstream: TickingUpstream) -> RunningProxy:
    port = free_port()
    (workdir / "stream_answers.py").write_text(STREAM_ANSWERS)
    log_path = workdir / "bare.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(harness.MITMDUMP), "-s", str(workdir / "stream_answers.py"), "--listen-host", "127.0.0.1", "--mode",
             f"reverse:{upstream.url}@{port}",
             "--set", f"confdir={workdir / 'confdir'}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=proxy_env(), cwd=workdir,
        )
    proxy = RunningProxy(process, port, port, workdir / "confdir", log_path)
    deadline = time.monotonic() + 60
    while f"127.0.0.1:{port}" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proxy


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    workdir = Path(tempfile.mkdtemp())
    upstream = TickingUpstream().start()
    body = big_body(workdir / "body.json")
    results: dict[str, list[tuple[int, int, float]]] = {}
    try:
        for _ in range(runs):  # alternating, so that the machine's load falls on all three alike
            for name, extra, headers in (
                ("mitmdump + stream", None, ()),
                ("addon, offload", [], ()),
                ("addon, in loop", ["--set", "memory_routing_offload_body_size=1g"], ()),
                # Without memory: only the router's decode and encode stay in the loop.
                ("in loop, no memory", ["--set", "memory_routing_offload_body_size=1g"], ("x-memory-mode: off",)),
            ):
                run_dir = Path(tempfile.mkdtemp(dir=workdir))
                if extra is None:
                    proxy = bare_mitmdump(run_dir, upstream)
                    try:
                        run = upload_beside_a_stream(proxy, upstream, body, headers)
                    finally:
                        proxy.stop()
                else:
                    with proxy_for(run_dir, upstream, extra) as proxy:
                        if extra == []:
                            # The worker starts on the first large body. (Not done in the loop
                            # case: memory's writer would still be redacting that 30 MB turn in
                            # a thread, holding the GIL, during the measured upload.)
                            upload_beside_a_stream(proxy, upstream, body)
                        run = upload_beside_a_stream(proxy, upstream, body, headers)
                upstream.bodies.clear()
                results.setdefault(name, []).append((round(run.max_gap_before * 1000), round(run.max_gap_during * 1000),
                                      round(run.upload_s, 2)))
                print(name, results[name][-1], flush=True)
    finally:
        upstream.close()
    print("max gap during the upload, ms (tick 20 ms):")
    for name, rows in results.items():
        print(f"  {name:18} {sorted(r[1] for r in rows)}  upload s {sorted(r[2] for r in rows)}")


if __name__ == "__main__":
    main()
