"""What adapters see of the daemon: game views, and the events they observe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lanspreadd.core.catalog import Catalog
from lanspreadd.core.library import Availability
from lanspreadd.core.operations import Job
from lanspreadd.net.peers import Peer


@dataclass(frozen=True)
class GameView:
    id: str
    name: str
    description: str
    size: int
    catalog_version: str
    local_version: str
    installed_version: str
    downloaded: bool
    installed: bool
    update_ready: bool
    availability: Availability
    operation: str
    job_id: int
    sources: int
    outbound_transfers: int
    served: bool  # announced to peers right now
    pinned: bool = False  # the organiser's catalog pins this version's content
    # A download in progress that serves peers: the chunks they may take from us now,
    # of those of its file list it may ever serve; both 0 when not sharing.
    sharing_chunks: int = 0
    sharing_total: int = 0


class Observer(Protocol):
    def game_changed(self, game: GameView) -> None: ...
    def game_removed(self, game_id: str) -> None: ...
    def job_started(self, job: Job) -> None: ...
    def job_progress(self, job: Job) -> None: ...
    def job_finished(self, job: Job) -> None: ...
    def runtime_failed(self, component: str, error: str) -> None: ...
    def peer_changed(self, peer_id: str, peer: Peer | None) -> None: ...
    def status_changed(self, status: str) -> None: ...
    def catalog_adopted(self, catalog: Catalog) -> None: ...


class Observers(list[Observer]):
    """Every observer, told each event in the order they registered."""

    def game_changed(self, game: GameView) -> None:
        for obs in self:
            obs.game_changed(game)

    def game_removed(self, game_id: str) -> None:
        for obs in self:
            obs.game_removed(game_id)

    def job_started(self, job: Job) -> None:
        for obs in self:
            obs.job_started(job)

    def job_progress(self, job: Job) -> None:
        for obs in self:
            obs.job_progress(job)

    def job_finished(self, job: Job) -> None:
        for obs in self:
            obs.job_finished(job)

    def runtime_failed(self, component: str, error: str) -> None:
        for obs in self:
            obs.runtime_failed(component, error)

    def peer_changed(self, peer_id: str, peer: Peer | None) -> None:
        for obs in self:
            obs.peer_changed(peer_id, peer)

    def status_changed(self, status: str) -> None:
        for obs in self:
            obs.status_changed(status)

    def catalog_adopted(self, catalog: Catalog) -> None:
        for obs in self:
            obs.catalog_adopted(catalog)
