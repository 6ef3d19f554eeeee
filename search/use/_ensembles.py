"""`optuna-search ensemble`: soft and hard voting over a study's trials, from their stored
predictions alone (no model is loaded), scored on the study's fixed test examples and
stored on the study (user attr ``ensembles`` + a predictions artifact), so the report and
the dashboard's study note show it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna_search.core import Config, Status, StudyMeta, TrialRecord, UserError, num, pct, render_table
from optuna_search.dashboards import load_predictions
from optuna_search.objectives import (
    Member,
    Prediction,
    check_members,
    correctness,
    hard_vote,
    mcnemar_exact,
    score_predictions,
    soft_vote,
)
from optuna_search.search.loop import ids_digest, study_state, write_study_note
from optuna_search.storage import artifact_store, read_meta, upload_records, write_meta

if TYPE_CHECKING:
    import optuna


def choose_members(
    records: list[TrialRecord], config: Config, *, trials: list[int] | None, top: int | None
) -> tuple[list[TrialRecord], str]:
    """The members, best first by the study's objective, and what chose them."""
    complete = [r for r in records if r.state == Status.COMPLETE and r.duplicate_of is None and r.test is not None]
    by_number = {r.number: r for r in complete}
    if not complete:
        raise UserError("the study has no complete trial yet; an ensemble needs at least two (run the study first)")
    has_validation = all(r.validation is not None for r in complete)
    rank_on = "validation" if has_validation else "test"
    ranked = sorted(complete, key=lambda r: -(r.split_overall(rank_on) or 0.0))
    if trials is not None:
        unknown = [n for n in trials if n not in by_number]
        if unknown:
            raise UserError(
                f"trial(s) {', '.join(map(str, unknown))} are not COMPLETE trials of the study; "
                f"complete trials: {', '.join(str(r.number) for r in ranked)}"
            )
        return [r for r in ranked if r.number in trials], "hand-picked trials"
    if top is not None:
        if not 2 <= top <= len(ranked):
            raise UserError(f"--top {top}: the study has {len(ranked)} complete trials; give 2 to {len(ranked)}")
        return ranked[:top], f"{rank_on} (top {top})" + (
            "" if rank_on == "validation" else ": optimistic, the same examples score it"
        )
    if len(ranked) < 2:
        raise UserError(f"the study has {len(ranked)} complete trial(s); an ensemble needs at least two")
    return ranked, "all complete trials"


def run_ensemble(
    study: optuna.Study, config: Config, *, trials: list[int] | None = None, top: int | None = None
) -> str:
    fields = list(config.data.fields)
    subset = read_meta(study).eval_subset or []
    ids = [s["id"] for s in subset]
    records = [TrialRecord.from_trial(t, fields) for t in study.get_trials(deepcopy=False)]
    chosen, chosen_on = choose_members(records, config, trials=trials, top=top)
    _check_digests(chosen, ids_digest(subset))
    store = artifact_store(config.storage.artifacts, create=False)
    members = []
    for r in chosen:
        preds = load_predictions(store, r)
        if preds is None:
            raise UserError(
                f"trial {r.number} has no readable predictions artifact in '{config.storage.artifacts}'; "
                "pass --set storage.artifacts=DIR where the study's artifacts are"
            )
        members.append(Member(r.label, r.number or 0, preds))
    check_members(members, ids)
    results = [
        _evaluate(name, vote(members, ids, fields), members, chosen_on, study, fields, ids)
        for name, vote in (("soft", soft_vote), ("hard", hard_vote))
        if name == "hard" or all(m.has_probabilities for m in members)
    ]
    _store(study, config, results, store)
    return _render(results, members, fields)


def _check_digests(chosen: list[TrialRecord], digest: str) -> None:
    other = [r.number for r in chosen if r.eval_ids_sha256 not in (None, digest)]
    if other:
        raise UserError(
            f"trial(s) {', '.join(map(str, other))} were evaluated on other examples than the study's "
            "evaluation ids (their digests differ); an ensemble needs the same examples for every member"
        )


def _evaluate(
    method: str,
    preds: list[Prediction],
    members: list[Member],
    chosen_on: str,
    study: optuna.Study,
    fields: list[str],
    ids: list[str],
) -> dict[str, Any]:
    vocab = {
        f: sorted({lab for p in preds for lab in ((p.probs or {}).get(f) or {})} | {p.gold[f] for p in preds})
        for f in fields
    }
    scores = score_predictions(preds, fields, vocab)
    by_id = {p.id: p for p in preds}
    mine = correctness(by_id, ids, fields)["overall"]
    best = members[0]
    vs_best = mcnemar_exact(mine, correctness(best.predictions, ids, fields)["overall"])
    vs_baselines = {}
    for name, bp in (read_meta(study).baseline_predictions or {}).items():
        theirs = [all(bp[i][f] == by_id[i].gold[f] for f in fields) for i in ids]
        vs_baselines[name] = mcnemar_exact(mine, theirs).p_value
    best_single = sum(correctness(best.predictions, ids, fields)[f].count(True) for f in fields) / (
        len(ids) * len(fields)
    )
    return {
        "method": method,
        "members": [m.name for m in members],
        "trials": [m.trial for m in members],
        "chosen_on": chosen_on,
        "accuracy": scores.accuracy,
        "ci95": scores.ci95,
        "overall": scores.overall,
        "exact_match": scores.exact_match,
        "calibration": scores.calibration,
        "best_single": best.name,
        "best_single_overall": best_single,
        "p_vs_best": vs_best.p_value,
        "only_ensemble": vs_best.only_a,
        "only_best": vs_best.only_b,
        "p_vs_baselines": vs_baselines,
        "predictions": [p.to_record() for p in preds],
    }


def _store(study: optuna.Study, config: Config, results: list[dict[str, Any]], store: Any) -> None:
    kept = [
        e
        for e in read_meta(study).ensembles or []
        if not any(e["trials"] == r["trials"] and e["method"] == r["method"] for r in results)
    ]
    out_store = store or artifact_store(config.storage.artifacts)
    for r in results:
        preds = r.pop("predictions")
        r["artifact_id"] = upload_records(
            out_store, study, f"ensemble-{r['method']}-{'-'.join(map(str, r['trials']))}.jsonl", preds
        )
    write_meta(study, StudyMeta(ensembles=kept + results))
    write_study_note(study, config, study_state(study, config))


def _render(results: list[dict[str, Any]], members: list[Member], fields: list[str]) -> str:
    lines = [f"ensemble of {len(members)} trials: " + ", ".join(f"#{m.trial} {m.name}" for m in members)]
    if not all(m.has_probabilities for m in members):
        lines.append(
            "soft voting needs label probabilities; these members were evaluated by `generate`, so only hard "
            '(majority) voting is shown (eval.method = "score" gives probabilities)'
        )
    table = [["voting"] + fields + ["overall", "all fields right", "best single", "p vs best"]]
    for r in results:
        table.append(
            [r["method"]]
            + [pct(r["accuracy"][f]) for f in fields]
            + [pct(r["overall"]), pct(r["exact_match"]), pct(r["best_single_overall"]), num(r["p_vs_best"], ".3g")]
        )
    lines.append(render_table(table))
    for r in results:
        lines.append(
            f"{r['method']} voting: ensemble of {', '.join(r['members'])}: {pct(r['overall'])} vs best single "
            f"{pct(r['best_single_overall'])} (McNemar p = {r['p_vs_best']:.3g}); vs baselines: "
            + ", ".join(f"{n} p = {p:.3g}" for n, p in r["p_vs_baselines"].items())
        )
        if r["calibration"]:
            lines.append(
                "  calibration: "
                + "; ".join(
                    f"{f} log-loss {c['log_loss']:.3f}, Brier {c['brier']:.3f}, ECE {c['ece']:.3f}"
                    for f, c in r["calibration"].items()
                )
            )
    lines.append(f"members chosen on: {results[0]['chosen_on']}; stored on the study (report, dashboard note)")
    return "\n".join(lines)
