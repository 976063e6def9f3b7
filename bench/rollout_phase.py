"""Rollout phase of the reliability report: a new version copied into the repository of a polling server under load.

Run: ``python bench/reliability_report.py --phase rollout [--seconds 30] [--poll-secs 1] [--concurrency 4]``.

A temporary repository holds version 1 of the classifier with ``version_policy: latest 1``; the server runs
``--model-control-mode poll``. Clients send steady v1 classify requests (no version named); after a third of
the run, version 2 (the same artifacts, renumbered) is copied in with ``cp -r`` semantics (file by file, not
atomically). Printed: requests, failed requests (anything but 200, or no answer), seconds from the copy to the
first answer from version 2 against poll interval + version 2's load/warm-up time (the server's
``eca_serve_model_load_seconds``), answers from version 1 after that, and when version 1 left the index's READY.
Exit status 1 if a request failed or version 2 never answered.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from eca_serve.repository import CONFIG_FILE
from tests.reliability.clients import client_limits, metric
from tests.reliability.serverproc import ServerProcess, start_server

LATEST_ONE = {"latest": {"num_versions": 1}}


@dataclass
class Answers:
    """(sent, answered, status, version) of every request, plus the rollout's moments."""

    rows: list[tuple[float, float, int, int]] = field(default_factory=list)
    copied_at: float = 0.0
    old_retired_at: float = 0.0


def staged_version(source: Path, version: int, into: Path) -> Path:
    """``source`` copied to ``into`` with its config renumbered to ``version`` and policy latest 1."""
    shutil.copytree(source, into)
    config = json.loads((into / CONFIG_FILE).read_text())
    config.update(version=version, version_policy=LATEST_ONE)
    (into / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return into


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def client(http: httpx.AsyncClient, url: str, body: bytes, answers: Answers, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sent = time.monotonic()
        try:
            response = await http.post(url, content=body, headers={"content-type": "image/png"})
            version = response.json().get("version", 0) if response.status_code == 200 else 0
            answers.rows.append((sent, time.monotonic(), response.status_code, version))
        except httpx.HTTPError:
            answers.rows.append((sent, time.monotonic(), 0, 0))


async def roll_out(http: httpx.AsyncClient, base: str, repository: Path, staged: Path, name: str, answers: Answers,
                   copy_at: float, stop_at: float) -> None:
    await asyncio.sleep(max(0.0, copy_at - time.monotonic()))
    answers.copied_at = time.monotonic()
    await asyncio.to_thread(shutil.copytree, staged, repository / name / "2")
    while time.monotonic() < stop_at and not answers.old_retired_at:
        index = (await http.post(f"{base}/v2/repository/index")).json()
        if any(e["name"] == name and e["version"] == "1" and e["state"] == "UNAVAILABLE" for e in index):
            answers.old_retired_at = time.monotonic()
        await asyncio.sleep(0.05)


async def load(server: ServerProcess, repository: Path, staged: Path, name: str, seconds: float, concurrency: int) -> Answers:
    answers = Answers()
    start = time.monotonic()
    stop_at = start + seconds
    url = f"{server.base}/v1/models/{name}/classify"
    async with httpx.AsyncClient(timeout=60, limits=client_limits(concurrency + 2)) as http:
        body = png((64, 64))
        await asyncio.gather(*[client(http, url, body, answers, stop_at) for _ in range(concurrency)],
                             roll_out(http, server.base, repository, staged, name, answers, start + seconds / 3, stop_at))
    return answers


def report(answers: Answers, load_s: float, poll_s: float, seconds: float, concurrency: int) -> int:
    rows = answers.rows
    failed = [r for r in rows if r[2] != 200]
    new = [r for r in rows if r[3] == 2]
    first_new = min((r[1] for r in new), default=None)
    late_old = [r for r in rows if r[3] == 1 and first_new is not None and r[0] > first_new]
    print(f"rollout under load: {len(rows)} requests in {seconds:.0f} s from {concurrency} clients "
          f"({len(rows) / seconds:.1f} req/s), poll interval {poll_s:g} s")
    print(f"  failed requests: {len(failed)} (statuses {sorted({r[2] for r in failed})})")
    if first_new is None:
        print("  version 2 never answered")
        return 1
    to_first = first_new - answers.copied_at
    print(f"  copy -> first answer from version 2: {to_first:.2f} s (bound: poll {poll_s:g} s + load/warm-up "
          f"{load_s:.2f} s = {poll_s + load_s:.2f} s) -> {'within' if to_first <= poll_s + load_s else 'OVER'}")
    print(f"  answers from version 2: {len(new)}; from version 1 sent after version 2's first answer: {len(late_old)}")
    if answers.old_retired_at:
        retired = answers.old_retired_at - answers.copied_at
        print(f"  copy -> version 1 UNAVAILABLE in the index (drained, unloaded): {retired:.2f} s")
    return 1 if failed else 0


def main(repository: Path, classifier: str, seconds: float, concurrency: int, poll_s: float) -> int:
    """Run the rollout phase on a copy of ``repository/classifier/1``; the exit status of the report."""
    with tempfile.TemporaryDirectory(prefix="eca-rollout-") as tmp:
        root = Path(tmp) / "models"
        (root / classifier).mkdir(parents=True)
        staged_version(repository / classifier / "1", 1, root / classifier / "1")
        staged = staged_version(repository / classifier / "1", 2, Path(tmp) / "staged-2")
        env = {"ECA_SERVE_MODEL_CONTROL_MODE": "poll", "ECA_SERVE_REPOSITORY_POLL_SECS": str(poll_s)}
        print(f"starting eca-serve serve --model-control-mode poll on {root} ...", flush=True)
        server = start_server(root, env=env)
        try:
            answers = asyncio.run(load(server, root, staged, classifier, seconds, concurrency))
            text = httpx.get(f"{server.base}/metrics", timeout=30).text
            load_s = metric(text, "eca_serve_model_load_seconds", model=classifier, version="2")
            return report(answers, load_s, poll_s, seconds, concurrency)
        finally:
            server.stop()

