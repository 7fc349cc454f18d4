"""Sentiment for German, English and emoji-heavy social posts and survey comments.

:class:`SentimentScorer` is the pure-Python engine; :class:`ScoreSentiment` wraps it as a Beam
transform (the scorer is built in ``DoFn.setup()``, never pickled). How scoring works, the
resources and their licences, and measured accuracy and speed: docs/sentiment.md.

Per text, one of these paths (the ``method`` in the result):

- ``textblob-en``: English text goes through textblob's own engine, ``textblob.en.sentiment``
  (what ``TextBlob(text).sentiment`` calls). For text without emoji (characters of the emoji
  and pictograph blocks) the polarity *is* ``TextBlob(text).sentiment.polarity``. The label is
  decided on ``label_score``, the cx360 engine's score of the same text (textblob has no
  opinion on complaint vocabulary); everywhere else ``label_score`` is the polarity.
- ``lexicon-en``: only with ``SentimentScorer(english="cx")``: English through the cx360
  lexical engine (textblob's word values + an English CX supplement); more accurate on
  customer feedback, not equal to textblob.
- ``lexicon-de``: German text is scored with the textblob-de polarity lexicon (loaded from its
  XML: case fixed, inflections generated) plus the cx360 CX supplement, with negation
  (``nicht gut``, ``kein Problem``, ``funktioniert nicht``), intensifiers (``sehr``, ``mega``),
  phrases (``nie wieder``, ``zu teuer``) and textblob's English lexicon for English words.
- ``mixed``: German/English code-switching ("Lieferung war mega fast, love it"): the German
  path, which knows both vocabularies. ``language`` is the majority language.
- ``emoji``: emoji-only posts (``language`` ``und``), scored with the emoji table.

Emoji in any text are scored from the emoji table (Emoji Sentiment Ranking + cx360 values)
and count like assessed words: ``polarity`` is the mean over textblob's (or the German
lexicon's) assessments and the text's sentiment-bearing emoji. The method then gets a
``+emoji`` suffix (``textblob-en+emoji``).

``ScoreSentiment`` is imported lazily (module ``__getattr__``) so that the scorer and the
``cx360 sentiment`` command do not pay Apache Beam's ~2 s import.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import sys
import threading
import unicodedata
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "LABEL_THRESHOLDS", "LANGUAGES", "METHODS", "SentimentScorer",
    "ScoreSentiment",  # noqa: F822 (built on first access by the module __getattr__)
    "label_for", "load_resources",
]

#: Label cut-offs on ``polarity``: ``polarity >= LABEL_THRESHOLDS["positive"]`` is positive,
#: ``polarity <= LABEL_THRESHOLDS["negative"]`` negative, anything between neutral. Chosen on
#: the development set (tests/data/sentiment_dev.jsonl), not on the evaluation set. 0.1 is
#: also textblob's own default for ``textblob.en.positive()``; a symmetric band keeps weak
#: evidence ("new", "okay"-ish words, a single mildly positive emoji) neutral.
LABEL_THRESHOLDS = {"positive": 0.1, "negative": -0.1}

#: Values of ``language``: ``und`` = emoji-only, no letters, or empty.
LANGUAGES = ("de", "en", "und")
#: Values of ``method`` (optionally with ``+emoji`` when emoji contributed).
METHODS = ("textblob-en", "lexicon-en", "lexicon-de", "mixed", "emoji", "none")

#: Values of SentimentScorer(english=...): "textblob" = identical to textblob (default).
ENGLISH_MODES = ("textblob", "cx")
#: Bumped by hand when the scoring rules change; the data files add their own content hash.
LEXICON_RELEASE = "1.0"
DATA_DIR = Path(__file__).resolve().parent / "data" / "sentiment"
DATA_FILES = ("de-sentiment.xml", "de_cx_supplement.tsv", "en_cx_supplement.tsv",
              "emoji_esr.tsv", "emoji_cx360.tsv", "aspects.tsv")

#: German negation scales a word's polarity by this (textblob's rule: "not good" = -0.5 good).
NEGATION_FACTOR = -0.5
#: ... and by this when the negator itself is intensified ("gar nicht", "überhaupt nicht").
STRONG_NEGATION_FACTOR = -0.8
NEGATION_LOOKAHEAD = 4   # tokens after a negator that it may still apply to
#: Negators that bind only the next word ("ohne Info"; not "ohne Grund storniert").
SHORT_NEGATORS = {"ohne": 1, "without": 1}
NEGATION_LOOKBACK = 3    # "funktioniert seit gestern nicht": negate the word before ...
#: ... which only these (sentence-final, post-verbal) negators do.
LOOKBACK_NEGATORS = frozenset({"nicht", "nich", "net", "nie", "niemals", "kaum", "nichts",
                               "nix"})
INTENSIFIER_REACH = 2    # "sehr schnell", "so ein Mist"
#: py3langid confidence above which it overrules a single function word (then: mixed text).
LANGID_DISAGREE = 0.9

# --- token-level constants -----------------------------------------------------------------------
_URL_RE = re.compile(r"https?://\S+|www\.\S+")
_MENTION_RE = re.compile(r"@\w+")
#: Words, runs of clause punctuation, and "#" before a hashtag (a hashtag is its own clause:
#: the negation in "funktioniert nichts mehr #fail" must not reach "fail").
_TOKEN_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|[.,;:!?]+|#(?=[^\W\d_])")
_BOUNDARY_CHARS = ".,;:!?#"
_EMOJI_BASE = ("\U0001F000-\U0001FAFF\u2600-\u27BF\u2300-\u23FF\u2B00-\u2BFF")
_EMOJI_RE = re.compile(
    "[" + _EMOJI_BASE + "](?:[\uFE0E\uFE0F\u20E3]|[\U0001F3FB-\U0001F3FF])*"
    "(?:\u200D[" + _EMOJI_BASE + "](?:[\uFE0E\uFE0F]|[\U0001F3FB-\U0001F3FF])*)*")
_EMOJI_STRIP = str.maketrans("", "", "\uFE0E\uFE0F\u20E3\U0001F3FB\U0001F3FC\U0001F3FD"
                             "\U0001F3FE\U0001F3FF")
_ASCII_FOLD = (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss"))

#: German noun suffixes (Lieferung, Freundlichkeit, Gesellschaft): evidence of German.
_GERMAN_SUFFIXES = ("ung", "ungen", "keit", "heit", "schaft")
_BOUNDARY_WORDS = frozenset({"aber", "sondern", "jedoch", "but", "however"})
_NUMBER_WORDS = frozenset({"zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
                           "zehn", "elf", "zwölf", "zwanzig", "dreißig"})

# Function words for the language decision. Words spelled the same in both languages
# (so, was, will, war, man, also, in, an, am, die, hat, ...) are in neither list.
DE_FUNCTION_WORDS = frozenset("""
ich du er sie wir ihr der das den dem des ein eine einen einem einer eines und oder aber
nicht nich kein keine keinen keinem keiner keines nie ist sind bin bist hat habe hab haben
hatte hatten wird werden wurde wurden mit für von vom zum zur bei beim auf aus nach seit im
ins ans zu auch noch schon mal nur sehr wie wo wann warum wer ob dass weil wenn mein meine
meinen meinem meiner dein deine euch euer eure uns unser unsere mir mich dir dich ihm ihn
ihnen jetzt heute gestern immer wieder gibt gab kann können möchte soll muss gerade leider
danke bitte alles nichts nix jemand niemand hier dieser diese dieses ganz viel echt einfach
endlich geht ging gut sich es ja nein doch jeder jede wieso weshalb welche welcher welches
deren dessen habt seid wäre würde hätte könnte gerne gern etwas mehr weniger über unter
gegen ohne nochmal bzw usw sowie damit dann denn sondern trotzdem dieses jetzt schon
""".split())
EN_FUNCTION_WORDS = frozenset("""
i you he she it we they the a and or but not no never is are were be been being has have
had would can could should with for from of on at to by my your our their its this that
these those what where when why who how there here just still again very too really thanks
thank please anyone anybody nothing everything after before since it's i'm don't can't
won't doesn't didn't isn't wasn't aren't i've i'll you're that's what's let's if than then
me him them us do does did got get any some every ever about into out up off only because
while yet which whose as like want need know yes guys anymore though
""".split())


@dataclass(frozen=True)
class _Entry:
    """A scorable token or phrase: polarity, subjectivity, and for expectation words the value
    used when it is negated (``neg``; ``None`` means "polarity x NEGATION_FACTOR")."""
    polarity: float
    subjectivity: float
    neg: float | None = None
    english: bool = False


@dataclass(frozen=True)
class Resources:
    """Everything the scorer reads, loaded once per process (see :func:`load_resources`)."""
    words: dict            # token -> _Entry (German lexicon + supplement, generated forms)
    en_words: dict         # token -> _Entry (textblob's lexicon + cx360 English supplement)
    phrases: dict          # first token -> ((tuple(tokens), _Entry), ...), longest first
    negators: frozenset
    intensifiers: dict     # token -> (multiplier, own polarity)
    stop: frozenset        # German words never looked up in the English lexicon
    de_vocab: frozenset    # lemmas of the German lexicons (language evidence)
    en_vocab: frozenset    # words of the English lexicons (language evidence)
    emoji: dict            # normalised emoji -> (polarity, subjectivity)
    aspect_exact: dict     # token -> tuple of aspects
    aspect_prefix: tuple   # ((aspect, (prefix, ...)), ...)
    aspect_suffix: tuple
    aspect_phrases: dict   # first token -> ((tuple(tokens), aspects), ...)
    version: str


# --- loading -------------------------------------------------------------------------------------

def _rows(path: Path) -> Iterable[list[str]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            yield line.split("\t")


def _options(cols: Sequence[str]) -> dict[str, float]:
    opts = {}
    for col in cols:
        if "=" in col:
            key, value = col.split("=", 1)
            opts[key.strip()] = float(value)
    return opts


def _subjectivity(polarity: float) -> float:
    """The German lexicon has no subjectivity; approximate it from the strength of a word."""
    return 0.0 if polarity == 0 else min(1.0, 0.4 + 0.6 * abs(polarity))


_ADJ_ENDINGS = ("e", "en", "er", "es", "em")
_SEPARABLE = ("zurück", "zusammen", "weiter", "fest", "nach", "auf", "aus", "ein", "mit", "vor",
              "weg", "her", "hin", "los", "ab", "an", "bei", "zu")
_INSEPARABLE = ("be", "ge", "er", "ver", "zer", "ent", "emp", "miss")


def adjective_forms(lemma: str) -> set[str]:
    """Inflected, comparative and superlative forms of a German adjective (regular only)."""
    forms = {lemma}
    stems = [lemma]
    if len(lemma) > 4 and (lemma.endswith("el") or lemma.endswith("er")
                           and lemma[-4:-2] in ("au", "eu", "äu")):
        stems.append(lemma[:-2] + lemma[-1])           # dunkel -> dunkle, teuer -> teure
    for stem in stems:
        if stem.endswith("e"):
            forms.update(stem + e[1:] for e in _ADJ_ENDINGS if e != "e")
            comparative, superlative = stem + "r", stem + "st"
        else:
            forms.update(stem + e for e in _ADJ_ENDINGS)
            comparative = stem + "er"
            superlative = stem + ("est" if stem.endswith(("t", "d", "s", "ß", "z", "x", "sch"))
                                  else "st")
        forms.add(comparative)
        forms.update(comparative + e for e in _ADJ_ENDINGS)
        forms.update(superlative + e for e in _ADJ_ENDINGS)
    return forms


def noun_forms(lemma: str) -> set[str]:
    """Case and plural forms of a German noun (regular endings; umlaut plurals are not made)."""
    if lemma.endswith(("e", "el", "er")):
        return {lemma, lemma + "n", lemma + "s"}
    if lemma.endswith("in"):                                  # Mitarbeiterin(nen)
        return {lemma, lemma + "nen"}
    return {lemma, lemma + "e", lemma + "en", lemma + "s", lemma + "es", lemma + "er"}


def verb_forms(infinitive: str) -> set[str]:
    """Present, simple past, present and past participle (with adjective endings) of a weak
    German verb. Separable verbs get their participle and zu-infinitive; their finite forms
    without the prefix are *not* generated ("ausnutzen" must not make "nutzt" negative)."""
    if infinitive.endswith("en"):
        stem = infinitive[:-2]
    elif infinitive.endswith("n"):
        stem = infinitive[:-1]
    else:
        return {infinitive}
    forms = {infinitive}
    forms.update(infinitive + e for e in _ADJ_ENDINGS)   # adjective-like "VB" entries: zufrieden
    e = "e" if stem.endswith(("t", "d")) or re.search(r"[^aeiouäöühlrmn][mn]$", stem) else ""
    prefix = next((p for p in _SEPARABLE if infinitive.startswith(p)
                   and len(infinitive) - len(p) >= 5), None)
    if prefix:
        rest = stem[len(prefix):]
        participle = prefix + "ge" + rest + e + "t"
        forms.add(prefix + "zu" + infinitive[len(prefix):])
    else:
        forms.update({stem + "e", stem + e + "st", stem + e + "t", stem + e + "te",
                      stem + e + "ten", stem + e + "test", stem + e + "tet", stem + "end"})
        forms.update(stem + "end" + x for x in _ADJ_ENDINGS)
        if infinitive.startswith(_INSEPARABLE) or infinitive.endswith("ieren"):
            participle = stem + e + "t"
        else:
            participle = "ge" + stem + e + "t"
    forms.add(participle)
    forms.update(participle + x for x in _ADJ_ENDINGS)
    return forms


_GENERATORS = {"adj": adjective_forms, "noun": noun_forms, "verb": verb_forms,
               "JJ": adjective_forms, "NN": noun_forms, "VB": verb_forms}


def _fold(words: dict) -> None:
    """Add ae/oe/ue/ss spellings ("schoen", "gross") for keys with umlauts or ß."""
    for key in list(words):
        if any(ch in key for ch in "äöüß"):
            folded = key
            for a, b in _ASCII_FOLD:
                folded = folded.replace(a, b)
            words.setdefault(folded, words[key])


def _load_german(data: Path):
    """German words: exact entries win over generated forms; the supplement wins over the
    base lexicon at each level. Aspect words are neutral unless the supplement scores them."""
    base_exact, base_generated = {}, {}
    root = ElementTree.parse(data / "de-sentiment.xml").getroot()
    for word in root.iter("word"):
        pos = word.get("pos")
        if pos == "RB":          # the supplement defines intensifiers itself
            continue
        form = word.get("form").lower()
        polarity = float(word.get("polarity") or 0.0)
        base_exact[form] = polarity
        for generated in _GENERATORS.get(pos, lambda w: {w})(form):
            base_generated.setdefault(generated, polarity)

    sup_exact, sup_generated, phrases = {}, {}, {}
    negators, intensifiers, stop = set(), {}, set()
    for cols in _rows(data / "de_cx_supplement.tsv"):
        term, kind, polarity = cols[0].strip().lower(), cols[1].strip(), float(cols[2])
        opts = _options(cols[3:])
        entry = _Entry(polarity, _subjectivity(polarity if polarity else opts.get("neg", 0.0)),
                       opts.get("neg"))
        if kind == "neg":
            negators.add(term)
        elif kind == "intens":
            intensifiers[term] = (opts.get("x", 1.0), polarity)
        elif kind == "stop":
            stop.add(term)
        elif kind == "phrase":
            phrases[tuple(term.split())] = entry
        else:
            sup_exact[term] = entry
            for generated in _GENERATORS.get(kind, lambda w: {w})(term):
                sup_generated[generated] = entry

    words: dict = {}
    for form, polarity in base_generated.items():
        words[form] = _Entry(polarity, _subjectivity(polarity))
    words.update(sup_generated)
    for form, polarity in base_exact.items():
        words[form] = _Entry(polarity, _subjectivity(polarity))
    words.update(sup_exact)
    for token in list(words):               # function words are never scored as words
        if token in negators or token in intensifiers:
            del words[token]
    _fold(words)
    vocab = frozenset(base_exact) | frozenset(sup_exact)
    return words, phrases, negators, intensifiers, stop, vocab


def _load_english(data: Path):
    """textblob's own lexicon (averaged over senses and POS exactly as textblob does), then
    the cx360 English supplement for words textblob does not know."""
    from textblob.en import sentiment as textblob_sentiment

    if not dict.__len__(textblob_sentiment):
        textblob_sentiment.load()
    en_words = {}
    for word in dict.keys(textblob_sentiment):
        polarity, subjectivity, _intensity = dict.__getitem__(textblob_sentiment, word)[None]
        en_words[word] = _Entry(polarity, subjectivity, None, True)
    phrases, negators, intensifiers = {}, set(), {}
    for cols in _rows(data / "en_cx_supplement.tsv"):
        term, kind, polarity = cols[0].strip().lower(), cols[1].strip(), float(cols[2])
        opts = _options(cols[3:])
        entry = _Entry(polarity, 0.6 if polarity or "neg" in opts else 0.0, opts.get("neg"), True)
        if kind == "neg":
            negators.add(term)
        elif kind == "intens":
            intensifiers[term] = (opts.get("x", 1.0), polarity)
        elif kind == "phrase":
            phrases[tuple(term.split())] = entry
        elif "neg" in opts or "override" in opts or term not in en_words:
            en_words[term] = entry
    for token in list(en_words):
        if token in negators or token in intensifiers:
            del en_words[token]
    return en_words, phrases, negators, intensifiers


def normalise_emoji(cluster: str) -> str:
    """Drop variation selectors, keycap marks and skin tones: the table key of an emoji."""
    return cluster.translate(_EMOJI_STRIP)


def _load_emoji(data: Path) -> dict:
    table = {}
    for cols in _rows(data / "emoji_esr.tsv"):
        table[normalise_emoji(cols[0])] = (float(cols[3]), float(cols[4]))
    for cols in _rows(data / "emoji_cx360.tsv"):
        table[normalise_emoji(cols[0])] = (float(cols[1]), float(cols[2]))
    return table


def _load_aspects(data: Path):
    exact, prefix, suffix, phrases = {}, {}, {}, {}
    for cols in _rows(data / "aspects.tsv"):
        aspect, pattern = cols[0].strip(), cols[1].strip().lower()
        if " " in pattern:
            key = tuple(pattern.split())
            phrases[key] = tuple(sorted(set(phrases.get(key, ())) | {aspect}))
        elif pattern.endswith("*"):
            prefix.setdefault(aspect, set()).add(pattern[:-1])
        elif pattern.startswith("*"):
            suffix.setdefault(aspect, set()).add(pattern[1:])
        else:
            exact[pattern] = tuple(sorted(set(exact.get(pattern, ())) | {aspect}))
    as_tuple = lambda d: tuple((a, tuple(sorted(v))) for a, v in sorted(d.items()))  # noqa: E731
    return exact, as_tuple(prefix), as_tuple(suffix), phrases


def _by_first_token(phrases: dict) -> dict:
    """{("zu", "teuer"): v} -> {"zu": ((("zu", "teuer"), v), ...)}, longest phrase first, so
    that matching costs one dict lookup per token instead of one per (token, length)."""
    index: dict = {}
    for key, value in phrases.items():
        index.setdefault(key[0], []).append((key, value))
    return {first: tuple(sorted(items, key=lambda kv: -len(kv[0])))
            for first, items in index.items()}


def cache_dir() -> Path | None:
    """Where parsed lexicons are cached: ``$CX360_CACHE_DIR`` (``off`` disables the cache),
    default ``$XDG_CACHE_HOME/cx360`` or ``~/.cache/cx360``."""
    value = os.environ.get("CX360_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "false", "0") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cx360"


def _disk_cached(name: str, key: str, build):
    """``build()``, pickled to the cache directory under ``name`` and ``key`` (a hash of
    everything the value is derived from) and read from there by the next process: parsing
    the lexicons costs ~1.3 s CPU and the language model ~0.8 s per process, reading their
    pickles ~0.4 s. An unreadable cache file is rebuilt; an unwritable directory only costs
    the speed-up."""
    folder = cache_dir()
    if folder is None:
        return build()
    path = folder / f"{name}-{key}.pickle"
    try:
        with path.open("rb") as src:
            return pickle.load(src)
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 - a truncated or foreign file: rebuild it
        pass
    value = build()
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out:
            pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)   # atomic: concurrent processes write the same content
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
    return value


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


@functools.lru_cache(maxsize=4)
def load_resources(data_dir: str | None = None) -> Resources:
    """Load and derive all lexicons once per process, from the on-disk cache
    (:func:`cache_dir`) when a previous process parsed the same data files with the same
    code, textblob and Python versions; scorers share the result."""
    data = Path(data_dir) if data_dir else DATA_DIR
    digest = hashlib.sha256()
    for name in DATA_FILES:
        digest.update((data / name).read_bytes())
    key = hashlib.sha256(digest.digest() + Path(__file__).read_bytes() + repr(
        (sys.version_info[:2], _package_version("textblob"))).encode()).hexdigest()[:24]
    return _disk_cached("lexicons", key, lambda: _parse_resources(data, digest))


def _parse_resources(data: Path, digest) -> Resources:
    words, de_phrases, de_neg, de_int, stop, de_vocab = _load_german(data)
    en_words, en_phrases, en_neg, en_int = _load_english(data)
    en_vocab = frozenset(en_words)
    phrases = _by_first_token({**en_phrases, **de_phrases})
    exact, prefix, suffix, aspect_phrases = _load_aspects(data)
    return Resources(
        words=words, en_words=en_words, phrases=phrases,
        negators=frozenset(de_neg | en_neg), intensifiers={**en_int, **de_int},
        stop=frozenset(stop), de_vocab=de_vocab - en_vocab - stop - EN_FUNCTION_WORDS,
        en_vocab=en_vocab - de_vocab - DE_FUNCTION_WORDS, emoji=_load_emoji(data),
        aspect_exact=exact,
        aspect_prefix=prefix, aspect_suffix=suffix,
        aspect_phrases=_by_first_token(aspect_phrases),
        version=f"{LEXICON_RELEASE}+{digest.hexdigest()[:10]}")


def label_for(polarity: float) -> str:
    """The label of a polarity under :data:`LABEL_THRESHOLDS`."""
    if polarity >= LABEL_THRESHOLDS["positive"]:
        return "positive"
    if polarity <= LABEL_THRESHOLDS["negative"]:
        return "negative"
    return "neutral"


# --- language identification ---------------------------------------------------------------------

_langid_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _langid():
    """py3langid restricted to German and English, loaded on first need (~0.8 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    def build():
        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        identifier.set_languages(["de", "en"])
        return identifier

    key = hashlib.sha256(repr((sys.version_info[:2], _package_version("py3langid"), MODEL_FILE,
                               ["de", "en"])).encode()).hexdigest()[:24]
    return _disk_cached("langid", key, build)


def _langid_classify(text: str) -> tuple[str, float]:
    with _langid_lock:        # the identifier keeps per-call state: not thread-safe
        language, confidence = _langid().classify(text)
    return language, float(confidence)


# --- the scorer ----------------------------------------------------------------------------------

class SentimentScorer:
    """Scores one text at a time (or a batch with :meth:`score_many`).

    ``english``: ``"textblob"`` (default) scores English exactly as textblob does (method
    ``textblob-en``). ``"cx"`` scores English with the cx360 lexical engine instead (method
    ``lexicon-en``): textblob's own word values, plus the cx360 English CX supplement (words
    like "delayed", "crashes", phrases like "never again", negated expectations like "doesn't
    work", neutral values for descriptive words like "new", "black"), with the engine's
    negation and intensifier rules. More accurate on customer feedback (docs/sentiment.md has
    the numbers), but no longer equal to ``TextBlob(text).sentiment.polarity``.
    ``text_cache_size``: a bounded LRU cache of whole results (0 disables it); repeated posts
    (reshares, "👍") are common in social streams.

    Lexicons are loaded once per process and shared; constructing more scorers is cheap. An
    instance keeps caches and is not thread-safe: use one per thread (one per DoFn instance).
    """

    def __init__(self, *, english: str = "textblob", text_cache_size: int = 4096,
                 data_dir: str | None = None):
        if english not in ENGLISH_MODES:
            raise ValueError(f"english must be one of {ENGLISH_MODES}, not {english!r}")
        from textblob.en import sentiment as textblob_sentiment

        self._textblob = textblob_sentiment
        self._res = load_resources(data_dir)
        self._english_cx = english == "cx"
        self.english = english
        self.lexicon_version = self._res.version
        self._cache_size = max(0, int(text_cache_size))
        self._cache: OrderedDict = OrderedDict()
        self._aspect_cache: dict = {}

    # public API ----------------------------------------------------------------------------
    def score(self, text: str | None, lang_hint: str | None = None) -> dict:
        """Score one text. ``lang_hint`` is the platform-declared language ("de", "en", ...),
        used only when the text itself gives no evidence either way."""
        if self._cache_size:
            key = (text, lang_hint)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return {**hit, "aspects": list(hit["aspects"])}
            result = self._score(text, lang_hint)
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return {**result, "aspects": list(result["aspects"])}
        return self._score(text, lang_hint)

    def score_many(self, texts: Iterable[str | None],
                   lang_hints: Iterable[str | None] | None = None) -> list[dict]:
        """Score a batch; duplicates inside the batch are scored once."""
        texts = list(texts)
        hints = list(lang_hints) if lang_hints is not None else [None] * len(texts)
        if len(hints) != len(texts):
            raise ValueError("lang_hints must have one entry per text")
        done: dict = {}
        out = []
        for text, hint in zip(texts, hints):
            key = (text, hint)
            result = done.get(key)
            if result is None:
                result = done[key] = self.score(text, hint)
                out.append(result)
            else:
                out.append({**result, "aspects": list(result["aspects"])})
        return out

    # internals ---------------------------------------------------------------------------------
    def _result(self, language, polarity, subjectivity, emoji_polarity, aspects, method,
                label_score=None):
        polarity = max(-1.0, min(1.0, polarity))
        label_score = polarity if label_score is None else max(-1.0, min(1.0, label_score))
        return {
            "language": language,
            "polarity": polarity,
            "subjectivity": max(0.0, min(1.0, subjectivity)),
            "label": label_for(label_score),
            "label_score": label_score,
            "emoji_polarity": emoji_polarity,
            "aspects": aspects,
            "method": method,
            "lexicon_version": self.lexicon_version,
        }

    def _score(self, text, lang_hint):
        if not text or not isinstance(text, str) or not text.strip():
            return self._result("und", 0.0, 0.0, 0.0, [], "none")
        emoji_scores = []
        emoji_found = _EMOJI_RE.findall(text)
        stripped = text
        if emoji_found:
            table = self._res.emoji
            for cluster in emoji_found:
                key = normalise_emoji(cluster)
                value = table.get(key)
                if value is None and "\u200d" in key:
                    value = table.get(key.split("\u200d", 1)[0])
                if value is not None and value[0] != 0.0:
                    emoji_scores.append(value)
            stripped = _EMOJI_RE.sub(" ", text)
        emoji_polarity = (sum(p for p, _ in emoji_scores) / len(emoji_scores)
                          if emoji_scores else 0.0)

        lexical = _MENTION_RE.sub(" ", _URL_RE.sub(" ", stripped))
        if not unicodedata.is_normalized("NFC", lexical):
            lexical = unicodedata.normalize("NFC", lexical)
        lowered = lexical.lower().replace("’", "'")
        tokens = _TOKEN_RE.findall(lowered)
        words = [t for t in tokens if t[0] not in _BOUNDARY_CHARS]
        aspects = self._aspects(words)

        if not words:
            if not emoji_found:
                return self._result("und", 0.0, 0.0, 0.0, aspects, "none")
            subjectivity = (sum(s for _, s in emoji_scores) / len(emoji_scores)
                            if emoji_scores else 0.0)
            return self._result("und", emoji_polarity, subjectivity, emoji_polarity, aspects,
                                "emoji")

        language, mixed = self._language(words, lowered, lang_hint)
        # English in the default mode: polarity and subjectivity are textblob's; the label is
        # decided on the cx360 engine's score of the same text (label_score), because textblob
        # has no opinion on complaint vocabulary (docs/sentiment.md, "Labels").
        cx_polarity = n_cx = None
        if language == "en" and not mixed and not self._english_cx:
            method = "textblob-en"
            score = self._textblob(stripped if emoji_found else text)
            text_polarity, text_subjectivity = score[0], score[1]
            n_text = len(score.assessments)
            assessed = self._assess(tokens, english_only=True)
            n_cx = len(assessed)
            cx_polarity = sum(p for p, _ in assessed) / n_cx if n_cx else 0.0
        else:
            if language == "en" and not mixed:
                method = "lexicon-en"
                assessed = self._assess(tokens, english_only=True)
            else:
                method = "mixed" if mixed else "lexicon-de"
                assessed = self._assess(tokens)
            n_text = len(assessed)
            text_polarity = sum(p for p, _ in assessed) / n_text if n_text else 0.0
            text_subjectivity = sum(s for _, s in assessed) / n_text if n_text else 0.0

        if not emoji_scores:
            return self._result(language, text_polarity, text_subjectivity, 0.0, aspects, method,
                                cx_polarity)
        n_emoji = len(emoji_scores)
        total = n_text + n_emoji
        polarity = (text_polarity * n_text + emoji_polarity * n_emoji) / total
        subjectivity = (text_subjectivity * n_text + sum(s for _, s in emoji_scores)) / total
        if cx_polarity is not None:
            cx_polarity = (cx_polarity * n_cx + emoji_polarity * n_emoji) / (n_cx + n_emoji)
        return self._result(language, polarity, subjectivity, emoji_polarity, aspects,
                            method + "+emoji", cx_polarity)

    def _language(self, words: list[str], lowered: str, lang_hint: str | None):
        """(language, mixed?) from function words; py3langid only when there are none."""
        # Distinct words: function words count 1, other German/English words 0.5.
        distinct = set(words)
        de = float(len(distinct & DE_FUNCTION_WORDS))
        en = float(len(distinct & EN_FUNCTION_WORDS))
        de_vocab, en_vocab = self._res.de_vocab, self._res.en_vocab
        for word in distinct - DE_FUNCTION_WORDS - EN_FUNCTION_WORDS:
            if (word in de_vocab or "ä" in word or "ö" in word or "ü" in word or "ß" in word
                    or len(word) > 5 and word.endswith(_GERMAN_SUFFIXES)):
                de += 0.5
            elif word in en_vocab:
                en += 0.5
        if de and en:
            # One stray word of the other language (a name with an umlaut, "for" in a German
            # sentence) does not make a text mixed when the other side clearly dominates.
            if en >= 1 and de >= 1 or min(de, en) >= max(de, en) / 3:
                return ("de" if de >= en else "en"), True
            return ("de" if de > en else "en"), False
        side = "de" if de else "en" if en else None
        if side and max(de, en) >= 2:
            return side, False
        if side is None:
            hint = (lang_hint or "").lower()[:2]
            if hint in ("de", "en"):
                return hint, False
            return _langid_classify(lowered)[0], False
        # One function word only ("Lieferung war mega fast, love it"): ask the character
        # n-gram model too; a confident disagreement means German/English code-switching.
        other, confidence = _langid_classify(lowered)
        if other != side and confidence >= LANGID_DISAGREE:
            return other, True
        return side, False

    def _aspects(self, words: list[str]) -> list[str]:
        res = self._res
        cache = self._aspect_cache
        found = set()
        for word in words:
            hit = cache.get(word)
            if hit is None:
                hit = set(res.aspect_exact.get(word, ()))
                for aspect, prefixes in res.aspect_prefix:
                    if word.startswith(prefixes):
                        hit.add(aspect)
                for aspect, suffixes in res.aspect_suffix:
                    if word.endswith(suffixes):
                        hit.add(aspect)
                hit = tuple(hit)
                if len(cache) > 200_000:
                    cache.clear()
                cache[word] = hit
            if hit:
                found.update(hit)
        phrases = res.aspect_phrases
        for i, word in enumerate(words):
            candidates = phrases.get(word)
            if candidates:
                for key, hit in candidates:
                    if tuple(words[i:i + len(key)]) == key:
                        found.update(hit)
        return sorted(found)

    def _lookup(self, token: str, english_only: bool):
        """_Entry for a word, or None. German first; English for words German does not know
        (except false friends); English only in the english="cx" path for English text."""
        res = self._res
        if not english_only:
            entry = res.words.get(token)
            if entry is not None:
                return entry
            if token in res.stop:
                return None
        return res.en_words.get(token)

    def _assess(self, tokens: list[str], english_only: bool = False
                ) -> list[tuple[float, float]]:
        """Lexical scoring: [(polarity, subjectivity), ...] per assessed word or phrase, with
        negation, intensifiers and phrases. German words first, English for words German does
        not know; with ``english_only`` (the ``english="cx"`` mode for English text) only the
        English lexicon and English phrases."""
        res = self._res
        out: list[list] = []
        neg = None          # (position, strong, reach, may look back) of a pending negator
        mod = None          # [position, multiplier, own polarity] of a pending intensifier
        targets = []        # [(position, out index or None, entry, negated)] in this clause
        tokens = [t for t in tokens if t not in _NUMBER_WORDS]
        n = len(tokens)

        def negate(entry, value, strong):
            if entry.neg is not None:
                return entry.neg
            return value * (STRONG_NEGATION_FACTOR if strong else NEGATION_FACTOR)

        def lookback(neg_pos, strong, _reach, may_look_back):
            if not may_look_back:
                return
            for k in range(len(targets) - 1, -1, -1):
                pos, idx, entry, negated = targets[k]
                if neg_pos - pos > NEGATION_LOOKBACK:
                    return
                if not negated:
                    value = negate(entry, entry.polarity, strong)
                    subj = entry.subjectivity or 0.5
                    if idx is None:
                        out.append([value, subj])
                    else:
                        out[idx] = [value, subj]
                    targets[k] = (pos, idx, entry, True)
                    return

        def release_mod():
            if mod is not None and mod[2]:
                out.append([max(-1.0, min(1.0, mod[2])), _subjectivity(mod[2])])

        i = 0
        while i < n:
            token = tokens[i]
            if token[0] in _BOUNDARY_CHARS or token in _BOUNDARY_WORDS:
                if neg is not None:
                    lookback(*neg)
                release_mod()
                neg = mod = None
                targets = []
                i += 1
                continue
            entry, length = None, 1
            candidates = res.phrases.get(token)
            if candidates:
                for key, value in candidates:
                    size = len(key)
                    if tuple(tokens[i:i + size]) == key and (value.english or not english_only):
                        entry, length = value, size
                        break
            if entry is None:
                if token in res.negators or token.endswith("n't"):
                    if neg is None:
                        neg = (i, mod is not None, SHORT_NEGATORS.get(token, NEGATION_LOOKAHEAD),
                               token in LOOKBACK_NEGATORS)
                    mod = None
                    i += 1
                    continue
                intens = res.intensifiers.get(token)
                if intens is not None:
                    if mod is not None:
                        mod = [i, mod[1] * intens[0], intens[1] * mod[1] or mod[2]]
                    else:
                        mod = [i, intens[0], intens[1]]
                    i += 1
                    continue
                entry = self._lookup(token, english_only)
                if english_only and entry is not None and not entry.english:
                    entry = None
            if entry is not None and (entry.polarity != 0.0 or entry.neg is not None):
                value, subj = entry.polarity, entry.subjectivity
                negated = neg is not None and i - neg[0] <= neg[2]
                if negated:
                    value = negate(entry, value, neg[1])
                    subj = subj or 0.5
                    neg = None
                    if mod is not None and i - mod[0] <= INTENSIFIER_REACH:
                        mod = None      # "nicht sehr gut" = "nicht gut"
                elif mod is not None and i - mod[0] <= INTENSIFIER_REACH and value:
                    value = max(-1.0, min(1.0, value * mod[1]))
                    subj = min(1.0, subj * mod[1])
                    mod = None
                if value:
                    targets.append((i, len(out), entry, negated))
                    out.append([value, subj])
                else:
                    targets.append((i, None, entry, negated))
            else:
                if mod is not None and i - mod[0] >= INTENSIFIER_REACH:
                    release_mod()
                    mod = None
                if neg is not None and i - neg[0] >= neg[2]:
                    lookback(*neg)
                    neg = None
            i += length
        if neg is not None:
            lookback(*neg)
        release_mod()
        return [(p, s) for p, s in out]


# --- Beam ----------------------------------------------------------------------------------------

def _build_beam_classes() -> dict:
    import apache_beam as beam
    from apache_beam.metrics import Metrics

    class ScoreSentimentFn(beam.DoFn):
        """Adds the score of ``element[text_field]`` as ``element[output_field]`` (a copy of the
        element; the input is not mutated). A plain ``str`` element becomes ``(text, score)``.
        The :class:`SentimentScorer` is created in ``setup()`` and never pickled."""

        def __init__(self, text_field="text", output_field="sentiment", lang_field="lang",
                     scorer_options=None):
            self.text_field = text_field
            self.output_field = output_field
            self.lang_field = lang_field
            self.scorer_options = dict(scorer_options or {})
            self._scorer = None
            self.scored = Metrics.counter(self.__class__, "num_scored")
            self.not_text = Metrics.counter(self.__class__, "num_not_text")

        def __getstate__(self):
            state = dict(self.__dict__)
            state["_scorer"] = None
            return state

        def setup(self):
            self._scorer = SentimentScorer(**self.scorer_options)

        def process(self, element):
            self.scored.inc()
            if isinstance(element, str):
                yield element, self._scorer.score(element)
                return
            text = element.get(self.text_field)
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            elif text is not None and not isinstance(text, str):
                self.not_text.inc()
                text = None
            hint = element.get(self.lang_field) if self.lang_field else None
            out = dict(element)
            out[self.output_field] = self._scorer.score(
                text, hint if isinstance(hint, str) else None)
            yield out

    class ScoreSentiment(beam.PTransform):
        """Sentiment for each element of a PCollection.

        Elements are dicts (events): the output is a copy of each with ``output_field`` set to
        the score dict of ``SentimentScorer.score(element[text_field],
        element[lang_field])``; a missing or non-text field scores as empty (language
        ``und``, neutral). Plain ``str`` elements are accepted too and become
        ``(text, score)`` tuples. ``scorer_options`` go to :class:`SentimentScorer`
        (``english="cx"``, ``text_cache_size``). Scoring cannot fail on any input,
        so there is no dead-letter output.
        """

        def __init__(self, text_field: str = "text", output_field: str = "sentiment",
                     lang_field: str | None = "lang", label: str | None = None,
                     **scorer_options):
            super().__init__(label)
            self.text_field = text_field
            self.output_field = output_field
            self.lang_field = lang_field
            self.scorer_options = scorer_options

        def expand(self, pcoll):
            return pcoll | "ScoreSentimentFn" >> beam.ParDo(ScoreSentimentFn(
                self.text_field, self.output_field, self.lang_field, self.scorer_options))

    classes = {"ScoreSentimentFn": ScoreSentimentFn, "ScoreSentiment": ScoreSentiment}
    for name, cls in classes.items():
        cls.__module__ = __name__
        cls.__qualname__ = name
    return classes


def __getattr__(name: str):
    if name in ("ScoreSentiment", "ScoreSentimentFn"):
        classes = _build_beam_classes()
        globals().update(classes)
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
