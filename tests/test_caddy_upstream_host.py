"""What the app behind the host's Caddy sees as Host, with the real caddy running the rendered Caddyfile.

mbin v1.10.1 compares the raw Host header with the domain of a webfinger acct: (src/Service/ActivityPub/
Webfinger/WebFingerParameters.php): a Host carrying a port (HTTPS not on 443, as on a local stack or
behind a port forward) made every webfinger lookup 404. The rendered Caddyfile passes Host without the
port. Caddy, a recording upstream on mbin's port and curl all run in a network namespace made here
(Caddy binds 80, 443 and its admin port there, touching nothing of the machine's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provision.remote.netns import call_in_netns
from tests.support.render_cases import DOMAIN, dotenv, read, rendered, tool

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (a network namespace)"
)
ACCT = f"/.well-known/webfinger?resource=acct:admin@{DOMAIN}"


def _upstream(port: int, seen: list[str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Host", ""))
            body = json.dumps({"subject": f"acct:admin@{DOMAIN}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/jrd+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _hosts_seen_by_the_app(caddyfile: Path, port: int, home: Path) -> list[str]:
    """Run caddy on ``caddyfile`` in a fresh network namespace; GET the webfinger URL with Host domain:8443."""
    holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 300"])
    netns = f"/proc/{holder.pid}/ns/net"
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "c")}
    caddy = None
    server = None
    seen: list[str] = []
    try:
        for _ in range(100):  # bounded: until lo is up inside the namespace
            link = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"], capture_output=True)
            if b"UP" in link.stdout.split(b"mtu")[0]:
                break
            time.sleep(0.05)
        server = call_in_netns(netns, lambda: _upstream(port, seen))
        caddy = subprocess.Popen(
            ["nsenter", f"--net={netns}", tool("caddy"), "run", "--adapter", "caddyfile", "--config", str(caddyfile)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        root = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        curl = [
            "nsenter", f"--net={netns}", "curl", "-sS", "--max-time", "5", "--cacert", str(root),
            "--resolve", f"{DOMAIN}:443:127.0.0.1", "-H", f"Host: {DOMAIN}:8443", "-o", "/dev/null",
            "-w", "%{http_code}", f"https://{DOMAIN}{ACCT}",
        ]  # fmt: skip
        result = None
        for _ in range(60):  # bounded: Caddy starts and issues its internal certificate in a few seconds
            if caddy.poll() is not None:
                pytest.fail(f"caddy exited: {caddy.stderr.read().decode()[-2000:]}")
            if root.exists():
                result = subprocess.run(curl, capture_output=True, text=True, env=env)
                if result.stdout == "200":
                    break
            time.sleep(0.25)
        assert result is not None and result.stdout == "200", result and (result.stdout, result.stderr)
        return seen
    finally:
        if caddy is not None:
            caddy.terminate()
            caddy.wait(timeout=30)
        if server is not None:
            server.shutdown()
            server.server_close()
        holder.kill()
        holder.wait()


def test_mbin_gets_the_host_without_the_port(tmp_path: Path) -> None:
    bundle, _ = rendered("kbin", "tiny", "local")  # tls internal: no ACME, no outside network
    port = int(dotenv(read(bundle, "app-config"))["SERVER_NAME"].lstrip(":"))
    caddyfile = bundle.path("proxy")
    assert "header_up Host {host}" in caddyfile.read_text()
    assert _hosts_seen_by_the_app(caddyfile, port, tmp_path / "a") == [DOMAIN]

    # the same Caddyfile without that line passes the visitor's Host with its port: what mbin 404'd on
    without = tmp_path / "Caddyfile.without"
    without.write_text(caddyfile.read_text().replace("header_up Host {host}", ""))
    assert _hosts_seen_by_the_app(without, port, tmp_path / "b") == [f"{DOMAIN}:8443"]
