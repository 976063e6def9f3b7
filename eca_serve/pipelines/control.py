"""Model control (Triton's ``--model-control-mode``): which repository versions run, and rollouts without errors.

- ``none``: what the repository holds at start is served; the load/unload API is refused.
- ``explicit`` (default): as ``none`` at start, then the admin API loads and unloads models.
- ``poll``: every ``poll_s`` seconds the repository is rescanned; new versions are loaded, removed ones unloaded.

A version policy (`eca_serve.repository.VersionPolicy`, from the newest version's config.json) picks the
versions of each model. A new version is built and warmed up off the event loop and takes traffic only then
(the manager publishes it; requests without a version go to the newest published one). A retired version
is unpublished first, then drained: requests inside its `ModelPipeline.run` finish, then it is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from eca_serve.errors import ClientError, ConfigError, UnknownModelError
from eca_serve.pipelines.servable import unservable_reason
from eca_serve.repository import EntryConfig, list_entries, parse_config

if TYPE_CHECKING:
    from eca_serve.pipelines.manager import ModelManager

log = logging.getLogger(__name__)

Mode = Literal["none", "poll", "explicit"]
UNLOADED = "unloaded"
NOT_IN_POLICY = "not in version policy"
Key = tuple[str, int]


class ModelControl:
    """Loads and retires the versions of a `ModelManager` as the control mode and version policies say.

    Args:
        manager: The manager whose ``pipelines`` this publishes into and retires from.
        mode: ``none``, ``poll`` or ``explicit``.
        poll_s: Seconds between repository scans in ``poll`` mode.
        settle_s: Wait after unpublishing a version, for requests that picked it but have not entered
            ``run`` yet (e.g. still reading their body), before waiting for its active requests.
    """

    def __init__(self, manager: ModelManager, mode: Mode = "explicit", poll_s: float = 15.0, settle_s: float = 0.5) -> None:
        if mode not in ("none", "poll", "explicit"):
            raise ConfigError(f"model control mode {mode!r}: use none, poll or explicit")
        if poll_s <= 0:
            raise ConfigError(f"repository poll interval must be > 0 s, got {poll_s}")
        self.manager, self.mode, self.poll_s, self.settle_s = manager, mode, poll_s, settle_s
        self.loading: set[Key] = set()
        self.unloading: set[Key] = set()
        self.failed: dict[Key, tuple[str, tuple]] = {}  # load error and the folder's signature when it failed
        self.unloaded: set[str] = set()  # names unloaded through the API (explicit mode)
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    def scan(self) -> tuple[dict[Key, Path], dict[Key, str]]:
        """(versions to serve -> folder, versions not to serve -> why) over the whole repository."""
        opts = self.manager.options
        by_name: dict[str, dict[int, Path]] = {}
        for name, version, folder in list_entries(opts.repository):
            by_name.setdefault(name, {})[version] = folder
        wanted: dict[Key, Path] = {}
        skipped: dict[Key, str] = {}
        for name, versions in by_name.items():
            if opts.only and name not in opts.only:
                skipped |= {(name, v): "not selected (ECA_SERVE_MODELS)" for v in versions}
                continue
            configs = {v: self._parse(folder) for v, folder in versions.items()}
            parsed = [c for _, c in sorted(configs.items()) if not isinstance(c, str)]
            policy = parsed[-1].version_policy if parsed else None  # a config still being copied is skipped
            readable = [v for v, c in configs.items() if not isinstance(c, str)]
            chosen = policy.select(readable) if policy is not None else set(readable)
            for version, folder in versions.items():
                reason = self._reason(configs[version], version in chosen)
                if reason is None:
                    wanted[(name, version)] = folder
                else:
                    skipped[(name, version)] = reason
        return wanted, skipped

    @staticmethod
    def _parse(folder: Path) -> EntryConfig | str:
        try:
            return parse_config(folder)
        except ConfigError as exc:
            return str(exc)

    def _reason(self, config: EntryConfig | str, chosen: bool) -> str | None:
        if isinstance(config, str):
            return config
        if not chosen:
            return NOT_IN_POLICY
        return unservable_reason(config, self.manager.options.backend.device, self.manager.options.backend.kind)

    async def start(self) -> None:
        """Load what the policies select (``--model`` names must exist); in poll mode, then start polling."""
        self.manager.discover()  # the repository's and --model's own errors, as before
        wanted, _ = self.scan()
        wanted = {k: f for k, f in wanted.items() if k[0] not in self.unloaded}
        self.manager.expected = set(wanted)
        self.loading |= set(wanted)
        try:
            for (name, version), folder in sorted(wanted.items()):
                await self.manager.load(name, version, folder)
                self.loading.discard((name, version))
        finally:
            self.loading.clear()
        if self.mode == "poll":
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception:  # a bad scan must not end polling
                log.exception("repository poll failed")

    async def sync(self, names: set[str] | None = None) -> list[Key]:
        """Load the selected versions not served yet, then retire served ones no longer selected.

        Returns:
            The (name, version) pairs loaded by this call. Versions whose last load failed are retried
            only once their folder changed (a copy still in progress fails its checksum, then completes).
        """
        async with self._lock:
            wanted, _ = self.scan()
            if names is not None:
                wanted = {k: f for k, f in wanted.items() if k[0] in names}
            served = {(n, v) for n, versions in self.manager.pipelines.items() for v in versions}
            loaded = [k for k in sorted(wanted) if k not in served and await self._try_load(k, wanted[k])]
            missing = {n for n, v in wanted if v not in self.manager.pipelines.get(n, {})}
            # the old versions keep serving until every new one of their model loaded (Triton does the same)
            retired = [k for k in sorted(served) if k not in wanted and k[0] not in missing and (names is None or k[0] in names)]
            await asyncio.gather(*[self.retire(*k) for k in retired])
            return loaded

    async def _try_load(self, key: Key, folder: Path) -> bool:
        signature = folder_signature(folder)
        if key in self.failed and self.failed[key][1] == signature:
            return False
        self.loading.add(key)
        try:
            await self.manager.load(key[0], key[1], folder)
            self.failed.pop(key, None)
            return True
        except Exception as exc:
            self.failed[key] = (str(exc), signature)
            log.error("loading %s/%s failed: %s", key[0], key[1], exc)
            return False
        finally:
            self.loading.discard(key)

    async def retire(self, name: str, version: int) -> None:
        """Unpublish ``name/version``, let its requests finish (within the grace period), then stop it."""
        versions = self.manager.pipelines.get(name, {})
        pipeline = versions.pop(version, None)
        if pipeline is None:
            return
        if not versions:
            self.manager.pipelines.pop(name, None)
        self.manager.expected.discard((name, version))
        self.manager.load_seconds.pop(f"{name}/{version}", None)
        self.unloading.add((name, version))
        try:
            grace = self.manager.options.grace_period_s
            await asyncio.sleep(min(self.settle_s, grace))
            deadline = time.monotonic() + grace
            while pipeline.active and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await pipeline.stop(max(0.0, deadline - time.monotonic()))
            log.info("model %s/%s unloaded", name, version)
        finally:
            self.unloading.discard((name, version))

    def _check_explicit(self) -> None:
        if self.mode != "explicit":
            raise ClientError(f"model load/unload is not allowed in model control mode {self.mode!r} (use explicit)")

    async def load_model(self, name: str) -> list[int]:
        """Explicit mode: serve the versions of ``name`` its policy selects; returns those newly loaded."""
        self._check_explicit()
        wanted, _ = self.scan()
        if not any(n == name for n, _ in wanted):
            raise UnknownModelError(f"no servable model {name!r} in the repository {self.manager.options.repository}")
        self.unloaded.discard(name)
        keys = await self.sync({name})
        failed = [f"{n}/{v}: {self.failed[(n, v)][0]}" for n, v in wanted if n == name and (n, v) in self.failed]
        if failed:
            raise ConfigError("; ".join(failed))
        return [v for _, v in keys]

    async def unload_model(self, name: str) -> list[int]:
        """Explicit mode: drain and stop every version of ``name``."""
        self._check_explicit()
        versions = sorted(self.manager.pipelines.get(name, {}))
        if not versions:
            raise UnknownModelError(f"model {name!r} is not loaded")
        self.unloaded.add(name)
        await asyncio.gather(*[self.retire(name, v) for v in versions])
        return versions

    def index(self) -> list[dict[str, str]]:
        """Every version in the repository (and any still draining) with its state and the reason when not READY."""
        wanted, skipped = self.scan()
        loaded = {(n, v): p for n, versions in self.manager.pipelines.items() for v, p in versions.items()}
        entries = []
        for key in sorted(set(wanted) | set(skipped) | set(loaded) | self.unloading | self.loading):
            entries.append({"name": key[0], "version": str(key[1]), **self._state(key, loaded, skipped)})
        return entries

    def _state(self, key: Key, loaded: dict, skipped: dict[Key, str]) -> dict[str, str]:
        if key in loaded:
            reason = loaded[key].unready_reason
            return {"state": "READY", "reason": ""} if reason is None else {"state": "UNAVAILABLE", "reason": reason}
        if key in self.unloading:
            return {"state": "UNLOADING", "reason": ""}
        if key in self.loading:
            return {"state": "LOADING", "reason": ""}
        if key in skipped:
            return {"state": "UNAVAILABLE", "reason": skipped[key]}
        if key in self.failed:
            return {"state": "UNAVAILABLE", "reason": self.failed[key][0]}
        if self.manager.loading_error:
            return {"state": "UNAVAILABLE", "reason": self.manager.loading_error}
        if key in self.manager.expected or self.mode == "poll":  # poll mode loads it at the next scan
            return {"state": "LOADING", "reason": ""}
        return {"state": "UNAVAILABLE", "reason": UNLOADED}

    async def stop(self) -> None:
        """Stop polling (the manager stops the pipelines)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)


def folder_signature(folder: Path) -> tuple:
    """(name, size, mtime) of every file in ``folder``: changes while a copy is in progress."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()
