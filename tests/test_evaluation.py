"""Metric functions (cx360.transforms.evaluation) on hand-computed cases, and `cx360 eval`."""
import json

import pytest

from cx360.transforms.evaluation import (accuracy, confusion_matrix, macro_f1, per_class,
                                         set_prf)

LABELS = ("negative", "neutral", "positive")
# Six decisions: 4 right; a positive called negative and a negative called positive.
GOLD = ["positive", "positive", "negative", "neutral", "negative", "positive"]
PRED = ["positive", "negative", "negative", "neutral", "positive", "positive"]


def test_accuracy_counts_exact_matches():
    assert accuracy(GOLD, PRED) == 4 / 6
    assert accuracy([], []) == 0.0


def test_confusion_matrix_rows_are_gold_columns_predicted():
    assert confusion_matrix(GOLD, PRED, LABELS) == [
        [1, 0, 1],   # negative: one right, one called positive
        [0, 1, 0],   # neutral
        [1, 0, 2],   # positive: one called negative, two right
    ]


def test_per_class_precision_recall_f1_by_hand():
    scores = per_class(GOLD, PRED, LABELS)
    # negative: predicted twice (1 right) -> P 1/2; 2 in gold -> R 1/2; F1 1/2
    assert scores["negative"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["neutral"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # positive: predicted 3 times (2 right) -> P 2/3; 3 in gold -> R 2/3; F1 2/3
    assert scores["positive"]["precision"] == pytest.approx(2 / 3)
    assert scores["positive"]["recall"] == pytest.approx(2 / 3)
    assert scores["positive"]["f1"] == pytest.approx(2 / 3)


def test_macro_f1_is_the_unweighted_mean():
    assert macro_f1(GOLD, PRED, LABELS) == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)  # 0.7222


def test_macro_f1_class_never_predicted_scores_zero():
    gold = ["negative", "neutral", "positive", "positive"]
    pred = ["positive", "positive", "positive", "positive"]
    # negative and neutral: F1 0 (never predicted); positive: P 2/4, R 1 -> F1 2/3
    assert macro_f1(gold, pred, LABELS) == pytest.approx((0 + 0 + 2 / 3) / 3)


def test_macro_f1_default_labels_skip_classes_absent_from_both():
    gold = ["positive", "negative"]
    pred = ["positive", "negative"]
    assert macro_f1(gold, pred) == 1.0                      # neutral absent from both: skipped
    assert macro_f1(gold, pred, LABELS) == pytest.approx(2 / 3)   # fixed set: neutral F1 0


def test_labels_outside_the_set_are_not_counted_in_the_matrix():
    assert confusion_matrix(["positive", "spam"], ["positive", "positive"], LABELS) == [
        [0, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_lengths_must_match():
    with pytest.raises(ValueError):
        accuracy(["positive"], [])


def test_set_prf_micro_averages_aspects():
    gold = [["delivery"], ["price", "product_quality"], []]
    pred = [["delivery", "price"], ["price"], []]
    # tp: delivery, price = 2; fp: price in item 1 = 1; fn: product_quality = 1
    assert set_prf(gold, pred) == {"precision": 2 / 3, "recall": 2 / 3,
                                   "f1": pytest.approx(2 / 3), "tp": 2, "fp": 1, "fn": 1}
    assert set_prf([[]], [[]])["f1"] == 1.0


# --- cx360 eval sentiment ------------------------------------------------------------------

def _eval(capsys, *args):
    """Run `cx360 eval ...` in this process (the `cx360 sentiment` test covers the subprocess
    path); returns (exit code, stdout, stderr)."""
    from cx360.pipelines.cli import main

    try:
        code = main(["eval", *args])
    except SystemExit as exc:          # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_sentiment_json_report_on_a_small_file(tmp_path, capsys):
    data = tmp_path / "mini.jsonl"
    rows = [
        {"text": "nicht gut", "label": "negative", "lang": "de", "aspects": []},
        {"text": "Sehr schnelle Lieferung, danke", "label": "positive", "lang": "de",
         "aspects": ["delivery"]},
        {"text": "😡", "label": "negative", "lang": "und", "aspects": []},
        {"text": "Wann habt ihr geöffnet?", "label": "neutral", "lang": "de", "aspects": []},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    code, out, err = _eval(capsys, "sentiment", "--file", str(data), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["labels"] == list(LABELS)
    assert set(report["groups"]) == {"de", "und", "all"}
    assert report["groups"]["all"]["n"] == 4
    assert report["groups"]["all"]["accuracy"] == 1.0
    assert report["groups"]["de"]["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert report["groups"]["de"]["aspects"]["tp"] == 1


def test_eval_sentiment_text_report_on_the_shipped_set(capsys):
    code, out, err = _eval(capsys, "sentiment", "--errors")
    assert code == 0, err
    for name in ("English", "German", "emoji-only", "mixed DE/EN", "overall"):
        assert name in out
    assert "confusion (rows gold, columns predicted)" in out
    assert "misclassified (" in out


def test_eval_needs_a_what_and_rejects_bad_files(tmp_path, capsys):
    assert _eval(capsys)[0] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "great", "lang": "en"}\n', encoding="utf-8")
    code, _, err = _eval(capsys, "sentiment", "--file", str(bad))
    assert code == 2
    assert err.strip().splitlines() == [
        f"cx360 eval: error: {bad}:1: label must be one of negative, neutral, positive"]
