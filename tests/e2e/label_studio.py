"""A real Label Studio for the end-to-end test: installed once per version into its own
virtual environment (its Django stack must not meet this project's packages), started on a
free loopback port with a fresh data folder, with users and personal access tokens made the
way a person would make them (log in, create a token; sign up through an invite link).

Cache: ``$SIFT_LABEL_STUDIO_CACHE`` or ``~/.cache/sift-curation/label-studio/<version>/``
holding ``venv/`` and ``installed.json`` (written last: present means complete). Installs
of the same version queue on an flock in that folder. ``python -m tests.e2e.label_studio``
installs (the test session starts it in the background when the test is collected).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

VERSION = os.environ.get("SIFT_LABEL_STUDIO_VERSION", "1.23.2")
INSTALL_TIMEOUT_S = 1200


def cache_dir(version: str = VERSION) -> Path:
    root = os.environ.get("SIFT_LABEL_STUDIO_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "sift-curation" / "label-studio"
    return base / version


def installed(version: str = VERSION) -> Path | None:
    """The ``label-studio`` executable of a complete cached install, else None."""
    d = cache_dir(version)
    exe = d / "venv" / "bin" / "label-studio"
    return exe if (d / "installed.json").is_file() and exe.is_file() else None


def install(version: str = VERSION) -> Path:
    """Install ``label-studio==version`` into the cache (once); its executable. Raises
    RuntimeError with pip's last lines when it cannot be installed."""
    d = cache_dir(version)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session installing: wait for it
        exe = installed(version)
        if exe:
            return exe
        venv = d / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        log = d / "install.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            # the base interpreter, not this project's venv: nothing of ours leaks in
            base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}"
            steps = [[str(base if base.exists() else sys.executable), "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--progress-bar", "off", f"label-studio=={version}"]]
            for cmd in steps:
                try:
                    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        timeout=INSTALL_TIMEOUT_S).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    lines = [ln for ln in log.read_text(errors="replace").splitlines()
                             if ln.strip() and not ln.startswith("WARNING")]
                    what = ("python -m venv" if cmd is steps[0] else
                            f"pip install label-studio=={version}")
                    raise RuntimeError(f"`{what}` failed ({rc}): "
                                       + " | ".join(ln[:300] for ln in lines[-3:])
                                       + f" (log: {log})")
        exe = venv / "bin" / "label-studio"
        (d / "installed.json").write_text(json.dumps(
            {"version": version, "seconds": round(time.monotonic() - t0, 1)}))
        return exe


def start(exe: Path, data_dir: Path, port: int, username: str, password: str,
          log: Path) -> subprocess.Popen:
    """``label-studio start`` in its own process group (stop it with procs.stop)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
                "PATH": f"{exe.parent}:{env.get('PATH', '')}"})
    return subprocess.Popen(
        [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
         "--username", username, "--password", password],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> float:
    """Seconds until ``/health`` answers UP; fails with the log's tail otherwise."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError("label-studio exited: " + log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"label-studio not healthy after {timeout} s: "
                               + log.read_text()[-3000:])
        time.sleep(1)


def _session(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, follow_redirects=False)


def login(url: str, email: str, password: str) -> httpx.Client:
    """A browser-like session: the login form with its CSRF token."""
    s = _session(url)
    s.get("/user/login/")
    r = s.post("/user/login/", data={"email": email, "password": password,
                                     "csrfmiddlewaretoken": s.cookies.get("csrftoken")})
    assert r.status_code == 302, f"login of {email} failed: {r.status_code} {r.text[:300]}"
    return s


def personal_access_token(session: httpx.Client) -> str:
    """Create the logged-in user's personal access token (Account & Settings > Personal
    Access Token > Create does the same request)."""
    r = session.post("/api/token/", headers={"X-CSRFToken": session.cookies.get("csrftoken")})
    assert r.status_code == 201, f"token creation failed: {r.status_code} {r.text[:300]}"
    return r.json()["token"]


def sign_up_annotator(admin: httpx.Client, email: str, password: str) -> httpx.Client:
    """Invite link from the organisation page, then the sign-up form; a logged-in session."""
    invite = admin.get("/api/invite", headers={"X-CSRFToken": admin.cookies.get("csrftoken")})
    assert invite.status_code == 200, invite.text[:300]
    token = invite.json()["token"]
    s = _session(str(admin.base_url))
    s.get("/user/signup/", params={"token": token})
    r = s.post("/user/signup/", params={"token": token},
               data={"email": email, "password": password, "allow_newsletters": "false",
                     "csrfmiddlewaretoken": s.cookies.get("csrftoken")})
    assert r.status_code == 302, f"sign-up of {email} failed: {r.status_code} {r.text[-300:]}"
    return s


if __name__ == "__main__":
    try:
        print(install())
    except RuntimeError as err:
        print(f"cannot install label-studio=={VERSION}: {err}", file=sys.stderr)
        sys.exit(1)
