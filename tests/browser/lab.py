"""A JupyterLab server on localhost for browser tests: started in its own process group with its
own settings, workspaces and runtime folders, and always stopped (kernels first)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright never downloads a browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """`jupyter lab` serving `root` on 127.0.0.1; `url(path)` opens a path with the token.

    The app is exposed as `window.jupyterapp` so a test can run Lab commands by name. `unset`
    names environment variables the server and its kernels must not see.
    """

    def __init__(self, root: Path, scratch: Path, *, timeout: float = 90.0,
                 unset: tuple[str, ...] = ()):
        self.root, self.scratch = Path(root), Path(scratch)
        self.unset = unset
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.scratch / "jupyterlab.log"
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self.unset}
        for name in ("config", "runtime", "settings", "workspaces"):
            (self.scratch / name).mkdir(parents=True, exist_ok=True)
        notifications = (self.scratch / "settings" / "@jupyterlab" / "apputils-extension"
                         / "notification.jupyterlab-settings")
        notifications.parent.mkdir(parents=True, exist_ok=True)
        notifications.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env.update({"JUPYTER_CONFIG_DIR": str(self.scratch / "config"),
                    "JUPYTER_RUNTIME_DIR": str(self.scratch / "runtime"),
                    "JUPYTERLAB_SETTINGS_DIR": str(self.scratch / "settings"),
                    "JUPYTERLAB_WORKSPACES_DIR": str(self.scratch / "workspaces")})
        return env

    def start(self) -> JupyterLab:
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
                   "--ServerApp.terminals_enabled=False",
                   "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
                   "--LabApp.extension_manager=readonly",  # no package index is asked
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:  # CI runs as root
            command.append("--allow-root")
        env = self._environment()  # creates the scratch folders
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, env=env,
                                            start_new_session=True)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.process.returncode}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                self._get("api/status")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"jupyter lab did not answer in {self.timeout:.0f} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def _get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=5) as response:
            return json.loads(response.read() or b"null")

    def _shutdown_kernels(self) -> None:
        try:
            for kernel in self._get("api/kernels"):
                request = urllib.request.Request(self.url(f"api/kernels/{kernel['id']}"),
                                                 method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()
        except (OSError, urllib.error.URLError, ValueError):
            pass  # the server is gone already; its kernels went with it

    def stop(self) -> None:
        """Shut the kernels down, then the server (SIGTERM to its process group, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self._shutdown_kernels()
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
