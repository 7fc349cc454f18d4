"""`cx360 eval`: evaluate the pipeline's models against labelled data.

    cx360 eval sentiment                      # the shipped set, tests/data/sentiment_eval.jsonl
    cx360 eval sentiment --file my.jsonl --json

Each evaluation is a sub-command of ``eval`` (``args.eval_what``); add one by writing a
``_register_<name>(subparsers)`` function and listing it in ``EVALUATIONS``. Metric functions
live in ``cx360.transforms.evaluation``.

``eval sentiment`` reads JSON lines ``{"text", "label", "lang", "aspects", "kind"}`` (label:
positive/neutral/negative; lang: en, de, und = emoji-only, mixed) and prints, per language
group and overall: n, accuracy, macro-F1 over the three labels and the confusion matrix
(rows gold, columns predicted), plus aspect precision/recall and how often the detected
language matched. Exit code 0; 2 for an unreadable or malformed file.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from cx360.pipelines.cli import UserError

LABELS = ("negative", "neutral", "positive")
GROUPS = ("en", "de", "und", "mixed")
GROUP_NAMES = {"en": "English", "de": "German", "und": "emoji-only", "mixed": "mixed DE/EN",
               "all": "overall"}
DEFAULT_SENTIMENT_SET = (pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" /
                         "sentiment_eval.jsonl")


def register(sub) -> None:
    parser = sub.add_parser("eval", help="evaluate models against labelled data")
    what = parser.add_subparsers(dest="eval_what", metavar="WHAT")
    what.required = True
    for register_one in EVALUATIONS:
        register_one(what)


# --- eval sentiment ------------------------------------------------------------------------------

def _register_sentiment(what) -> None:
    parser = what.add_parser(
        "sentiment", help="accuracy and macro-F1 of the sentiment scorer per language",
        description="Score a labelled JSON-lines file and report accuracy, macro-F1 and the "
                    "confusion matrix per language group (en, de, und = emoji-only, mixed).")
    parser.add_argument("--file", type=pathlib.Path, default=DEFAULT_SENTIMENT_SET,
                        help=f"labelled JSON lines (default: {DEFAULT_SENTIMENT_SET})")
    parser.add_argument("--english", choices=["textblob", "cx"], default="textblob",
                        help="English scoring mode of the scorer (default textblob)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--errors", action="store_true",
                        help="also list the misclassified texts")
    parser.set_defaults(handler=run_sentiment)


def load_labelled(path: pathlib.Path) -> list[dict]:
    """Rows of a labelled sentiment file; UserError (one line) if it is missing or malformed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{path}:{number}: needs a string 'text'")
        if row.get("label") not in LABELS:
            raise UserError(f"{path}:{number}: label must be one of {', '.join(LABELS)}")
        if row.get("lang") not in GROUPS:
            raise UserError(f"{path}:{number}: lang must be one of {', '.join(GROUPS)}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no labelled rows")
    return rows


def evaluate_sentiment(rows: list[dict], scorer=None) -> dict:
    """The report as a dict: ``{"groups": {group: metrics}, "lexicon_version", ...}``."""
    from cx360.transforms.evaluation import (accuracy, confusion_matrix, macro_f1, per_class,
                                             set_prf)
    from cx360.transforms.sentiment import SentimentScorer, label_for

    scorer = scorer or SentimentScorer(text_cache_size=0)
    scores = scorer.score_many([row["text"] for row in rows])
    groups = {}
    for group in (*GROUPS, "all"):
        idx = [i for i, row in enumerate(rows) if group == "all" or row["lang"] == group]
        if not idx:
            continue
        gold = [rows[i]["label"] for i in idx]
        pred = [scores[i]["label"] for i in idx]
        language_ok = sum(_language_matches(rows[i]["lang"], scores[i]) for i in idx)
        groups[group] = {
            "n": len(idx),
            "accuracy": accuracy(gold, pred),
            "macro_f1": macro_f1(gold, pred, LABELS),
            # The label a plain threshold on ``polarity`` would give (for English in the default
            # mode: textblob's polarity alone), to show what the CX label score adds.
            "polarity_macro_f1": macro_f1(gold, [label_for(scores[i]["polarity"]) for i in idx],
                                          LABELS),
            "per_class": per_class(gold, pred, LABELS),
            "confusion": confusion_matrix(gold, pred, LABELS),
            "aspects": set_prf([rows[i].get("aspects", []) for i in idx],
                               [scores[i]["aspects"] for i in idx]),
            "language_detected": language_ok / len(idx),
        }
    errors = [{"text": row["text"], "lang": row["lang"], "gold": row["label"],
               "predicted": score["label"], "polarity": score["polarity"],
               "method": score["method"]}
              for row, score in zip(rows, scores) if row["label"] != score["label"]]
    return {"labels": list(LABELS), "groups": groups, "errors": errors,
            "lexicon_version": scorer.lexicon_version}


def _language_matches(gold_lang: str, score: dict) -> bool:
    if gold_lang == "mixed":     # either language, scored on the path that knows both
        return score["language"] in ("de", "en") and not score["method"].startswith(
            "textblob")
    return score["language"] == gold_lang


def format_report(report: dict, path: pathlib.Path | None = None,
                  show_errors: bool = False) -> str:
    lines = []
    if path:
        lines.append(f"evaluation set: {path}")
    lines.append(f"lexicon version: {report['lexicon_version']}")
    lines.append("")
    lines.append(f"{'group':<12} {'n':>4} {'accuracy':>9} {'macro-F1':>9} {'aspect-F1':>10} "
                 f"{'lang-ok':>8} {'polarity-F1':>12}")
    for group, m in report["groups"].items():
        lines.append(f"{GROUP_NAMES[group]:<12} {m['n']:>4} {m['accuracy']:>9.3f} "
                     f"{m['macro_f1']:>9.3f} {m['aspects']['f1']:>10.3f} "
                     f"{m['language_detected']:>8.3f} {m['polarity_macro_f1']:>12.3f}")
    for group, m in report["groups"].items():
        lines.append("")
        lines.append(f"{GROUP_NAMES[group]} confusion (rows gold, columns predicted):")
        width = max(len(label) for label in LABELS) + 2
        lines.append(" " * width + "".join(f"{label:>{width}}" for label in LABELS))
        for label, row in zip(LABELS, m["confusion"]):
            lines.append(f"{label:<{width}}" + "".join(f"{x:>{width}}" for x in row))
    if show_errors:
        lines.append("")
        lines.append(f"misclassified ({len(report['errors'])}):")
        for e in report["errors"]:
            lines.append(f"  [{e['lang']}] gold {e['gold']}, got {e['predicted']} "
                         f"({e['polarity']:+.3f}, {e['method']}): {e['text']}")
    return "\n".join(lines)


def run_sentiment(args: argparse.Namespace) -> int:
    from cx360.transforms.sentiment import SentimentScorer

    rows = load_labelled(args.file)
    report = evaluate_sentiment(rows, SentimentScorer(english=args.english, text_cache_size=0))
    if args.json:
        if not args.errors:
            report = {k: v for k, v in report.items() if k != "errors"}
        print(json.dumps({"file": str(args.file), "english": args.english, **report},
                         ensure_ascii=False, indent=2))
    else:
        print(format_report(report, args.file, args.errors))
    return 0


# --- eval identity -------------------------------------------------------------------------------

def _register_identity(what) -> None:
    parser = what.add_parser(
        "identity", help="pairwise precision and recall of identity stitching",
        description="Generate a seeded stream whose true customer per event is known, run it "
                    "through pseudonymisation and identity stitching in micro-batches (no "
                    "Kafka) and print pairwise precision and recall over pairs of events of "
                    "known customers.")
    parser.add_argument("--events", type=int, default=5000, help="records (default 5000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--batches", type=int, default=5, help="micro-batches (default 5)")
    parser.add_argument("--max-accounts", type=int, default=None,
                        help="identifiers linked to more accounts are shared (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run_identity)


def run_identity(args: argparse.Namespace) -> int:
    from cx360.pipelines.generator import GeneratorConfig, generate
    from cx360.transforms.identity import IdentityRules, evaluate_stitching

    if args.events < 100 or args.batches < 1:
        raise UserError("--events must be >= 100 and --batches >= 1")
    rules = IdentityRules(args.max_accounts) if args.max_accounts else IdentityRules()
    records = generate(GeneratorConfig(seed=args.seed, events=args.events))
    report = evaluate_stitching(records, args.batches, rules)
    report.update(seed=args.seed, max_accounts_per_identifier=rules.max_accounts_per_identifier)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"identity stitching, seed {args.seed}: {report['events']} events in "
          f"{report['batches']} micro-batches; {report['items']} events of "
          f"{report['customers']} known customers -> {report['profiles']} profiles")
    print(f"pairwise precision          {report['precision']:.4f}  "
          f"({report['correct_pairs']} of {report['predicted_pairs']} predicted pairs)")
    print(f"pairwise recall             {report['recall']:.4f}  "
          f"({report['correct_pairs']} of {report['true_pairs']} true pairs)")
    print(f"recall of linkable pairs    {report['recall_of_linkable']:.4f}  "
          f"({report['linkable_pairs']} true pairs connected by any chain of links)")
    outside = report["unlinkable_events_by_identifier"]
    if outside:
        names = {"sh": "social handle", "ck": "cookie", "em": "e-mail", "ph": "phone",
                 "acct": "account"}
        print(f"unlinkable events           {sum(outside.values())} (no chain of identifiers "
              "connects them to their customer's account), by identifier: "
              + ", ".join(f"{names.get(k, k)} {n}" for k, n in outside.items()))
    return 0


#: One register function per ``cx360 eval WHAT`` sub-command.
EVALUATIONS = (_register_sentiment, _register_identity)
