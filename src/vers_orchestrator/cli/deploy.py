"""`deploy OWNER/REPO`: the API's deploy, with its steps shown as the server runs them.

Unlike the other commands, it talks to a running server over HTTP (VERS_BASE_URL,
VERS_API_KEY, as the SDK reads them): the server drives the deploy, this only watches.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import httpx

from vers_orchestrator.cli.common import error
from vers_orchestrator.settings import Settings

POLL_SECONDS = 0.25
REQUEST_TIMEOUT_SECONDS = 120.0


def deploy(settings: Settings, args: argparse.Namespace) -> int:
    base_url = os.environ.get("VERS_BASE_URL", "").strip().rstrip("/")
    token = os.environ.get("VERS_API_KEY", "").strip()
    if not base_url or not token:
        error("set VERS_BASE_URL to the server's address and VERS_API_KEY to an API key")
        return 2
    body: dict[str, object] = {"repo": args.repo}
    if args.name is not None:
        body["name"] = args.name
    if args.branch is not None:
        body["branch"] = args.branch
    body["settings"] = {
        "install_command": args.install_command,
        "build_command": args.build_command,
        "run_command": args.run_command,
        "working_directory": args.working_directory,
    }
    headers = {"Authorization": f"Bearer {token}"}
    # Its INFO line per request would bury the steps.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with httpx.Client(
            base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
        ) as client:
            print(f"deploying {args.repo}: checking the repository, creating the VM", flush=True)
            started = client.post("/api/v1/deploy", json=body)
            if started.status_code != 202:
                error(f"deploy refused ({started.status_code}): {_reason(started)}")
                return 1
            project_id = started.json()["project_id"]
            print(f"project {project_id}, VM {started.json()['vm_id']} running", flush=True)
            shown = "creating the VM"
            while True:
                status = client.get(f"/api/v1/deploy/{project_id}")
                if status.status_code != 200:
                    error(f"the deploy's status is gone ({status.status_code}): {_reason(status)}")
                    return 1
                project = status.json()
                if project["step"] != shown and project["status"] == "deploying":
                    shown = project["step"]
                    print(f"  {shown}", flush=True)
                if project["status"] == "running":
                    where = project["url"] or "(the edge is off on this server)"
                    print(f"running: {where}", flush=True)
                    return 0
                if project["status"] == "failed":
                    error(f"failed while {project['step']}: {project['error']}")
                    return 1
                time.sleep(POLL_SECONDS)
    except httpx.HTTPError as exc:
        error(f"cannot reach {base_url}: {exc}")
        return 1


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
