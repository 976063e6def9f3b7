"""Long reliability run against a real ``eca-serve serve`` process, ending in one report.

Run: ``python bench/reliability_report.py [--model-repository models] [--seconds 600]``; ``--phase flood`` or
``--phase disconnect`` runs one focused phase instead (bench/reliability_phases.py); ``--phase rollout``
runs bench/rollout_phase.py (a version rollout under load in poll mode; ``--seconds`` defaults to 30 there).

For ``--seconds`` it mixes: steady valid load (v1 classify/attention/detect, v2 infer with images and
tensors), floods far above capacity every ``--flood-every`` seconds, hostile images and bad parameters
(tests/reliability/corpus.py), client faults on raw sockets (disconnects mid-upload and after sending,
slow uploads, bodies that never come, 2000-part forms) and fuzz (random damage to valid bodies and
headers). Then it prints requests sent, answers by status, lost requests (sent minus answered; a
request the client aborts on purpose is not "sent"), 5xx other than 503 rejections, latency of
accepted requests during and outside floods, latency of 503 rejections, and the server's RSS at start,
after warm-up and at the end. Exit status 1 if a request was lost, any such 5xx came back, or the
server died.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eca_serve.repository import read_config  # noqa: E402
from tests.reliability import rawhttp  # noqa: E402
from tests.reliability.clients import Prepared, client_limits, error_problems, multipart_images, raw_image, wait_idle  # noqa: E402
from tests.reliability.serverproc import ServerProcess, start_server  # noqa: E402
from tests.reliability.workload import Outcome, Planned, Workload, send  # noqa: E402

MIB = 1024 * 1024
REJECTED = 503  # an overload rejection (queue full, in-flight limit): expected under floods, never a failure


@dataclass
class Ledger:
    """Everything the run observed."""

    outcomes: list[Outcome] = field(default_factory=list)
    aborted: Counter = field(default_factory=Counter)
    floods: list[tuple[float, float]] = field(default_factory=list)
    rss_after_floods: list[int] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    broken: str = ""  # why the server is not serving: it died, or it stayed busy after the load stopped

    def in_flood(self, started: float) -> bool:
        return any(start <= started <= end for start, end in self.floods)


@dataclass(frozen=True)
class Options:
    seconds: float
    concurrency: int
    flood_every: float
    flood_size: int
    body_timeout_s: float
    seed: int


def parse_args() -> tuple[Path, str, str, Options]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO / "models")
    parser.add_argument("--classifier", default="shapes_classifier")
    parser.add_argument("--detector", default="shapes_detector")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the mixed run (after warm-up)")
    parser.add_argument("--concurrency", type=int, default=4, help="clients of steady valid load")
    parser.add_argument("--flood-every", type=float, default=20.0, help="seconds between floods")
    parser.add_argument("--flood-size", type=int, default=800,
                        help="concurrent requests per flood (default above the server's in-flight limit: 128 on CPU)")
    parser.add_argument("--body-timeout-s", type=float, default=2.0, help="server's ECA_SERVE_BODY_TIMEOUT_S")
    parser.add_argument("--seed", type=int, default=0)
    add_phase_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2, help="flood / disconnect: pairs of runs (without, with)")
    parser.add_argument("--leavers", type=int, default=8, help="disconnect: clients that leave 10 ms after sending")
    a = parser.parse_args()
    if a.phase != "mixed":
        from bench.reliability_phases import run_phase

        sys.exit(run_phase(a.phase, a.model_repository, a.classifier, a.seconds, a.rounds, a.concurrency, a.flood_size,
                           a.flood_every, a.leavers))
    return a.model_repository, a.classifier, a.detector, Options(a.seconds, a.concurrency, a.flood_every, a.flood_size,
                                                                  a.body_timeout_s, a.seed)


# --- traffic -----------------------------------------------------------------------------------------


async def steady(client: httpx.AsyncClient, base: str, workload: Workload, ledger: Ledger, rng: random.Random,
                 stop_at: float, draw: str) -> None:
    """One closed-loop client drawing requests of family ``draw`` until ``stop_at``."""
    pick = {"valid": workload.valid, "hostile": lambda r: hostile_or_bad(workload, r), "fuzz": workload.fuzz}[draw]
    while time.perf_counter() < stop_at and not ledger.broken:
        ledger.outcomes.append(await send(client, base, pick(rng)))


def hostile_or_bad(workload: Workload, rng: random.Random) -> Planned:
    """A hostile image (4 in 5) or bad parameters."""
    return workload.hostile_image(rng) if rng.random() < 0.8 else workload.bad_parameters(rng)


async def floods(server: ServerProcess, workload: Workload, ledger: Ledger, rng: random.Random, options: Options,
                 stop_at: float) -> None:
    """Every ``flood_every`` seconds, ``flood_size`` classify requests at once (raw sockets: an HTTP library would
    spend so much client CPU per request that the flood would only trickle in)."""
    while time.perf_counter() + options.flood_every < stop_at and not ledger.broken:
        await asyncio.sleep(options.flood_every)
        batch = [workload.valid(rng, kind="v1 classify raw").prepared for _ in range(options.flood_size)]
        encoded = [rawhttp.encode_request(p.path, p.headers, p.content) for p in batch]
        start = time.perf_counter()
        answers = await asyncio.gather(*(rawhttp.exchange(server.base, request, timeout_s=120) for request in encoded))
        ledger.floods.append((start, time.perf_counter()))
        if server.alive():
            ledger.rss_after_floods.append(server.rss())
        ledger.outcomes.extend(judge_flood(answer, why, start) for answer, why in answers)


def judge_flood(answer: rawhttp.RawResponse | None, why: str, started: float) -> Outcome:
    """A flood request is answered right by 200 or by a 503 rejection, each with a clean body."""
    if answer is None:
        return Outcome("flood", None, time.perf_counter() - started, (f"no answer: {why}",), started)
    problems = list(error_problems(httpx.Response(answer.status, headers=answer.headers, content=answer.body)))
    if answer.status not in (200, REJECTED):
        problems.append(f"status {answer.status}: {answer.body[:160]!r}")
    return Outcome("flood", answer.status, answer.seconds, tuple(problems), started)


Fault = Callable[[], "rawhttp.RawResponse | None"]


def fault_kinds(base: str, workload: Workload, body_timeout_s: float) -> dict[str, tuple[bool, Fault]]:
    """name -> (aborted on purpose, zero-argument call returning a RawResponse or None)."""
    data, media = workload.images[0]
    path = f"/v1/models/{workload.classifier}/classify"
    wait = body_timeout_s + 10
    return {
        "abort mid-upload (FIN)": (True, lambda: rawhttp.abort_mid_upload(base, path, media, len(data), data[: len(data) // 3])),
        "abort mid-upload (RST)": (True, lambda: rawhttp.abort_mid_upload(base, path, media, len(data), data[:100], reset=True)),
        "vanish after sending": (True, lambda: rawhttp.send_and_vanish(base, path, {"Content-Type": media}, data)),
        "slow upload": (False, lambda: rawhttp.trickle(base, path, media, data, 64, body_timeout_s / 4, wait)),
        "body never sent": (False, lambda: rawhttp.stall(base, path, {"Content-Type": media, "Content-Length": str(len(data))},
                                                          wait_s=wait)),
    }


async def faults(base: str, workload: Workload, ledger: Ledger, rng: random.Random, options: Options, stop_at: float) -> None:
    """One misbehaving client after another (blocking sockets, in a thread)."""
    kinds = fault_kinds(base, workload, options.body_timeout_s)
    while time.perf_counter() < stop_at and not ledger.broken:
        name = rng.choice(list(kinds))
        aborted, call = kinds[name]
        start = time.perf_counter()
        answer = await asyncio.to_thread(call)
        if aborted:
            ledger.aborted[name] += 1
            continue
        problems = () if answer is not None and answer.status == 408 else (f"{name}: {answer and answer.status}",)
        ledger.outcomes.append(Outcome(f"fault {name}", answer.status if answer else None, time.perf_counter() - start,
                                       problems, start))
        await asyncio.sleep(0.2)


def huge_form(workload: Workload) -> Planned:
    """2000 tiny file parts: refused with 413 (at most 16 images per request)."""
    files = [(f"{i}.png", b"\x89PNG", "image/png") for i in range(2000)]
    return Planned("fault 2000-part form", multipart_images(f"/v1/models/{workload.classifier}/classify", files), frozenset({413}))


async def forms(client: httpx.AsyncClient, base: str, workload: Workload, ledger: Ledger, stop_at: float) -> None:
    """A 2000-part form every second."""
    while time.perf_counter() < stop_at and not ledger.broken:
        ledger.outcomes.append(await send(client, base, huge_form(workload)))
        await asyncio.sleep(1.0)


async def watch(server: ServerProcess, ledger: Ledger, stop_at: float) -> None:
    """Notice at once if the server dies."""
    while time.perf_counter() < stop_at:
        if not server.alive():
            ledger.broken = f"server exited with {server.process.returncode}"
            return
        await asyncio.sleep(0.5)


async def run(server: ServerProcess, workload: Workload, options: Options, ledger: Ledger) -> None:
    """Warm up with every request kind, then run every traffic family side by side for ``options.seconds``."""
    rng = random.Random(options.seed)
    limits = client_limits(options.concurrency + 16)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        warm = workload.every_kind()
        await asyncio.gather(*(send_all(client, server.base, warm[i::options.concurrency], ledger) for i in range(options.concurrency)))
        ledger.rss["after warm-up"] = server.rss()
        stop_at = time.perf_counter() + options.seconds
        base = server.base
        tasks = [steady(client, base, workload, ledger, random.Random(rng.random()), stop_at, "valid") for _ in range(options.concurrency)]
        tasks += [steady(client, base, workload, ledger, random.Random(rng.random()), stop_at, "hostile"),
                  steady(client, base, workload, ledger, random.Random(rng.random()), stop_at, "fuzz"),
                  floods(server, workload, ledger, random.Random(rng.random()), options, stop_at),
                  faults(base, workload, ledger, random.Random(rng.random()), options, stop_at),
                  forms(client, base, workload, ledger, stop_at), watch(server, ledger, stop_at)]
        await asyncio.gather(*tasks)


async def send_all(client: httpx.AsyncClient, base: str, planned: list[Planned], ledger: Ledger) -> None:
    """``planned``, one after the other."""
    for item in planned:
        ledger.outcomes.append(await send(client, base, item))


# --- report ------------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> str:
    """p50 and p99 (nearest rank) in milliseconds."""
    if not values:
        return "n/a"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {1000 * statistics.median(ordered):7.1f} ms   p99 {1000 * p99:7.1f} ms   (n={len(ordered)})"


@dataclass(frozen=True)
class Tally:
    """The counts the verdict rests on."""

    statuses: Counter
    lost: int
    server_errors: int
    unexpected: Counter


def tally(ledger: Ledger) -> Tally:
    answered = [o for o in ledger.outcomes if o.status is not None]
    statuses = Counter(o.status for o in answered)
    server_errors = sum(n for status, n in statuses.items() if status >= 500 and status != REJECTED)
    unexpected = Counter(o.kind for o in answered if o.problems and o.status < 500)
    return Tally(statuses, len(ledger.outcomes) - len(answered), server_errors, unexpected)


def summary(ledger: Ledger, counts: Tally, options: Options, final_ok: bool) -> list[str]:
    accepted = [o for o in ledger.outcomes if o.status == 200]
    rss, mib = ledger.rss, {k: v / MIB for k, v in ledger.rss.items()}
    growth = (rss.get("end", 0) - rss.get("after warm-up", 0)) / MIB
    return [
        f"eca-serve reliability report: {options.seconds:.0f} s mixed run, {len(ledger.floods)} floods of {options.flood_size}, "
        f"{options.concurrency} steady clients, body timeout {options.body_timeout_s:g} s",
        f"requests sent            {len(ledger.outcomes)} (warm-up included; plus {sum(ledger.aborted.values())} aborted on "
        f"purpose by the client: {dict(ledger.aborted)})",
        f"answered by status       {dict(sorted(counts.statuses.items()))}",
        f"lost (sent - answered)   {counts.lost}",
        f"5xx (503 rejections excluded) {counts.server_errors}",
        f"503 rejections           {counts.statuses.get(REJECTED, 0)}",
        f"unexpected 2xx/4xx       {sum(counts.unexpected.values())}",
        *(f"    {n:5d} x {kind}" for kind, n in counts.unexpected.most_common(8)),
        f"accepted, during floods  {percentiles([o.seconds for o in accepted if ledger.in_flood(o.started)])}",
        f"accepted, outside floods {percentiles([o.seconds for o in accepted if not ledger.in_flood(o.started)])}",
        f"503 rejection latency    {percentiles([o.seconds for o in ledger.outcomes if o.status == REJECTED])}",
        f"server RSS               start {mib.get('start', 0):.1f} MiB, after warm-up {mib.get('after warm-up', 0):.1f} MiB, "
        f"end {mib.get('end', 0):.1f} MiB, growth after warm-up {growth:+.1f} MiB",
        f"server RSS after floods  {', '.join(f'{r / MIB:.0f}' for r in ledger.rss_after_floods) or 'n/a'} MiB",
        f"server                   {ledger.broken or 'alive'}; good request after the run: {'ok' if final_ok else 'FAILED'}",
    ]


def report(ledger: Ledger, options: Options, final_ok: bool) -> int:
    """Print the report; the exit status: 1 if a request was lost, a 5xx (not a 503 rejection) came back or the server died."""
    counts = tally(ledger)
    lines = summary(ledger, counts, options, final_ok)
    failures = [f"  {o.kind}: {o.problems[0][:200]}" for o in ledger.outcomes
                if o.status is None or (o.status >= 500 and o.status != REJECTED)]
    if failures:
        lines += ["examples of lost or 5xx:", *failures[:10]]
    failed = counts.lost > 0 or counts.server_errors > 0 or bool(ledger.broken) or not final_ok
    print("\n".join([*lines, f"RESULT: {'FAIL' if failed else 'PASS'}"]))
    return 1 if failed else 0


def good_request_ok(server: ServerProcess, workload: Workload) -> bool:
    """The server still answers a valid request after the run."""
    data, media = workload.images[0]
    prepared: Prepared = raw_image(f"/v1/models/{workload.classifier}/classify", data, media)
    try:
        response = httpx.post(server.base + prepared.path, content=prepared.content, headers=prepared.headers, timeout=60)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def add_phase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phase", choices=["mixed", "flood", "disconnect", "rollout"], default="mixed",
                        help="mixed: the long mixed run; flood / disconnect: alternating runs without and with "
                        "(bench/reliability_phases.py); rollout: a version copied in under load (bench/rollout_phase.py)")
    parser.add_argument("--poll-secs", type=float, default=1.0, help="rollout: the server's repository poll interval")


def rollout_phase_main() -> int | None:
    """With ``--phase rollout``, that phase's exit status; None for the mixed run."""
    parser = argparse.ArgumentParser(add_help=False)
    add_phase_arguments(parser)
    for name, kind, default in (("--model-repository", Path, REPO / "models"), ("--classifier", str, "shapes_classifier"),
                                ("--seconds", float, 30.0), ("--concurrency", int, 4)):
        parser.add_argument(name, type=kind, default=default)
    a, _ = parser.parse_known_args()
    if a.phase != "rollout":
        return None
    from bench import rollout_phase

    return rollout_phase.main(a.model_repository, a.classifier, a.seconds, a.concurrency, a.poll_secs)


def main() -> int:
    rollout = rollout_phase_main()
    if rollout is not None:
        return rollout
    repository, classifier, detector, options = parse_args()
    size = read_config(next(p for p in sorted((repository / classifier).iterdir()) if (p / "config.json").exists())).input.size
    workload = Workload(classifier, detector, tuple(size), seed=options.seed)
    print(f"starting eca-serve serve on {repository} ...", flush=True)
    server = start_server(repository, env={"ECA_SERVE_BODY_TIMEOUT_S": str(options.body_timeout_s)})
    ledger = Ledger()
    try:
        ledger.rss["start"] = server.rss()
        asyncio.run(run(server, workload, options, ledger))
        if server.alive():
            try:
                wait_idle(server.base, timeout_s=60)
            except AssertionError as exc:
                ledger.broken = f"still busy 60 s after the load stopped ({exc})"
            ledger.rss["end"] = server.rss()
        final_ok = server.alive() and good_request_ok(server, workload)
        ledger.broken = ledger.broken or ("" if server.alive() else f"server exited with {server.process.returncode}")
        return report(ledger, options, final_ok)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
