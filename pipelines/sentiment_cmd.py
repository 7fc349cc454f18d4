"""`cx360 sentiment`: score texts read one per line on stdin; one JSON object per line out.

    printf 'Lieferung kam kaputt an\\nLove it 😍\\n' | cx360 sentiment

Each output line has the text and the keys of ``SentimentScorer.score`` (language, polarity,
subjectivity, label, label_score, emoji_polarity, aspects, method, lexicon_version), in input order, one
line per input line (an empty line scores as language ``und``, neutral). Input and output are
UTF-8 whatever the locale. How scoring works: docs/sentiment.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

BATCH = 512


def register(sub) -> None:
    parser = sub.add_parser(
        "sentiment", help="score texts from stdin (one per line), print JSON lines",
        description="Score texts read one per line on stdin; print one JSON object per line "
                    "(language, polarity, subjectivity, label, aspects, ...).")
    parser.add_argument("--lang-hint", choices=["de", "en"], default=None,
                        help="declared language, used only when a text itself shows none")
    parser.add_argument("--english", choices=["textblob", "cx"], default="textblob",
                        help="English scoring: textblob exactly (default) or cx: the cx360 lexical "
                             "engine with the English CX supplement (not equal to textblob)")
    parser.add_argument("--no-text", action="store_true",
                        help="leave the input text out of the output objects")
    parser.set_defaults(handler=run)


def _lines(stream) -> "list[str]":
    batch = []
    for line in stream:
        batch.append(line.rstrip("\r\n"))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _utf8(stream, **kwargs):
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(encoding="utf-8", **kwargs)
    return stream


def run(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from cx360.transforms.sentiment import SentimentScorer

    stdin = stdin or _utf8(sys.stdin, errors="replace")
    stdout = stdout or _utf8(sys.stdout)
    scorer = SentimentScorer(english=args.english)
    try:
        for batch in _lines(stdin):
            results = scorer.score_many(batch, [args.lang_hint] * len(batch))
            for text, result in zip(batch, results):
                out = result if args.no_text else {"text": text, **result}
                stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
            stdout.flush()
    except BrokenPipeError:          # `cx360 sentiment < posts.txt | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
