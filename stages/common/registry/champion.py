"""Moving ``champion``: the paired decision under the registry lock, its history, half moves.

Registration only adds versions (alias ``challenger``). A version becomes champion here, in
:func:`promote_version`, which ``fetal promote`` calls after ``dvc push`` succeeded. Under the
registry lock (:mod:`stages.common.registry.lock`: one decision at a time for every worker that
shares the registry) it finishes any half-done move (:func:`reconcile_history`), re-reads the
champion, decides with the one rule (:func:`stages.common.registry.promotion.decide`, on the
items both versions stored at registration), then writes the history entry and moves the alias
only if the champion is still the one it decided against (compare-and-set: a move made meanwhile
outside the lock, by hand in the UI, makes it decide again).
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from stages.common.registry import promotion, tracking
from stages.common.registry.lock import registry_lock
from stages.common.registry.provenance import git_commit

log = logging.getLogger(__name__)

MAX_DECISIONS = 5  # compare-and-set retries before giving up (the alias kept moving)


class ChampionMoved(RuntimeError):
    """The champion moved under every one of :data:`MAX_DECISIONS` decisions."""


def champion_history(name: str) -> list[dict[str, Any]]:
    """Every alias move of ``name``'s champion, oldest first (registered-model tags)."""
    return promotion.history(tracking.client().get_registered_model(name).tags or {})


def _complete_move(name: str, entry: Mapping[str, Any], move: bool = True) -> None:
    """Move ``champion`` as ``entry`` says (unless ``move`` is False) and tag both versions."""
    c = tracking.client()
    if move:
        tracking.set_alias(name, tracking.CHAMPION, str(entry["to"]))
    c.set_model_version_tag(name, str(entry["to"]), "promoted_at", entry["when"])
    c.set_model_version_tag(name, str(entry["to"]), "promotion_reason", entry["reason"])
    if entry.get("from") is not None:
        c.set_model_version_tag(name, str(entry["from"]), "replaced_at", entry["when"])
        c.set_model_version_tag(name, str(entry["from"]), "replaced_by", str(entry["to"]))


def reconcile_history(name: str) -> str:
    """Finish or undo a move a killed decider left half done (entry written, alias not moved).

    Returns the action taken (:func:`promotion.reconcile`).
    """
    try:
        entries = champion_history(name)
    except Exception:  # no such registered model yet
        return "ok"
    last = entries[-1] if entries else None
    c = tracking.client()
    done = last is not None and last["when"] == c.get_model_version(name, str(last["to"])).tags.get(
        "promoted_at"
    )
    action = promotion.reconcile(last, tracking.alias_version(name, tracking.CHAMPION), done)
    if action == "rollback":
        c.delete_registered_model_tag(name, promotion.history_key(last["seq"]))
        c.set_model_version_tag(name, str(last["to"]), "promotion_decision", "rolled back")
    elif action != "ok":  # finish the move, or tag after a kill between alias move and tags
        _complete_move(name, last, move=action == "complete")
    if action != "ok":
        log.warning("%s: unfinished champion move %s: %s", name, last, action)
    return action


def candidate(name: str, version: str) -> promotion.Candidate:
    """A version as the decision sees it: data version, stored items, verified or not."""
    tags = tracking.client().get_model_version(name, str(version)).tags
    return promotion.Candidate(
        str(version),
        tags.get("data_version", ""),
        tracking.version_evaluation(name, str(version)),
        tracking.DIGESTS_TAG in tags,
    )


def _move(name: str, decision: promotion.Decision, by: str) -> None:
    """Write the history entry (next sequence number), then move the alias and tag."""
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = {"stage": by, "run_id": "", "git_commit": git_commit(), "user": getpass.getuser()}
    entry = promotion.history_entry(decision, who, when)
    seq = max([e["seq"] for e in champion_history(name)] + [0]) + 1
    tracking.client().set_registered_model_tag(
        name, promotion.history_key(seq), promotion.dumps(entry)
    )
    _complete_move(name, entry)


def _tag_verdict(name: str, decision: promotion.Decision) -> None:
    c, version = tracking.client(), decision.challenger_version
    c.set_model_version_tag(
        name, version, "promotion_decision", "promoted" if decision.promoted else "rejected"
    )
    c.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    c.set_model_version_tag(name, version, "promotion_verdict", promotion.dumps(decision.to_dict()))


def promote_version(name: str, version: str, margin: float, by: str) -> promotion.Decision:
    """Decide whether ``name`` v``version`` replaces the champion, and move it if so.

    Under the registry lock: reconcile a half move, read the champion, decide
    (:func:`promotion.decide`), and, for a promotion, check the champion is still the one
    decided against before the history entry and the alias move (else decide again). The
    verdict is tagged on the version; ``by`` names the caller in the history (``fetal promote``).
    """
    with registry_lock(tracking.tracking_uri()) as held:
        log.debug("%s v%s: deciding under %s", name, version, held)
        reconcile_history(name)
        challenger = candidate(name, version)
        for _ in range(MAX_DECISIONS):
            champ = tracking.alias_version(name, tracking.CHAMPION)
            incumbent = None if champ is None else candidate(name, champ)
            decision = promotion.decide(name, challenger, incumbent, float(margin))
            if tracking.alias_version(name, tracking.CHAMPION) != champ:
                log.warning("%s: champion moved during the decision: deciding again", name)
                continue  # compare-and-set failed: the decision was against a stale champion
            if decision.promoted:
                _move(name, decision, by)
            _tag_verdict(name, decision)
            log.info("registry decision:\n%s", decision.to_markdown())
            return decision
    raise ChampionMoved(f"{name}: the champion moved under {MAX_DECISIONS} decisions in a row")


def promote_if_better(
    name: str,
    version: str,
    metric: str,
    margin: float,
    evaluation: promotion.Evaluation | None = None,
    by: str = "promote_if_better",
) -> promotion.Decision:
    """:func:`promote_version` for a version registered by hand (tests, demos): its per-item
    ``evaluation`` is stored first when given (registration stores it otherwise)."""
    if evaluation is not None:
        tracking.record_evaluation(name, str(version), evaluation)
    decision = promote_version(name, str(version), margin, by)
    if not decision.metric:
        decision.metric = metric
    return decision
