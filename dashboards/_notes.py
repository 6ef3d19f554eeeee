"""Markdown notes shown in optuna-dashboard (``optuna_dashboard.save_note``): one per
trial (accuracy table, effective configuration, environment) and one on the study
(summary table with baselines). Text is built from plain data so it is testable; no
storage URL or other secret is ever written into a note."""

from __future__ import annotations

from typing import Any


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def trial_note(number: int, point_key: str, attrs: dict[str, Any], params: dict[str, Any], config: dict[str, Any], fields: list[str], overall: float) -> str:
    lines = [f"## Trial {number}: {point_key}", "", "| field | accuracy | 95% CI (Wilson) | macro-F1 |", "|---|---|---|---|"]
    for f in fields:
        ci = attrs.get(f"{f}_accuracy_ci95") or [None, None]
        f1 = attrs.get(f"{f}_macro_f1")
        lines.append(f"| {f} | {_pct(attrs.get(f'{f}_accuracy'))} | {_pct(ci[0])} - {_pct(ci[1])} | {'-' if f1 is None else f'{f1:.3f}'} |")
    lines += [
        f"| **overall** (mean of fields) | **{_pct(overall)}** | | |",
        "",
        f"All fields right: {_pct(attrs.get('exact_match_accuracy'))}; parse failures: {attrs.get('parse_failures')} "
        f"of {attrs.get('eval_examples')} examples.",
        "",
        "### Effective configuration",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    m, t = config.get("model", {}), config.get("train", {})
    rows = [
        ("base model", m.get("name_or_path")),
        ("revision", m.get("revision") or "default"),
        ("quantization", f"{m.get('quantization')} (double quant {m.get('double_quant')}), compute {attrs.get('compute_dtype', m.get('compute_dtype'))}"),
        ("LoRA r / alpha / dropout", f"{params['lora_r']} / {params['lora_alpha']:g} / {params['lora_dropout']}"),
        ("target modules", ", ".join(params["target_modules"])),
        ("learning rate", f"{params['learning_rate']:g} ({t.get('lr_scheduler')}, warm-up {t.get('warmup_ratio')})"),
        ("batch", f"{attrs.get('batch_size', t.get('batch_size'))} per device x {attrs.get('gradient_accumulation', t.get('gradient_accumulation'))} accumulation"),
        ("epochs", params["epochs"]),
        ("max length", m.get("max_length")),
        ("seed", t.get("seed")),
        ("trainable parameters", f"{attrs.get('trainable_params', 0):,}"),
        ("resumed from step", attrs.get("resumed_from_step", 0)),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    env = attrs.get("environment") or {}
    lines += ["", "### Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def study_note(study_name: str, rows: list[dict[str, Any]], fields: list[str], baselines: dict[str, dict[str, float]] | None, n_eval: int) -> str:
    lines = [
        f"## {study_name}",
        "",
        f"Every row is scored on the same {n_eval} test examples (greedy decoding).",
        "",
        "| configuration | " + " | ".join(fields) + " | overall | train loss | eval loss | status |",
        "|---|" + "---|" * (len(fields) + 4),
    ]
    for r in rows:
        lines.append(
            f"| {r['point']} | " + " | ".join(_pct(r.get(f)) for f in fields)
            + f" | {_pct(r.get('overall'))} | {_fmt(r.get('train_loss'))} | {_fmt(r.get('eval_loss'))} | {r['status']} |"
        )
    for name, b in (baselines or {}).items():
        lines.append(f"| baseline: {name} | " + " | ".join(_pct(b.get(f)) for f in fields) + f" | {_pct(b.get('overall'))} | - | - | - |")
    lines += ["", "Significance tests and the recommendation: `optuna-search report`."]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
