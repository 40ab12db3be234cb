"""After a run: every adversary's attacks on what it observed, as report rows.

Each row names the adversary and its **threat model** (what it saw), the run's
**protection** mode, the attack, and its metrics:

* reconstructions (gradient inversion): median MSE and PSNR of the reconstructions against
  the true training samples they are closest to (of the attacked peer's shard; of all
  shards for an aggregate), the same for the adversary's prior — the dataset-mean image —
  against those samples (``baseline_mse``), and label accuracy where a label was guessed; a
  PNG grid of originals above reconstructions;
* membership inference: AUC and TPR at 1 % FPR over ``candidates`` members (training
  samples of the model's owners) and as many non-members (held-out samples).

What an adversary could not read (ciphertext) it cannot attack: its reconstruction is its
prior, and the row says so (``view: ciphertext``).

Inputs are the run's public facts (config, topology, the common initial model, the model
architecture) and the adversary's observations; the data are used only to *score* attacks
(ground truth), never by the attacks themselves, except the population a membership
attacker is assumed to hold (candidates and, for LiRA, its shadow models' training pool).

Pure: numpy and torch (no Ray, no clock); files are written only by :func:`write_report`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from p2pfed.adversary.active import active_candidates, active_seed, matched_nonmembers
from p2pfed.adversary.config import AdversaryConfig
from p2pfed.adversary.observe import FrameLog, Seen
from p2pfed.adversary.views import (
    ObservedUpdate,
    aggregate_updates,
    client_updates,
    consecutive_updates,
    dpsgd_updates,
    is_ciphertext,
    last_models,
    secure_updates,
)
from p2pfed.attacks.gradient import gradient_from_sgd_step, idlg, inverting_gradients
from p2pfed.attacks.inversion import analytic_fc_inversion, idlg_label
from p2pfed.attacks.membership import (
    active_membership_scores,
    lira_offline_scores,
    lira_online_scores,
    logit_confidences,
    per_sample_losses,
    shadow_confidences,
    train_shadow_models,
)
from p2pfed.attacks.metrics import membership_auc, mse, psnr, tpr_at_fpr
from p2pfed.attacks.model_inversion import invert_classes
from p2pfed.crypto.fixedpoint import FixedPoint
from p2pfed.data.datasets import Dataset
from p2pfed.models.flat import model_at
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.dpsgd import ModelShare
from p2pfed.topology import TopologySchedule
from p2pfed.training import params_digest


@dataclass
class RunFacts:
    """What the analysis needs from a finished run (built by the experiment)."""

    adversaries: Sequence[AdversaryConfig]
    indices: Sequence[int]  # each one's place in the config's adversaries (labels, seeds)
    logs: Sequence[FrameLog | None]  # None: a black box, which sees no traffic
    codec: Codec
    protocol: str
    protection: str
    schedule: TopologySchedule
    num_peers: int
    coordinator: int | None
    template: nn.Module
    params0: np.ndarray
    dataset: Dataset
    shards: Sequence[np.ndarray]
    final_models: dict[int, np.ndarray]
    lr: float
    single_step: bool  # one plain SGD step per round: an update is a scaled gradient
    fixed: FixedPoint | None  # the secure sums' encoding
    seed: np.random.SeedSequence
    training: Any = None  # TrainingConfig, for shadow models
    local_steps: Sequence[int] = (1,)  # SGD steps of one local training, per peer
    trained_on: dict[int, tuple[tuple[bytes, np.ndarray], ...]] = field(default_factory=dict)
    dp: Any = None  # DPConfig, for shadow models
    rounds: int = 1
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _params_in(facts: RunFacts) -> int:
    return int(facts.dataset.x_train.shape[1])


def analyse(facts: RunFacts) -> list[dict[str, Any]]:
    """Run every adversary's attacks; one row per (adversary, attack, target).

    An attack that fails on what it was given (a degenerate observation, a diverged model:
    ``ValueError``, ``ArithmeticError``, ``RuntimeError``) gives one row with its ``error``
    instead of metrics, and the others still run; anything else is a bug and propagates."""
    rows: list[dict[str, Any]] = []
    seeds = facts.seed.spawn(max(facts.indices, default=0) + 1)
    for index, adv, log in zip(facts.indices, facts.adversaries, facts.logs, strict=True):
        label, ss = adv.label(index), seeds[index]
        seen = log.decode(facts.codec) if log is not None else []
        rng = np.random.default_rng(ss)
        for attack in adv.chosen_attacks:
            try:
                rows += _ATTACKS[attack](facts, adv, label, seen, rng)
            except (ValueError, ArithmeticError, RuntimeError) as exc:
                rows.append(_row(facts, adv, label, attack, error=f"{type(exc).__name__}: {exc}"))
    return rows


def _row(
    facts: RunFacts, adv: AdversaryConfig, label: str, attack: str, **fields: Any
) -> dict[str, Any]:
    """A report row: who, under which threat model and protection, which attack; then the
    attack's own fields (``metrics`` empty unless given)."""
    return {
        "adversary": label,
        "role": adv.role,
        "threat_model": _threat(adv, facts),
        "protection": facts.protection,
        "attack": attack,
        "metrics": {},
        **fields,
    }


# --- reconstruction --------------------------------------------------------------------


def _threat(adv: AdversaryConfig, facts: RunFacts) -> str:
    if adv.role == "eavesdropper":
        where = (
            f"every link of participant {adv.target}"
            if adv.target is not None
            else f"links {sorted(tuple(sorted(p)) for p in adv.links or ())}"
        )
        return f"eavesdropper on {where}: copies of the frames that cross them"
    if adv.role == "curious_peer":
        return f"curious peer {adv.peer}: every message it receives and sends"
    if adv.role == "curious_coordinator":
        return f"curious coordinator {facts.coordinator}: every update it receives"
    return "black box: queries the final model"


def _watched(adv: AdversaryConfig, facts: RunFacts) -> list[int]:
    """The peers whose updates an adversary tries to isolate."""
    if adv.role == "eavesdropper":
        if adv.target is not None:
            if adv.target == facts.coordinator:
                return list(range(facts.num_peers))
            return [adv.target]
        return sorted({p for pair in adv.links or () for p in pair} - {facts.coordinator})
    if adv.role == "curious_coordinator":
        return list(range(facts.num_peers))
    if adv.role == "curious_peer":
        assert adv.peer is not None
        nbrs: set[int] = set()
        for r in range(max(facts.rounds, 1)):
            topo = facts.schedule.at(r)
            nbrs |= set(topo.in_neighbours(adv.peer)) | set(topo.out_neighbours(adv.peer))
        return sorted(nbrs - {adv.peer})
    return []


def updates_for(
    adv: AdversaryConfig, facts: RunFacts, seen: Sequence[Seen], peer: int
) -> list[ObservedUpdate]:
    """The updates of ``peer`` the adversary can isolate from what it saw, best view first."""
    if facts.protocol == "dpsgd" and adv.role == "eavesdropper" and adv.target == peer:
        found = dpsgd_updates(seen, peer, facts.schedule, facts.params0)
        if found:
            return found
    if facts.coordinator is not None:
        found = [u for u in client_updates(seen, facts.coordinator) if u.peer == peer]
        if found:
            return found
    if facts.fixed is not None:
        found = secure_updates(
            seen,
            peer,
            facts.fixed,
            facts.params0,
            facts.params0.size,
            facts.coordinator,
        )
        if found:
            return found
    return consecutive_updates(seen, peer)


def _first_layer(model: nn.Module) -> tuple[int, int, tuple[int, int]] | None:
    """(offset, size) of the first layer's weight and bias in the flat vector, and the weight
    shape — when the model starts with a fully connected layer."""
    params = list(model.named_parameters())
    if len(params) < 2:
        return None
    (_, w), (_, b) = params[0], params[1]
    if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0]:
        return None
    return w.numel(), b.numel(), (int(w.shape[0]), int(w.shape[1]))


def _last_bias(model: nn.Module) -> slice | None:
    """The output layer's bias in the flat vector (for iDLG's label)."""
    sizes = [p.numel() for p in model.parameters()]
    last = list(model.parameters())[-1]
    if last.ndim != 1:
        return None
    end = sum(sizes)
    return slice(end - sizes[-1], end)


def invert_update(
    update: np.ndarray, model: nn.Module, box: tuple[float, float]
) -> tuple[np.ndarray | None, int | None]:
    """The analytic inversion of an update's first layer, clipped to the data's box, and
    iDLG's label; ``(None, None)`` when the model does not start with a linear layer or the
    update carries nothing to divide by."""
    layer = _first_layer(model)
    if layer is None:
        return None, None
    nw, nb, shape = layer
    if not np.all(np.isfinite(update)):
        return None, None
    gw = -update[:nw].reshape(shape)
    gb = -update[nw : nw + nb]
    try:
        x = analytic_fc_inversion(gw, gb)
    except ValueError:
        return None, None
    bias = _last_bias(model)
    label = idlg_label(grad_out_bias=-update[bias]) if bias is not None else None
    return np.clip(x, *box), label


def _nearest(x: np.ndarray, pool: np.ndarray) -> int:
    return int(np.argmin(np.mean((pool - x) ** 2, axis=1)))


Inverter = Any  # (update, facts, box) -> (reconstruction or None, label or None)


def _analytic(
    u: ObservedUpdate, facts: RunFacts, box: tuple[float, float]
) -> tuple[np.ndarray | None, int | None]:
    return invert_update(u.update, facts.template, box)


def _at(facts: RunFacts, u: ObservedUpdate) -> nn.Module:
    """The model at the parameters the update started from (the common initial model when
    the observer could not tell)."""
    return model_at(facts.template, u.start if u.start is not None else facts.params0)


def _idlg(
    u: ObservedUpdate, facts: RunFacts, box: tuple[float, float]
) -> tuple[np.ndarray | None, int | None]:
    """iDLG (L-BFGS) on the update read as one SGD step's gradient."""
    if not np.all(np.isfinite(u.update)) or not np.any(u.update):
        return None, None
    grads = gradient_from_sgd_step(u.update, facts.lr)
    found = idlg(_at(facts, u), grads, num_features=_params_in(facts), steps=200, box=box)
    return found.reconstruction, found.label


def _inverting_gradients(
    u: ObservedUpdate, facts: RunFacts, box: tuple[float, float]
) -> tuple[np.ndarray | None, int | None]:
    """Inverting Gradients on the whole local update, simulating the round's local steps on
    one dummy sample (the attacker reconstructs one representative input)."""
    if not np.all(np.isfinite(u.update)) or not np.any(u.update):
        return None, None
    shape = facts.dataset.image_shape
    found = inverting_gradients(
        _at(facts, u),
        u.update,
        lr_local=facts.lr,
        local_steps=facts.local_steps[u.peer] if u.peer < len(facts.local_steps) else 1,
        num_features=_params_in(facts),
        num_classes=facts.dataset.num_classes,
        image_shape=shape,
        tv_weight=1e-2 if shape is not None else 0.0,
        steps=500,
        box=box,
    )
    return found.reconstruction[0], found.labels[0]


def _truth(
    facts: RunFacts, peers: Sequence[int], start: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """The training samples behind an update (global row ids) and how they were found:
    ``exact`` — the samples of the trainings of ``peers`` that began at ``start`` (what the
    peers really trained on, matched by the model they started from); ``shard`` — the
    peers' whole shards when no recorded training matches (the update's start is unknown,
    as for shares and masked vectors)."""
    if start is not None:
        digest = params_digest(start)
        rows = [
            np.asarray(facts.shards[p])[local]
            for p in peers
            for d, local in facts.trained_on.get(p, ())
            if d == digest and len(local)
        ]
        if rows:
            return np.unique(np.concatenate(rows)), "exact"
    return np.unique(np.concatenate([np.asarray(facts.shards[p]) for p in peers])), "shard"


def _opaque(seen: Sequence[Seen], sender: int) -> bool:
    """Whether the adversary saw frames from ``sender`` that it could not read."""
    return any(s.src == sender and is_ciphertext(s) for s in seen)


def _reconstruction_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
    inverter: Inverter = _analytic,
    attack: str = "analytic_inversion",
) -> list[dict[str, Any]]:
    """Reconstruct from every update the adversary isolated and score each against the
    samples the peer really trained on for it (the nearest of them for a batch), next to
    the adversary's prior (the dataset-mean image) scored the same way."""
    ds = facts.dataset
    box = (float(ds.x_train.min()), float(ds.x_train.max()))
    peak = box[1] - box[0] or 1.0
    prior = ds.x_train.mean(axis=0)
    rows = []
    targets: list[tuple[int, list[int], list[ObservedUpdate]]] = [
        (p, [p], updates_for(adv, facts, seen, p)) for p in _watched(adv, facts)
    ]
    if adv.role == "curious_coordinator" and facts.coordinator is not None:
        clients = list(range(facts.num_peers))
        targets.append((facts.coordinator, clients, aggregate_updates(seen, facts.coordinator)))
    for who_id, owners, updates in targets:
        aggregate = who_id == facts.coordinator
        if aggregate and not updates and not _opaque(seen, who_id):
            continue  # no global model went by (not a star run): nothing to report
        chosen = updates[-adv.max_observations :]
        recs, truths, priors, guessed, true_labels, how = [], [], [], [], [], set()
        for u in chosen:
            x, lab = inverter(u, facts, box)
            if x is None:
                continue
            rows_ids, found = _truth(facts, owners, u.start)
            pool = ds.x_train[rows_ids]
            k = _nearest(x, pool)
            recs.append(x)
            truths.append(pool[k])
            priors.append(pool[_nearest(prior, pool)])
            how.add(found)
            if lab is not None:
                guessed.append(lab)
                true_labels.append(int(ds.y_train[rows_ids[k]]))
        if chosen:
            view = chosen[-1].view
        else:
            view = "ciphertext" if _opaque(seen, who_id) else "not_observed"
        if not recs:  # nothing it could invert: its best guess is its prior
            rows_ids, found = _truth(facts, owners, None)
            pool = ds.x_train[rows_ids]
            near = pool[_nearest(prior, pool)]
            recs, truths, priors, how = [prior], [near], [near], {found}
        r, t = np.stack(recs), np.stack(truths)
        errors = np.atleast_1d(mse(r, t))
        base = np.atleast_1d(mse(np.broadcast_to(prior, t.shape), np.stack(priors)))
        metrics: dict[str, float] = {
            "mse_median": float(np.median(errors)),
            "psnr_median": float(np.median(psnr(errors, peak))),
            "baseline_mse": float(np.median(base)),
            "reconstructions": float(len(recs)),
        }
        if guessed:
            metrics["label_accuracy"] = float(np.mean(np.array(guessed) == np.array(true_labels)))
        image = f"attack-{label}-{attack}-{who_id}"
        facts.images[image] = [t, r]
        row = _row(
            facts,
            adv,
            label,
            attack,
            target="the aggregate" if aggregate else f"peer {who_id}",
            view=view,
            truth="exact" if how == {"exact"} else "shard" if how == {"shard"} else "mixed",
            observations=len(updates),
            metrics=metrics,
            image=f"{image}.png",
        )
        if attack == "idlg" and not facts.single_step:
            row["note"] = "local training is not one plain SGD step: iDLG reads it as one"
        rows.append(row)
    return rows


# --- membership ------------------------------------------------------------------------


def _losses(model: nn.Module, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return per_sample_losses(model, x, y, params=np.asarray(params, dtype=np.float32))


def _candidates(
    facts: RunFacts, owners: Sequence[int], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` members (from ``owners``' shards) and as many held-out non-members with the
    same labels (see :func:`matched_nonmembers`)."""
    ds = facts.dataset
    members = np.concatenate([np.asarray(facts.shards[p]) for p in owners])
    k = min(count, len(members), len(ds.x_test))
    mi = rng.choice(members, size=k, replace=False)
    ni = matched_nonmembers(ds.y_train[mi], ds.y_test, rng)
    x = np.concatenate([ds.x_train[mi], ds.x_test[ni]])
    y = np.concatenate([ds.y_train[mi], ds.y_test[ni]])
    is_member = np.concatenate([np.ones(k, bool), np.zeros(k, bool)])
    return x, y, is_member


def _membership_row(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    attack: str,
    target: str,
    scores: np.ndarray,
    is_member: np.ndarray,
    extra: dict[str, float] | None = None,
) -> dict[str, Any]:
    metrics = {
        "auc": membership_auc(scores, is_member),
        "tpr_at_1pct_fpr": tpr_at_fpr(scores, is_member, 0.01),
        "candidates": float(len(scores)),
        **(extra or {}),
    }
    return _row(facts, adv, label, attack, target=target, metrics=metrics)


def _final_target(adv: AdversaryConfig, facts: RunFacts) -> int:
    """The peer whose final model a black box queries (peer 0 by default: a coordinator's
    or relay's model need not be what the peers end with — under HE it never changes)."""
    return adv.target if adv.target is not None else 0


def _membership_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    rows = []
    if adv.role == "black_box":
        target = _final_target(adv, facts)
        if target not in facts.final_models:
            return []
        x, y, is_member = _candidates(facts, range(facts.num_peers), adv.candidates, rng)
        losses = _losses(facts.template, facts.final_models[target], x, y)
        rows.append(
            _membership_row(
                facts, adv, label, "loss_threshold", f"final model of {target}", -losses, is_member
            )
        )
        return rows
    observer = adv.peer if adv.role == "curious_peer" else facts.coordinator
    assert observer is not None
    for sender, params in sorted(last_models(seen, observer).items()):
        if sender >= facts.num_peers:
            continue
        x, y, is_member = _candidates(facts, [sender], adv.candidates, rng)
        losses = _losses(facts.template, params, x, y)
        rows.append(
            _membership_row(
                facts,
                adv,
                label,
                "loss_threshold",
                f"peer {sender}'s last shared model",
                -losses,
                is_member,
            )
        )
    return rows


def _lira_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """LiRA against the final model (Carlini et al., S&P 2022): shadow models trained the
    way the run trains — the same model, optimiser, rounds and DP stage, on random halves
    of the attacker's population of candidates — online and offline, with per-candidate and
    fixed variances; the loss attack on the same candidates for comparison."""
    target = _final_target(adv, facts)
    if target not in facts.final_models:
        return []
    x, y, is_member = _candidates(facts, range(facts.num_peers), adv.candidates, rng)
    train_fn = _shadow_trainer(facts, x, y)
    shadows = train_shadow_models(train_fn, len(x), adv.shadows, rng)
    model = copy.deepcopy(facts.template).cpu().float()
    conf = shadow_confidences(shadows, x, y, model=model)
    params = np.asarray(facts.final_models[target], dtype=np.float32)
    phi = logit_confidences(model, x, y, params=params)
    loss_scores = -_losses(facts.template, params, x, y)
    where = f"final model of {target}"
    rows = []
    for name, scores in (
        ("lira_online", lira_online_scores(phi, conf, shadows.keep)),
        (
            "lira_online_fixed_variance",
            lira_online_scores(phi, conf, shadows.keep, fixed_variance=True),
        ),
        ("lira_offline", lira_offline_scores(phi, conf, shadows.keep)),
        (
            "lira_offline_fixed_variance",
            lira_offline_scores(phi, conf, shadows.keep, fixed_variance=True),
        ),
    ):
        rows.append(
            _membership_row(
                facts,
                adv,
                label,
                name,
                where,
                scores,
                is_member,
                {
                    "shadows": float(adv.shadows),
                    "loss_auc": membership_auc(loss_scores, is_member),
                    "loss_tpr_at_1pct_fpr": tpr_at_fpr(loss_scores, is_member, 0.01),
                },
            )
        )
    return rows


def _shadow_trainer(facts: RunFacts, x: np.ndarray, y: np.ndarray) -> Any:
    """``train_fn(indices, seed)`` for LiRA's shadows: ``rounds`` local trainings through
    :class:`~p2pfed.training.LocalTrainer` (DP stage included), each as many SGD steps as one
    round of the run makes per sample of data, scaled to the shadow's data."""
    from p2pfed.training import LocalTrainer, samples_per_round

    tcfg = facts.training
    total = sum(len(s) for s in facts.shards)
    per_round = sum(samples_per_round(len(s), tcfg) for s in facts.shards) / max(total, 1)

    def train(indices: np.ndarray, seed: int) -> np.ndarray:
        model = copy.deepcopy(facts.template).cpu()
        trainer = LocalTrainer(
            model, x[indices], y[indices], tcfg, np.random.default_rng(seed), dp=facts.dp
        )
        steps = max(1, round(per_round * len(indices) / tcfg.batch_size))
        params = np.asarray(facts.params0, dtype=np.float32)
        for _ in range(facts.rounds):
            params = trainer.train(params, steps=steps).params
        return params

    return train


def _model_inversion_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """MI-Face (Fredrikson et al., CCS 2015) on the final model with numerically estimated
    gradients (the black box reads confidences only); each class's inversion is judged by
    a classifier trained independently on held-out data (the report's judge, not the
    attacker's)."""
    target = _final_target(adv, facts)
    if target not in facts.final_models:
        return []
    ds = facts.dataset
    model = model_at(facts.template, facts.final_models[target])
    box = (float(ds.x_train.min()), float(ds.x_train.max()))
    classes = list(range(ds.num_classes))
    inv = invert_classes(model, classes, bounds=box, gradient="numeric", max_iter=adv.mi_iterations)
    images = np.stack([r.image for r in inv]).astype(np.float64)
    judge = _judge(ds)
    judged = judge.predict(images)
    means = np.stack([ds.x_train[ds.y_train == c].mean(axis=0) for c in classes])
    image = f"attack-{label}-model_inversion"
    facts.images[image] = [means, images]
    metrics = {
        "judge_accuracy": float(np.mean(judged == np.array(classes))),
        "target_confidence_mean": float(np.mean([r.confidence for r in inv])),
        "judge_accuracy_on_class_means": float(np.mean(judge.predict(means) == classes)),
        "mse_to_class_mean": float(np.median(mse(images, means))),
    }
    return [
        _row(
            facts,
            adv,
            label,
            "mi_face",
            target=f"final model of {target}",
            metrics=metrics,
            image=f"{image}.png",
            image_rows=["class mean", "inversion"],
        )
    ]


def _judge(ds: Dataset) -> Any:
    """A logistic regression trained on the held-out split: independent of the run."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000).fit(ds.x_test, ds.y_test)


def _active_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Score the active attack: how far below their losses in the peer's own round-start
    model the candidates' losses end up in the attacked neighbour's next model, after the
    pushed ascent raised them (Nasr et al.; ``start_losses`` of
    :func:`~p2pfed.attacks.membership.active_membership_scores`), and, for comparison, the
    passive loss-threshold attack on that same model."""
    assert adv.active is not None and adv.peer is not None
    index = next(i for i, a in zip(facts.indices, facts.adversaries, strict=True) if a is adv)
    cands = active_candidates(
        adv.active,
        adv.peer,
        facts.schedule,
        facts.dataset,
        facts.shards,
        active_seed(facts.seed, index),
    )
    r = adv.active.round
    pushed = received = None
    for s in seen:
        m = s.message
        if not isinstance(m, ModelShare):
            continue
        if s.src == adv.peer and m.round == r:
            pushed = m.params
        elif s.src == cands.neighbour and s.dst == adv.peer and m.round == r + 1:
            received = m.params
    target = f"peer {cands.neighbour}'s model after the push (round {r + 1})"
    if pushed is None or received is None:
        row = _row(
            facts,
            adv,
            label,
            "active_membership",
            target=target,
            view="none",
            note="the pushed model or the neighbour's next model was not observed in plaintext",
        )
        row["threat_model"] += " (active: pushes gradient ascent)"
        return [row]
    before = _losses(facts.template, pushed, cands.x, cands.y)
    after = _losses(facts.template, received, cands.x, cands.y)
    # the raise differs between candidates: take it off the drop, from the losses in the
    # model the peer started the round from (its own mixing, which it knows)
    own = [u for u in dpsgd_updates(seen, adv.peer, facts.schedule, facts.params0) if u.round == r]
    start = None
    if own and own[0].start is not None:
        start = _losses(facts.template, own[0].start, cands.x, cands.y)
    # Nasr et al.'s score, the loss drop from the pushed model; net of the raise it caused
    # (how far below its round-start loss a candidate ends); and the passive attack on the
    # same model, for comparison
    extra = {"auc_passive": membership_auc(-after, cands.is_member)}
    if start is not None:
        net = active_membership_scores(before, after, start_losses=start)
        extra["auc_net_of_raise"] = membership_auc(net, cands.is_member)
        extra["raise_mean"] = float(np.mean(before - start))
    row = _membership_row(
        facts,
        adv,
        label,
        "active_membership",
        target,
        active_membership_scores(before, after),
        cands.is_member,
        extra,
    )
    row["threat_model"] += " (active: pushes gradient ascent)"
    return [row]


def _dlg_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    return _reconstruction_rows(facts, adv, label, seen, rng, _idlg, "idlg")


def _ig_rows(
    facts: RunFacts,
    adv: AdversaryConfig,
    label: str,
    seen: Sequence[Seen],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    return _reconstruction_rows(
        facts, adv, label, seen, rng, _inverting_gradients, "inverting_gradients"
    )


_ATTACKS: dict[str, Any] = {
    "inversion": _reconstruction_rows,
    "dlg": _dlg_rows,
    "inverting_gradients": _ig_rows,
    "membership": _membership_rows,
    "active": _active_rows,
    "lira": _lira_rows,
    "model_inversion": _model_inversion_rows,
}


# --- report ----------------------------------------------------------------------------


def write_report(run_dir: Path, rows: list[dict[str, Any]], facts: RunFacts) -> None:
    """``attacks.json`` and one PNG grid per reconstruction row."""
    from p2pfed.attacks.report import save_image_grid

    shape = facts.dataset.image_shape
    for row in rows:
        name = row.get("image")
        if name is None:
            continue
        stem = name.removesuffix(".png")
        images = facts.images.get(stem)
        if images is None or shape is None or shape[0] != 1:
            row.pop("image")
            continue
        save_image_grid(
            run_dir / name,
            images,
            image_shape=shape[1:],
            row_labels=row.get("image_rows", ["nearest sample", "reconstruction"]),
            title=f"{row['adversary']} · {row['protection']} · {row['target']}",
        )
    (run_dir / "attacks.json").write_text(json.dumps(_finite(rows), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
