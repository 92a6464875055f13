"""Making sure a trial that Tune stops gives its Train workers' resources back.

When ASHA stops a trial, Tune kills the trial actor; the Ray Train V2 controller it started dies with it, without
a clean shutdown, so the workers' placement group is left for Train's detached ``PlacementGroupCleaner`` to
remove (ray-project/ray PR #58515). That cleaner finds the cluster's State API by auto-detection, so it needs the
dashboard, and on a host running more than one Ray instance it fails ("Found multiple active Ray instances") and
never removes anything: the placement group stays reserved and the next trial waits for CPUs forever.

Two measures, both here:
- ``pipeline.core.raycluster.connect(pin_api_address=True)`` (for a Ray the sweep starts itself):
  ``RAY_API_SERVER_ADDRESS`` names this cluster's dashboard in the environment every Ray worker inherits, so the
  cleaner queries the right cluster.
- ``ReleaseTrialResources``, a Tune callback in the driver: whenever a trial ends (completed, stopped, failed) it
  waits until no placement group created during the sweep is held only by dead actors, and removes any that is
  still reserved after ``timeout_s``. The next trial starts only after that.
"""

from __future__ import annotations

import sys
import time

from ray import tune

LIVE_PG_STATES = ("PENDING", "PREPARED", "CREATED", "RESCHEDULING")
TRAIN_WORKER = "RayTrainWorker"  # the actor class of Ray Train V2's workers


def live_placement_groups() -> set[str]:
    import ray

    return {pid for pid, pg in ray.util.placement_group_table().items() if pg["state"] in LIVE_PG_STATES}


def orphaned_placement_groups(address: str, exclude: set[str]) -> set[str]:
    """Live placement groups of Ray Train worker groups (not in ``exclude``) whose actors have all died: nothing
    will ever use them again."""
    from ray.util.state import list_actors

    live = live_placement_groups() - exclude
    if not live:
        return set()
    holders: dict[str, list[tuple[str, str]]] = {}
    for a in list_actors(address=address, limit=10_000, detail=True, raise_on_missing_output=False):
        if a.placement_group_id in live:
            holders.setdefault(a.placement_group_id, []).append((a.class_name, a.state))
    # only Ray Train worker groups: Tune manages its own trial placement groups
    return {
        pg
        for pg, actors in holders.items()
        if any(_is_train_worker(c) for c, _ in actors) and all(s == "DEAD" for _, s in actors)
    }


def _is_train_worker(class_name: str) -> bool:
    """The State API gives the class's qualified name (``RayTrainWorker``, or ``f.<locals>.RayTrainWorker``)."""
    return class_name == TRAIN_WORKER or class_name.endswith("." + TRAIN_WORKER)


def remove_placement_groups(ids: set[str]) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for h in ids:
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(h)))


class ReleaseTrialResources(tune.Callback):
    """After every trial: wait until the placement groups its dead actors held are gone; remove the ones Train's
    cleaner did not remove within ``timeout_s``. ``baseline``: placement groups alive before the sweep (other
    jobs'), never touched."""

    def __init__(self, address: str, baseline: set[str], timeout_s: float = 15.0):
        self.address, self.baseline, self.timeout_s = address, set(baseline), timeout_s
        self.removed: list[str] = []
        self.waited_s = 0.0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.release()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.release()

    def release(self) -> None:
        t0 = time.time()
        orphans: set[str] = set()
        try:
            while True:
                orphans = orphaned_placement_groups(self.address, self.baseline)
                if not orphans or time.time() - t0 > self.timeout_s:
                    break
                time.sleep(1.0)
            if orphans:
                print(
                    f"[sweep] warning: removing {len(orphans)} placement group(s) of stopped trials that Ray "
                    f"Train's cleaner left reserved: {sorted(orphans)}",
                    file=sys.stderr,
                    flush=True,
                )
                remove_placement_groups(orphans)
                self.removed.extend(sorted(orphans))
        except Exception as e:  # noqa: BLE001 - never break the sweep over bookkeeping
            print(f"[sweep] warning: could not check placement groups: {e}", file=sys.stderr, flush=True)
        self.waited_s += time.time() - t0


def wait_released(before: set[str], timeout: float = 60.0) -> int:
    """Wait until every placement group created since ``before`` was taken is removed; return how many are left."""
    deadline = time.time() + timeout
    while True:
        left = live_placement_groups() - before
        if not left or time.time() > deadline:
            if left:
                print(
                    f"[sweep] warning: {len(left)} placement group(s) created by the sweep are still reserved: "
                    f"{sorted(left)}",
                    file=sys.stderr,
                    flush=True,
                )
            return len(left)
        time.sleep(1)
