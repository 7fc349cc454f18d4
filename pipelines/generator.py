"""A seeded, realistic stream of social, web and survey events, with the truth behind it.

Pure and deterministic: no Kafka, no clock, no global random state. ``generate(config)``
yields :class:`GeneratedRecord` in *arrival* order (the order a producer sends them), each
with its Kafka key, its value bytes (Confluent/Avro wire format, a JSON object, or deliberately
malformed bytes), the event dict for valid events and a ``truth`` dict that says who really
did it and what a correct pipeline must do with the record. The same config (and the same
schema ids) gives byte-identical output.

What is in the stream (docs/generator.md has the details):

* a population of customers, each with an account id, e-mail, phone, 1-3 devices (cookies)
  and maybe social handles on 1-2 platforms; some devices are shared by two customers; plus
  public social users and anonymous web visitors who are not customers;
* social threads in German and English (short, emoji-heavy): posts and mentions about own
  brands and their competitors, questions and complaints aimed at a brand, praise, brand
  replies after a log-normal delay (median ~45 min, about a fifth of aimed posts never
  answered), comments, likes and shares referencing the post, reach and followers; brands'
  own posts with their engagement;
* web-shop sessions: session start (with referrer and UTM tags; some from social
  referrals), page and product views, logins, carts, orders in EUR, account links that tie a
  social handle to a shop account;
* NPS / CSAT / CES survey answers with free text, e-mail and/or account id, sometimes a phone;
* disorder a real stream has: late events (hours behind), out-of-order arrival jitter,
  exact duplicate re-sends, JSON-encoded events, and malformed records of every dead-letter
  reason (``MALFORMED_REASONS``).

Kafka keys: social = the thread's root post id (a reply lands on its post's partition), web =
session id, survey = account id, else e-mail.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import math
import random
import struct
from bisect import bisect_right
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Iterator, NamedTuple

from cx360.schemas.codec import AvroCodec, strip_logical_types
from cx360.schemas.registry import SUBJECT_BY_ROLE, FileSchemaRegistry

SECOND_MS = 1000
#: Share of logins that tick "stay logged in": later visits from that device are logged in
#: from their first event (how most shops and apps keep returning customers identified).
REMEMBER_LOGIN = 0.6
#: Chance that a logged-in visit of a customer with social accounts connects them in the shop.
LINK_SOCIAL = 0.5
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Every dead-letter reason the malformed records exercise (the decoder's names).
MALFORMED_REASONS = ("empty_value", "undecodable", "unknown_schema_id", "incompatible_schema",
                     "invalid_json", "schema_violation", "missing_field", "invalid_value",
                     "future_timestamp")
#: The schema id used for ``unknown_schema_id`` records: never registered.
UNKNOWN_SCHEMA_ID = 9999
ROLES = ("social", "web", "survey")


# -- configuration ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Brand:
    """An own brand (web shop and surveys) with its industry and competitors (social only).

    ``industry`` picks product catalogue and texts: telco, coffee or cosmetics; anything
    else gets generic retail texts."""

    name: str
    industry: str
    competitors: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return _slug(self.name)


#: Invented brands (any likeness to a real company is unintended).
DEFAULT_BRANDS = (
    Brand("Telvana", "telco", ("Funkrix", "Netzora")),
    Brand("Kaffino", "coffee", ("Bohnaro",)),
    Brand("Veluna", "cosmetics", ("Dermalia", "Glanzwerk")),
)
DEFAULT_START_MS = 1_793_577_600_000  # 2026-11-02T00:00:00Z


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Fractions are of all records (``malformed``, ``duplicates``) or of
    valid events (``late``, ``json``)."""

    seed: int = 42
    events: int = 50_000
    start_ms: int = DEFAULT_START_MS
    duration_s: int = 48 * 3600
    brands: tuple[Brand, ...] = DEFAULT_BRANDS
    malformed: float = 0.01
    late: float = 0.02
    duplicates: float = 0.01
    json: float = 0.02
    #: Mean delay (s, exponential) between an on-time event and its arrival: out-of-order
    #: arrival across threads and sessions.
    jitter_s: float = 20.0
    #: A late event arrives this many seconds after it happened (uniform).
    late_min_s: float = 3600.0
    late_max_s: float = 6 * 3600.0
    #: "Now" for future-dated malformed records (days after max(now_ms, end)); default: end.
    now_ms: int | None = None
    #: Size of the customer population; default events // 40 (at least 20).
    customers: int | None = None

    def __post_init__(self):
        for name in ("malformed", "late", "duplicates", "json"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")
        if self.malformed + self.duplicates > 1.0:
            raise ValueError("malformed + duplicates must not exceed 1")
        if self.events < 0:
            raise ValueError("events must not be negative")
        if self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.jitter_s < 0 or not 0 <= self.late_min_s <= self.late_max_s:
            raise ValueError("jitter and late delays must be non-negative, min <= max")
        if not self.brands:
            raise ValueError("at least one brand is needed")
        if self.customers is not None and self.customers < 1:
            raise ValueError("customers must be at least 1")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_s * 1000

    @property
    def competitors(self) -> dict[str, tuple[str, ...]]:
        return {b.name: b.competitors for b in self.brands}


class GeneratedRecord(NamedTuple):
    """One record to produce: to the ``role``'s topic, with this key and value. ``truth``:
    seq, role, kind (valid | duplicate | malformed), event_id, event_type, event_time,
    arrival_ms, late, customer_id, person_id, brand, encoding, sentiment, aspect,
    expected_reason (malformed), malformed (variant), duplicate_of (duplicates)."""

    role: str                   # social | web | survey: the topic it goes to
    key: bytes
    value: bytes | None
    event: dict | None          # the event (valid records and duplicates), else None
    truth: dict


# -- vocabulary --------------------------------------------------------------------------------
_FIRST_DE = ("Anna", "Lena", "Lea", "Marie", "Sophie", "Laura", "Julia", "Katrin", "Sabine",
             "Jana", "Mia", "Emma", "Hannah", "Lukas", "Jonas", "Leon", "Felix", "Paul", "Tim",
             "Jan", "Max", "Tobias", "Stefan", "Michael", "Jürgen", "Uwe", "Ben", "Niklas",
             "Özlem", "Mehmet", "Elif", "Björn")
_LAST_DE = ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
            "Schulz", "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
            "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange",
            "Werner", "Krause", "Lehmann", "Köhler", "Yilmaz", "Kaya", "Nowak")
_FIRST_EN = ("Emily", "Olivia", "Amelia", "Grace", "Chloe", "Sarah", "Jessica", "Lucy",
             "Oliver", "Jack", "Harry", "George", "Charlie", "Thomas", "James", "Daniel",
             "Liam", "Noah", "Ethan", "Ryan", "Priya", "Aisha")
_LAST_EN = ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies",
            "Evans", "Thomas", "Roberts", "Walker", "Wright", "Hughes", "Green", "Hall",
            "Wood", "Clarke", "Patel", "Khan")
_MAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com",
                 "post.example.net")
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe",
                           "Ü": "Ue", "é": "e", "ç": "c"})

# Platform, weight, has likes/shares, reports reach.
_PLATFORMS = (("instagram", 34, True, True), ("x", 20, True, True), ("facebook", 14, True, True),
              ("tiktok", 15, True, True), ("youtube", 4, True, True),
              ("trustpilot", 7, False, False), ("forum", 6, False, False))
_PLATFORM_INFO = {p: (likes, reach) for p, _, likes, reach in _PLATFORMS}
_PLATFORM_URL = {"instagram": "https://instagram.com/p/", "x": "https://x.com/i/status/",
                 "facebook": "https://facebook.com/posts/", "tiktok": "https://tiktok.com/v/",
                 "youtube": "https://youtube.com/watch?v=",
                 "trustpilot": "https://trustpilot.com/reviews/",
                 "forum": "https://forum.example.net/t/"}
_REFERRER = {"instagram": "instagram.com", "x": "t.co", "facebook": "facebook.com",
             "tiktok": "tiktok.com", "youtube": "youtube.com", "trustpilot": "trustpilot.com",
             "forum": "forum.example.net"}
_SOCIAL_REFERRAL_PLATFORMS = ("instagram", "instagram", "facebook", "tiktok", "x", "youtube")

_EMOJI = {
    "pos": ("😍", "🥰", "❤️", "🔥", "👏", "🙌", "😊", "✨", "💯", "🤩", "👍", "😎", "💚", "🎉"),
    "neg": ("😡", "🤬", "😤", "🙄", "😞", "😢", "👎", "💔", "😩", "🤦", "😠", "🤯"),
    "neu": ("🤔", "👀", "❓", "🙏", "😅", "🤷"),
}
_INDUSTRY_EMOJI = {"telco": ("📱", "📶", "📡"), "coffee": ("☕", "☕️", "🫘"),
                   "cosmetics": ("🧴", "💄", "🌸"), "retail": ("🛍️", "📦")}

_CATALOGUE = {
    "telco": (("5g-xl", "5G XL Tarif", 39.99), ("5g-m", "5G M Tarif", 24.99),
              ("prepaid", "Prepaid Start", 9.99), ("router", "WLAN-Router", 129.0),
              ("phone-a5", "Smartphone A5", 349.0), ("esim", "eSIM Upgrade", 4.99)),
    "coffee": (("espresso", "Espresso Forte 1kg", 18.9), ("crema", "Caffè Crema 500g", 9.9),
               ("lungo-caps", "Kapseln Lungo 30x", 8.49), ("oat-latte", "Hafer Latte Mix", 6.99),
               ("grinder", "Kaffeemühle Pro", 89.0), ("decaf", "Entkoffeiniert 500g", 10.5)),
    "cosmetics": (("cream", "Feuchtigkeitscreme 50ml", 14.95), ("serum", "Vitamin C Serum", 24.9),
                  ("shampoo", "Shampoo Sensitiv", 5.95), ("lip", "Lippenbalsam", 3.49),
                  ("spf50", "Sonnenfluid SPF50", 12.99), ("mask", "Tuchmaske 5er", 9.95)),
    "retail": (("basic", "Basic", 19.99), ("plus", "Plus", 39.99), ("pro", "Pro", 79.0)),
}
# German with the article, in the nominative (the templates are written for it).
_SHORT_PRODUCT = {
    ("de", "telco"): ("der 5G Tarif", "der Router", "das Prepaid-Paket", "die eSIM"),
    ("en", "telco"): ("5G plan", "router", "prepaid plan", "eSIM"),
    ("de", "coffee"): ("der Espresso", "die Crema", "der Hafer Latte", "der Lungo"),
    ("en", "coffee"): ("espresso", "crema", "oat latte", "lungo"),
    ("de", "cosmetics"): ("die Creme", "das Serum", "das Shampoo", "das Sonnenfluid"),
    ("en", "cosmetics"): ("cream", "serum", "shampoo", "sun fluid"),
    ("de", "retail"): ("das Produkt", "die neue Kollektion"),
    ("en", "retail"): ("product", "new collection"),
}
_HASHTAGS = {"telco": ("5G", "handytarif", "mobilfunk", "netz", "smartphone"),
             "coffee": ("kaffee", "coffeelover", "espresso", "coffeetime", "barista"),
             "cosmetics": ("skincare", "hautpflege", "beauty", "selfcare", "glow"),
             "retail": ("shopping", "haul")}
_CAMPAIGNS = {"telco": ("winter_deal", "5g_launch"), "coffee": ("herbst_roestung", "oat_latte"),
              "cosmetics": ("glow_week", "sensitive_skin"), "retail": ("sale", "new_in")}
_ASPECTS = ("delivery", "price", "service", "app", "product")

# Post texts: {b} the brand (@handle when aimed, else its name), {c} a competitor,
# {p} a product, {e} an emoji cluster that matches the sentiment.
_T = {
    ("de", "complaint", "delivery"): (
        "{b} wo bleibt meine Bestellung?? Seit einer Woche nix {e}",
        "Paket schon wieder verspätet {e} {b}", "Sendungsverfolgung steht seit Tagen {e} {b}",
        "Lieferung kaputt angekommen {e} {b} echt jetzt?", "{b} Paket nie angekommen {e}"),
    ("en", "complaint", "delivery"): (
        "{b} where is my order?? a week and nothing {e}", "package late AGAIN {e} {b}",
        "tracking hasn't moved in days {e} {b}", "arrived damaged {e} {b} seriously?"),
    ("de", "complaint", "price"): (
        "{b} schon wieder teurer?! {e}", "Preiserhöhung ohne Ankündigung {e} {b}",
        "Viel zu teuer für das, was man bekommt {e} {b}"),
    ("en", "complaint", "price"): (
        "{b} price went up again?! {e}", "way too expensive for what you get {e} {b}",
        "surprise price hike {e} {b}"),
    ("de", "complaint", "service"): (
        "Seit 40 Minuten in der Warteschleife {e} {b}", "{b} keiner antwortet auf meine Mails {e}",
        "Kundenservice ist eine Katastrophe {e} {b}", "{b} dritte Beschwerde, null Reaktion {e}"),
    ("en", "complaint", "service"): (
        "40 minutes on hold {e} {b}", "{b} nobody answers my emails {e}",
        "customer service is a joke {e} {b}"),
    ("de", "complaint", "app"): (
        "App stürzt ständig ab {e} {b}", "{b} Login in der App geht nicht {e}",
        "Update gemacht und jetzt geht nix mehr {e} {b}"),
    ("en", "complaint", "app"): (
        "app keeps crashing {e} {b}", "{b} can't log in to the app {e}",
        "updated the app and now nothing works {e} {b}"),
    ("de", "question", "delivery"): (
        "{b} wann kommt meine Bestellung? {e}", "Liefert ihr auch nach Österreich? {b}",
        "{b} kann ich die Lieferadresse noch ändern? {e}"),
    ("en", "question", "delivery"): (
        "{b} when will my order arrive? {e}", "do you ship to Austria? {b}",
        "{b} can I still change my delivery address? {e}"),
    ("de", "question", "price"): (
        "{b} ist {p} bald im Angebot? {e}", "Gilt der Rabattcode auch online? {b}"),
    ("en", "question", "price"): (
        "{b} will the {p} be on sale soon? {e}", "does the discount code work online? {b}"),
    ("de", "question", "service"): (
        "{b} wie erreiche ich euren Kundenservice? {e}", "Wie lange dauert eine Rücksendung? {b}"),
    ("en", "question", "service"): (
        "{b} how do I reach customer service? {e}", "how long does a return take? {b}"),
    ("de", "question", "app"): (
        "{b} wo finde ich meine Rechnung in der App? {e}", "Gibt es die App auch fürs Tablet? {b}"),
    ("en", "question", "app"): (
        "{b} where do I find my invoice in the app? {e}",
        "is there a tablet version of the app? {b}"),
    ("de", "praise", "delivery"): (
        "Gestern bestellt, heute schon da {e} {b}", "Blitzlieferung {e} danke {b}"),
    ("en", "praise", "delivery"): (
        "ordered yesterday, arrived today {e} {b}", "super fast delivery {e} thanks {b}"),
    ("de", "praise", "price"): ("Für den Preis echt top {e} {b}",
                                "Super Angebot gerade bei {b} {e}"),
    ("en", "praise", "price"): ("great value for the price {e} {b}",
                                "amazing deal at {b} right now {e}"),
    ("de", "praise", "service"): (
        "Mega freundlicher Support, Problem in 5 Minuten gelöst {e} {b}",
        "Danke an das Team von {b} {e}"),
    ("en", "praise", "service"): (
        "super friendly support, fixed in 5 minutes {e} {b}", "shoutout to the {b} team {e}"),
    ("de", "praise", "app"): ("Die neue App ist richtig gut {e} {b}", "{b} App-Update 👌 {e}"),
    ("en", "praise", "app"): ("the new app is really good {e} {b}", "{b} app update is 👌 {e}"),
    # The product aspect speaks the industry's language.
    ("de", "complaint", "product", "telco"): (
        "Kein Netz. Schon wieder. {e} {b}", "{b} Internet seit heute Morgen weg {e}",
        "5G? Eher 3G {e} {b}"),
    ("en", "complaint", "product", "telco"): (
        "no signal. again. {e} {b}", "{b} internet down since this morning {e}",
        "5G? more like 3G {e} {b}"),
    ("de", "complaint", "product", "coffee"): (
        "Boah, {p} schmeckt total verbrannt {e} {b}",
        "{b} Kapseln passen nicht in die Maschine {e}",
        "Bohnen alt und ohne Aroma {e} {b}"),
    ("en", "complaint", "product", "coffee"): (
        "the {p} tastes burnt {e} {b}", "{b} capsules don't fit my machine {e}",
        "stale beans, zero aroma {e} {b}"),
    ("de", "complaint", "product", "cosmetics"): (
        "Hilfe, {p} macht mir Ausschlag {e} {b}", "{b} neue Rezeptur ist viel schlechter {e}",
        "Pumpspender nach 2 Tagen kaputt {e} {b}"),
    ("en", "complaint", "product", "cosmetics"): (
        "the {p} gave me a rash {e} {b}", "{b} the new formula is so much worse {e}",
        "pump broke after 2 days {e} {b}"),
    ("de", "question", "product", "telco"): (
        "{b} habt ihr 5G schon in Leipzig? {e}", "Lohnt sich {p}? {b}"),
    ("en", "question", "product", "telco"): (
        "{b} is 5G available in Leeds yet? {e}", "is the {p} worth it? {b}"),
    ("de", "question", "product", "coffee"): (
        "{b} ist {p} auch als ganze Bohne erhältlich? {e}",
        "Welcher Kaffee ist am mildesten? {b}"),
    ("en", "question", "product", "coffee"): (
        "{b} is the {p} available as whole beans? {e}", "which coffee is the mildest? {b}"),
    ("de", "question", "product", "cosmetics"): (
        "{b} ist {p} auch für empfindliche Haut? {e}", "Ist das vegan? {b}"),
    ("en", "question", "product", "cosmetics"): (
        "{b} is the {p} ok for sensitive skin? {e}", "is it vegan? {b}"),
    ("de", "praise", "product", "telco"): ("Endlich schnelles Netz {e} {b}",
                                           "Wow, {p} läuft wie verrückt {e} {b}"),
    ("en", "praise", "product", "telco"): ("finally fast internet {e} {b}",
                                           "wow, the {p} is flying {e} {b}"),
    ("de", "praise", "product", "coffee"): ("Bester Kaffee ever {e} {b}",
                                            "Morgenritual: {p} von {b} {e}"),
    ("en", "praise", "product", "coffee"): ("best coffee ever {e} {b}",
                                            "morning ritual: the {p} by {b} {e}"),
    ("de", "praise", "product", "cosmetics"): (
        "Ich liebe {p} {e} {b}", "Glow ohne Ende {e} {b}"),
    ("en", "praise", "product", "cosmetics"): (
        "my skin loves the {p} {e} {b}", "glowing all day {e} {b}"),
    ("de", "complaint", "product", "retail"): ("{b} Qualität lässt echt nach {e}",),
    ("en", "complaint", "product", "retail"): ("{b} quality has really gone down {e}",),
    ("de", "question", "product", "retail"): ("{b} gibt es das auch in Blau? {e}",),
    ("en", "question", "product", "retail"): ("{b} does it come in blue? {e}",),
    ("de", "praise", "product", "retail"): ("Liebe es {e} {b}",),
    ("en", "praise", "product", "retail"): ("love it {e} {b}",),
    ("de", "comparison"): ("Von {c} zu {b} gewechselt und nie zurück {e}",
                           "{c} ist günstiger, aber {b} ist einfach besser {e}",
                           "{b} > {c} {e}"),
    ("en", "comparison"): ("switched from {c} to {b} and never looked back {e}",
                           "{c} is cheaper but {b} is just better {e}", "{b} > {c} {e}"),
    ("de", "comparison_q"): ("{b} oder {c}? {e}", "Was ist besser, {b} oder {c}? {e}"),
    ("en", "comparison_q"): ("{b} or {c}? {e}", "which is better, {b} or {c}? {e}"),
    ("de", "ugc"): ("{e}", "{e} {b}", "{b} {e}", "Sonntag mit {b} {e}", "{e}{e}"),
    ("en", "ugc"): ("{e}", "{e} {b}", "{b} {e}", "sunday vibes with {b} {e}", "{e}{e}"),
}
_COMMENTS = {
    ("de", "pos"): ("Sieht mega aus 😍", "Will ich auch haben!! 🙌", "Bester Tipp 👍", "😍😍",
                    "Stimmt total ❤️", "🔥🔥🔥"),
    ("de", "neg"): ("Bei mir genau dasselbe 😤", "Same hier 🙄", "Echt ärgerlich 😩",
                    "Kann ich bestätigen 👎", "😡😡", "Deshalb hab ich gekündigt"),
    ("de", "neu"): ("Wo gibt's das?", "Gute Frage 🤔", "Würde mich auch interessieren 👀", "+1",
                    "👀"),
    ("en", "pos"): ("looks amazing 😍", "need this!! 🙌", "great tip 👍", "😍😍", "so true ❤️",
                    "🔥🔥🔥"),
    ("en", "neg"): ("same here 😤", "happened to me too 🙄", "so annoying 😩", "can confirm 👎",
                    "😡😡", "that's why I cancelled"),
    ("en", "neu"): ("where can I get this?", "good question 🤔", "also wondering 👀", "+1", "👀"),
}
# A brand's own content ({p} in German is nominative, with its article).
_BRAND_POSTS = {
    "de": ("Neu bei uns: {p} {e} Jetzt entdecken!", "Was ist euer Favorit? {e}",
           "Gewinnspiel! {e} Kommentiert und gewinnt: {p}", "Unser Tipp fürs Wochenende: {p} {e}",
           "Danke für eure Liebe {e}"),
    "en": ("New in: {p} {e} discover it now!", "what's your favourite? {e}",
           "giveaway! {e} comment to win: {p}", "our weekend tip: {p} {e}",
           "thank you for all the love {e}"),
}
_COMMENT_QUESTIONS = {
    "de": ("{b} wann gibt es das wieder? 🤔", "{b} gibt's das auch im Laden?",
           "{b} liefert ihr auch nach Wien? 👀", "{b} was kostet das? 🙏"),
    "en": ("{b} when is this back in stock? 🤔", "{b} is it in stores too?",
           "{b} do you ship to Vienna? 👀", "{b} how much is it? 🙏"),
}
_FOLLOW_UPS = {"de": ("Danke, hat geklappt 👍", "Ok, DM ist raus 🙏",
                      "Danke für die schnelle Antwort 😊"),
               "en": ("thanks, sorted 👍", "ok, sent you a DM 🙏", "thanks for the quick reply 😊")}
_REPLIES = {
    ("de", "complaint"): (
        "Hallo {n}, das tut uns sehr leid! 🙏 Schreib uns bitte per DM deine Bestellnummer, "
        "wir kümmern uns sofort.",
        "Oh nein, {n} 😟 Das sollte nicht passieren. Wir melden uns per DM!",
        "Hi {n}, danke für den Hinweis. Unser Team schaut sich das direkt an 🙏"),
    ("en", "complaint"): (
        "Hi {n}, we're really sorry about this! 🙏 Please DM us your order number and we'll "
        "sort it out.",
        "Oh no, {n} 😟 That shouldn't happen. We'll reach out via DM!",
        "Hi {n}, thanks for letting us know. Our team is looking into it 🙏"),
    ("de", "question"): (
        "Hallo {n}! Gute Frage 😊 Alle Infos findest du in unserem Hilfe-Center, oder schreib "
        "uns per DM.", "Hi {n}, klar! Schick uns kurz eine DM, dann helfen wir dir weiter 👍"),
    ("en", "question"): (
        "Hi {n}! Great question 😊 You'll find everything in our help centre, or just DM us.",
        "Hi {n}, sure thing! Send us a quick DM and we'll help you out 👍"),
    ("de", "praise"): ("Danke dir, {n}! 😍 Das freut uns riesig!",
                       "Wow, danke {n} ❤️ Genau dafür machen wir das!"),
    ("en", "praise"): ("Thank you, {n}! 😍 This made our day!",
                       "Wow, thanks {n} ❤️ That's exactly why we do it!"),
}
_SURVEY_COMMENTS = {
    ("de", "pos"): ("Schnelle Lieferung, alles bestens 👍", "Sehr zufrieden, gerne wieder!",
                    "Super freundlicher Service 😊", "Top Qualität, klare Empfehlung",
                    "Alles easy, danke!"),
    ("de", "neu"): ("Ganz ok, Lieferung hätte schneller sein können",
                    "Produkt gut, Preis etwas hoch", "Passt soweit",
                    "Hat gedauert, aber am Ende geklappt"),
    ("de", "neg"): ("Lieferung viel zu spät 😡", "Niemand erreichbar, sehr enttäuscht",
                    "Rücksendung total kompliziert", "App stürzt beim Bezahlen ab 👎",
                    "Nie wieder."),
    ("en", "pos"): ("fast delivery, all good 👍", "very happy, will order again!",
                    "super friendly service 😊", "top quality, would recommend", "easy, thanks!"),
    ("en", "neu"): ("ok overall, delivery could be faster", "good product, a bit pricey",
                    "fine I guess", "took a while but got sorted in the end"),
    ("en", "neg"): ("delivery way too late 😡", "couldn't reach anyone, very disappointed",
                    "returns are a nightmare", "app crashes at checkout 👎", "never again."),
}
_SURVEY_SCORES = {  # weights of each score on the scale
    "NPS": (range(0, 11), (3, 1, 1, 2, 2, 4, 6, 10, 16, 25, 30)),
    "CSAT": (range(1, 6), (5, 7, 13, 35, 40)),
    "CES": (range(1, 8), (3, 4, 8, 10, 20, 30, 25)),
}
_TOUCHPOINTS_AFTER_ORDER = ("purchase", "delivery")
_TOUCHPOINTS_STANDALONE = ("support", "returns", "app", "store", "delivery", "purchase")


def _choice(rng: random.Random, seq):
    """``rng.choice(seq)`` in a quarter of the time (one float draw, no rejection loop)."""
    return seq[int(rng.random() * len(seq))]


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower().translate(_TRANSLIT) if ch.isalnum())


def _hour_weight(utc_hour: int) -> float:
    """Daily rhythm of activity (German local time, about UTC+1): quiet at night, a lunch
    bump, the evening peak."""
    local = (utc_hour + 1) % 24
    return (0.12, 0.07, 0.04, 0.03, 0.04, 0.1, 0.3, 0.55, 0.75, 0.85, 0.9, 0.95, 1.05, 1.0,
            0.9, 0.9, 0.95, 1.05, 1.2, 1.4, 1.5, 1.35, 0.9, 0.4)[local]


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-02T09:15:00.123Z."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


# -- population --------------------------------------------------------------------------------
class _Person:
    """A customer (``cid`` set), a public social user or an anonymous web visitor."""

    __slots__ = ("cid", "pid", "first", "last", "lang", "account_id", "email", "phone",
                 "cookies", "handles", "platforms", "brands", "linked", "orders", "followers",
                 "remembered")

    def __init__(self, pid: str, cid: str | None, first: str, last: str, lang: str):
        self.pid, self.cid, self.first, self.last, self.lang = pid, cid, first, last, lang
        self.account_id = self.email = self.phone = None
        self.cookies: list[tuple[str, str]] = []     # (cookie id, device)
        self.handles: dict[str, str] = {}           # platform -> handle
        self.platforms: tuple[str, ...] = ()
        self.brands: list[Brand] = []
        self.linked: list[str] = []                 # platforms linked to the shop account
        self.orders: list[str] = []
        self.followers = 0
        self.remembered: set[str] = set()           # cookies with a persistent login


class _BrandInfo:
    __slots__ = ("name", "slug", "industry", "own", "competitors", "products", "followers",
                 "reply_rate")

    def __init__(self, name, industry, own, competitors, followers, reply_rate):
        self.name, self.slug, self.industry = name, _slug(name), industry
        self.own, self.competitors = own, competitors
        self.products = tuple((f"{self.slug}-{code}", title, price)
                              for code, title, price in _CATALOGUE.get(industry,
                                                                       _CATALOGUE["retail"]))
        self.followers, self.reply_rate = followers, reply_rate


class _Chooser:
    """Weighted choice by one uniform draw and a bisect (faster than random.choices)."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, items, weights):
        self.items = list(items)
        self.cum, total = [], 0.0
        for w in weights:
            total += w
            self.cum.append(total)
        self.total = total

    def pick(self, rng: random.Random):
        i = bisect_right(self.cum, rng.random() * self.total)
        return self.items[i if i < len(self.items) else -1]


class _Ids:
    """Random ids from the seeded generator: unique per run, different between seeds (so two
    generated runs into the same topics are not mistaken for duplicates of each other)."""

    def __init__(self, rng: random.Random):
        self.bits = rng.getrandbits
        self._issued: set[str] = set()

    def hex(self, prefix: str, digits: int = 16) -> str:
        """A random hex id (64 bits by default: collisions are negligible)."""
        return f"{prefix}{self.bits(digits * 4):0{digits}x}"

    def digits(self, prefix: str, n: int) -> str:
        """A random decimal id, never issued twice in this run (account and order ids are
        short enough for chance collisions)."""
        while True:
            value = f"{prefix}{self.bits(64) % 10 ** n:0{n}d}"
            if value not in self._issued:
                self._issued.add(value)
                return value


# -- the world and its activities -----------------------------------------------------------
class _World:
    """Population, brands and the builders of every activity (a thread, a session, ...)."""

    def __init__(self, config: GeneratorConfig, rng: random.Random, templates: dict):
        self.config, self.rng, self.tpl = config, rng, templates
        self.end = config.end_ms
        self.ids = _Ids(rng)
        self._emails: set[str] = set()
        self._handles: set[str] = set()
        # Brands: own ones and their competitors.
        infos, weights = [], []
        for brand in config.brands:
            infos.append(_BrandInfo(brand.name, brand.industry, True, brand.competitors,
                                    int(rng.lognormvariate(math.log(12_000), 0.5)), 0.8))
            weights.append(3.0)
            for comp in brand.competitors:
                infos.append(_BrandInfo(comp, brand.industry, False, (brand.name,),
                                        int(rng.lognormvariate(math.log(9_000), 0.5)), 0.7))
                weights.append(1.5)
        self.brands = {b.name: b for b in infos}
        self.brand_chooser = _Chooser(infos, weights)
        self.own = [b for b in infos if b.own]
        self.platform_chooser = _Chooser([p for p, *_ in _PLATFORMS],
                                         [w for _, w, *_ in _PLATFORMS])
        # Customers.
        n = config.customers or max(20, config.events // 40)
        self.customers = [self._customer(i) for i in range(n)]
        self._share_devices()
        activity = [rng.lognormvariate(0.0, 0.8) for _ in self.customers]
        self.customer_chooser = _Chooser(self.customers, activity)
        # Per platform: customers with a handle there (weighted), public users (not customers).
        self.social_customers = {}
        for platform, *_ in _PLATFORMS:
            on = [(c, a) for c, a in zip(self.customers, activity) if platform in c.handles]
            if on:
                self.social_customers[platform] = _Chooser([c for c, _ in on],
                                                           [a for _, a in on])
        self.public: dict[str, list[_Person]] = {p: [] for p, *_ in _PLATFORMS}
        for i in range(max(60, n)):
            user = self._public_user(i, self.platform_chooser.pick(rng))
            self.public[user.platforms[0]].append(user)
        for platform, users in self.public.items():
            while len(users) < 5:
                users.append(self._public_user(sum(map(len, self.public.values())), platform))
        self.anonymous: list[_Person] = []
        self.anon_count = 0

    # -- people ---------------------------------------------------------------------------
    def _name(self, lang: str) -> tuple[str, str]:
        rng = self.rng
        if lang == "de":
            return _choice(rng, _FIRST_DE), _choice(rng, _LAST_DE)
        return _choice(rng, _FIRST_EN), _choice(rng, _LAST_EN)

    def _handle(self, first: str, last: str) -> str:
        rng = self.rng
        f, l = first.lower().translate(_TRANSLIT), last.lower().translate(_TRANSLIT)
        while True:
            style = rng.randrange(5)
            if style == 0:
                handle = f"@{f}.{l}"
            elif style == 1:
                handle = f"@{f}_{l[0]}{rng.randrange(100)}"
            elif style == 2:
                handle = f"@{f}{l}{rng.randrange(1980, 2008)}"
            elif style == 3:
                handle = f"@{l}_{f[:3]}"
            else:
                handle = f"@{f}.{_choice(rng, ('loves', 'daily', 'official', 'xo', 'mag'))}"
            if handle in self._handles:
                handle += str(rng.randrange(10, 1000))
            if handle not in self._handles:
                self._handles.add(handle)
                return handle

    def _followers(self) -> int:
        rng = self.rng
        if rng.random() < 0.02:  # an influencer
            return int(rng.lognormvariate(math.log(60_000), 1.0))
        return int(rng.lognormvariate(math.log(220), 1.2))

    def _customer(self, i: int) -> _Person:
        rng = self.rng
        lang = "de" if rng.random() < 0.7 else "en"
        first, last = self._name(lang)
        person = _Person(f"C{i + 1:06d}", f"C{i + 1:06d}", first, last, lang)
        person.account_id = self.ids.digits("A-", 8)
        f, l = first.lower().translate(_TRANSLIT), last.lower().translate(_TRANSLIT)
        while True:
            local = _choice(rng, (f"{f}.{l}", f"{f}{l[0]}", f"{f[0]}.{l}", f"{f}_{l}"))
            email = f"{local}{rng.randrange(1, 100) if rng.random() < 0.5 else ''}@" \
                    f"{_choice(rng, _MAIL_DOMAINS)}"
            if email not in self._emails:
                self._emails.add(email)
                break
        person.email = email
        if rng.random() < 0.8:
            person.phone = f"+49{_choice(rng, ('151', '160', '170', '176', '157'))}" \
                           f"{rng.randrange(10 ** 7, 10 ** 8)}"
        for _ in range(_choice(rng, (1, 1, 2, 2, 3))):
            device = _choice(rng, ("mobile", "mobile", "mobile", "desktop", "desktop", "tablet",
                                 "app"))
            person.cookies.append((self.ids.hex("ck-", 16), device))
        if rng.random() < 0.6:
            platforms = [self.platform_chooser.pick(rng)]
            if rng.random() < 0.35:
                other = self.platform_chooser.pick(rng)
                if other != platforms[0]:
                    platforms.append(other)
            for platform in platforms:
                person.handles[platform] = self._handle(first, last)
            person.platforms = tuple(platforms)
        person.followers = self._followers()
        person.brands = [_choice(rng, self.own)]
        if rng.random() < 0.3 and len(self.own) > 1:
            second = _choice(rng, self.own)
            if second is not person.brands[0]:
                person.brands.append(second)
        return person

    def _share_devices(self) -> None:
        """About 2% of customers use a device of another customer (a household tablet)."""
        rng = self.rng
        if len(self.customers) < 2:
            return
        for _ in range(max(1, len(self.customers) // 50)):
            a, b = rng.sample(self.customers, 2)
            cookie = a.cookies[0]
            if cookie not in b.cookies:
                b.cookies.insert(0, cookie)  # the shared device is the main one of both

    def _public_user(self, i: int, platform: str) -> _Person:
        rng = self.rng
        lang = "de" if rng.random() < 0.6 else "en"
        first, last = self._name(lang)
        person = _Person(f"P{i + 1:06d}", None, first, last, lang)
        person.handles[platform] = self._handle(first, last)
        person.platforms = (platform,)
        person.followers = self._followers()
        return person

    def _visitor(self) -> _Person:
        """An anonymous web visitor: often new, sometimes returning with the same cookie."""
        rng = self.rng
        if self.anonymous and rng.random() < 0.3:
            return _choice(rng, self.anonymous)
        self.anon_count += 1
        person = _Person(f"V{self.anon_count:07d}", None, "", "", "de")
        person.cookies.append((self.ids.hex("ck-", 16),
                               _choice(rng, ("mobile", "mobile", "desktop", "tablet"))))
        self.anonymous.append(person)
        if len(self.anonymous) > 5000:
            del self.anonymous[:1000]
        return person

    def social_author(self, platform: str) -> _Person:
        """Someone with a handle on ``platform``: a customer (40%) or a public user."""
        rng = self.rng
        customers = self.social_customers.get(platform)
        if customers is not None and rng.random() < 0.4:
            return customers.pick(rng)
        return _choice(rng, self.public[platform])

    # -- text -----------------------------------------------------------------------------
    def emoji(self, sentiment: str, industry: str) -> str:
        rng = self.rng
        pool = _EMOJI[sentiment]
        r = rng.random()
        if r < 0.3:
            return _choice(rng, pool) * _choice(rng, (2, 3, 3, 4))
        n = _choice(rng, (1, 1, 2, 2, 3))
        out = "".join(_choice(rng, pool) for _ in range(n))
        if r > 0.8:
            out += _choice(rng, _INDUSTRY_EMOJI.get(industry, _INDUSTRY_EMOJI["retail"]))
        return out

    def post_text(self, lang: str, intent: str, aspect: str | None, brand: _BrandInfo,
                  brand_ref: str, competitor: str | None) -> tuple[str, list[str], str]:
        """(text, brands named in it, sentiment label)."""
        rng = self.rng
        industry = brand.industry if brand.industry in _HASHTAGS else "retail"
        if intent in ("comparison", "comparison_q", "ugc"):
            choices = _T[(lang, intent)]
        elif aspect == "product":
            choices = _T[(lang, intent, "product", industry)]
        else:
            choices = _T[(lang, intent, aspect)]
        template = _choice(rng, choices)
        sentiment = {"complaint": "neg", "praise": "pos", "comparison": "pos", "question": "neu",
                     "comparison_q": "neu"}.get(intent)
        if sentiment is None:  # ugc: mostly joy, sometimes frustration
            sentiment = "pos" if rng.random() < 0.8 else "neg"
        text = template.replace("{e}", self.emoji(sentiment, industry), 1)
        if "{e}" in text:
            text = text.replace("{e}", self.emoji(sentiment, industry))
        named = []
        if "{b}" in text:
            text = text.replace("{b}", brand_ref)
            named.append(brand.name)
        if "{c}" in text:
            text = text.replace("{c}", competitor or "")
            named.append(competitor)
        if "{p}" in text:
            text = text.replace("{p}", _choice(rng, _SHORT_PRODUCT[(lang, industry)]))
        return text, named, sentiment

    # -- activities -----------------------------------------------------------------------
    def activity(self, t0: int) -> list:
        r = self.rng.random()
        if r < 0.008:
            return self.brand_post(t0)
        if r < 0.4:
            return self.social_thread(t0)
        if r < 0.83:
            return self.web_session(t0)
        return self.standalone_survey(t0)

    def social_thread(self, t0: int) -> list:
        """A post or mention, then comments, likes, shares and (for posts aimed at the
        brand) maybe a brand reply and the author's thanks. Items: (role, key, event, truth
        extras) in causal order; events after the end of the period are not produced."""
        rng, ids, tpl, end = self.rng, self.ids, self.tpl, self.end
        brand = self.brand_chooser.pick(rng)
        platform = self.platform_chooser.pick(rng)
        author = self.social_author(platform)
        handle = author.handles[platform]
        likes_ok, reach_ok = _PLATFORM_INFO[platform]
        aimed = rng.random() < (0.55 if likes_ok else 0.3)
        competitor = None
        if brand.competitors:
            competitor = _choice(rng, brand.competitors)
        if aimed:
            r = rng.random()
            intent = "complaint" if r < 0.38 else "question" if r < 0.68 else "praise"
        else:
            r = rng.random()
            intent = ("praise" if r < 0.3 else "ugc" if r < 0.62 else "complaint" if r < 0.8
                      else ("comparison" if rng.random() < 0.6 else "comparison_q")
                      if competitor else "praise")
        aspect = _choice(rng, _ASPECTS) if intent in ("complaint", "question", "praise") else None
        if aimed:
            brand_ref = "@" + brand.slug
            event_type = "post"
        else:
            brand_ref = brand.name if rng.random() < 0.8 else "#" + brand.slug
            event_type = "mention" if intent in ("complaint", "comparison", "comparison_q") \
                or rng.random() < 0.25 else "post"
        text, named, sentiment = self.post_text(author.lang, intent, aspect, brand, brand_ref,
                                                competitor)
        industry = brand.industry if brand.industry in _HASHTAGS else "retail"
        hashtags = []
        if rng.random() < 0.45:
            hashtags = [_choice(rng, _HASHTAGS[industry])]
            if rng.random() < 0.4:
                hashtags.append(brand.slug)
            if rng.random() < 0.2:
                hashtags.append(_choice(rng, _CAMPAIGNS[industry]).replace("_", ""))
            hashtags = list(dict.fromkeys(hashtags))
            text += " " + " ".join("#" + h for h in hashtags)
        post_id = ids.hex(platform[:2] + "_", 14)
        reach = None
        if reach_ok:
            reach = int(author.followers * rng.uniform(0.08, 0.6)) + rng.randrange(5, 60)
        post = tpl["social"].copy()
        post.update(event_id=ids.hex("s-"), event_type=event_type, event_time=t0,
                    platform=platform, brand=brand.name, author_handle=handle, post_id=post_id,
                    aimed_at_brand=aimed, text=text,
                    lang=author.lang if rng.random() < 0.85 else None, reach=reach,
                    followers=author.followers if reach_ok else None,
                    mentioned_brands=named, hashtags=hashtags,
                    url=_PLATFORM_URL[platform] + post_id)
        key = post_id.encode()
        out = [("social", key, post, author, sentiment, aspect)]
        # Comments from other users, in the thread's mood.
        n_comments = _choice(rng, (0, 0, 0, 1, 1, 1, 2, 2, 3, 4))
        mood = sentiment
        for _ in range(n_comments):
            t = t0 + int(rng.lognormvariate(math.log(30 * MINUTE_MS), 1.0))
            if t > end:
                continue
            who = self.social_author(platform)
            c_sent = mood if rng.random() < 0.7 else _choice(rng, ("pos", "neg", "neu"))
            comment = tpl["social"].copy()
            comment.update(event_id=ids.hex("s-"), event_type="comment", event_time=t,
                           platform=platform, brand=brand.name,
                           author_handle=who.handles[platform],
                           post_id=ids.hex(platform[:2] + "c_", 14), parent_post_id=post_id,
                           text=_choice(rng, _COMMENTS[(who.lang, c_sent)]),
                           lang=who.lang if rng.random() < 0.85 else None,
                           followers=who.followers if reach_ok else None,
                           url=_PLATFORM_URL[platform] + post_id)
            out.append(("social", key, comment, who, c_sent, None))
        if likes_ok:
            n_likes = min(15, int((reach or 50) * rng.uniform(0.004, 0.03)))
            for _ in range(n_likes):
                t = t0 + int(rng.lognormvariate(math.log(20 * MINUTE_MS), 1.1))
                if t > end:
                    continue
                who = self.social_author(platform)
                like = tpl["social"].copy()
                like.update(event_id=ids.hex("s-"), event_type="like", event_time=t,
                            platform=platform, brand=brand.name,
                            author_handle=who.handles[platform],
                            post_id=ids.hex(platform[:2] + "l_", 14), parent_post_id=post_id)
                out.append(("social", key, like, who, None, None))
            if rng.random() < 0.18:
                t = t0 + int(rng.lognormvariate(math.log(HOUR_MS), 1.0))
                if t <= end:
                    who = self.social_author(platform)
                    share = tpl["social"].copy()
                    share_id = ids.hex(platform[:2] + "s_", 14)
                    share_text = None
                    if rng.random() < 0.5:
                        share_text = self.emoji(sentiment, industry)
                    share.update(event_id=ids.hex("s-"), event_type="share", event_time=t,
                                 platform=platform, brand=brand.name,
                                 author_handle=who.handles[platform],
                                 post_id=share_id, parent_post_id=post_id, text=share_text,
                                 reach=int(who.followers * rng.uniform(0.05, 0.4)) + 3,
                                 followers=who.followers,
                                 url=_PLATFORM_URL[platform] + share_id)
                    out.append(("social", key, share, who, sentiment if share_text else None,
                                None))
        # The brand's answer to a post aimed at it: log-normal delay, median 45 minutes.
        if aimed and rng.random() < brand.reply_rate:
            t = t0 + int(rng.lognormvariate(math.log(45 * MINUTE_MS), 0.9))
            if t <= end:
                reply = tpl["social"].copy()
                reply_id = ids.hex(platform[:2] + "r_", 14)
                brand_handle = "@" + brand.slug if likes_ok else f"{brand.name} Team"
                reply.update(event_id=ids.hex("s-"), event_type="reply", event_time=t,
                             platform=platform, brand=brand.name, author_handle=brand_handle,
                             author_is_brand=True, post_id=reply_id, parent_post_id=post_id,
                             text=_choice(rng, _REPLIES[(author.lang, intent)]).replace(
                                 "{n}", author.first),
                             lang=author.lang, followers=brand.followers if reach_ok else None,
                             url=_PLATFORM_URL[platform] + reply_id)
                out.append(("social", key, reply, None, None, None))
                if intent != "praise" and rng.random() < 0.3:
                    t2 = t + int(rng.lognormvariate(math.log(15 * MINUTE_MS), 0.8))
                    if t2 <= end:
                        thanks = tpl["social"].copy()
                        thanks.update(event_id=ids.hex("s-"), event_type="comment",
                                      event_time=t2, platform=platform, brand=brand.name,
                                      author_handle=handle,
                                      post_id=ids.hex(platform[:2] + "c_", 14),
                                      parent_post_id=post_id,
                                      text=_choice(rng, _FOLLOW_UPS[author.lang]),
                                      lang=author.lang if rng.random() < 0.85 else None,
                                      followers=author.followers if reach_ok else None,
                                      url=_PLATFORM_URL[platform] + post_id)
                        out.append(("social", key, thanks, author, "pos", None))
        return out

    def brand_post(self, t0: int) -> list:
        """A brand's own post (campaign content): many likes, reactions and questions in
        the comments; the brand answers some of the questions (reply to the comment)."""
        rng, ids, tpl, end = self.rng, self.ids, self.tpl, self.end
        brand = self.brand_chooser.pick(rng)
        platform = _choice(rng, ("instagram", "instagram", "facebook", "tiktok", "x", "youtube"))
        lang = "de" if rng.random() < 0.7 else "en"
        industry = brand.industry if brand.industry in _HASHTAGS else "retail"
        handle = "@" + brand.slug
        text = _choice(rng, _BRAND_POSTS[lang]).replace("{e}", self.emoji("pos", industry))
        text = text.replace("{p}", _choice(rng, _SHORT_PRODUCT[(lang, industry)]))
        hashtags = [brand.slug, _choice(rng, _CAMPAIGNS[industry]).replace("_", "")]
        text += " " + " ".join("#" + h for h in hashtags)
        post_id = ids.hex(platform[:2] + "_", 14)
        key = post_id.encode()
        reach = int(brand.followers * rng.uniform(0.05, 0.3))
        post = tpl["social"].copy()
        post.update(event_id=ids.hex("s-"), event_type="post", event_time=t0, platform=platform,
                    brand=brand.name, author_handle=handle, author_is_brand=True,
                    post_id=post_id, text=text, lang=lang, reach=reach,
                    followers=brand.followers, hashtags=hashtags,
                    url=_PLATFORM_URL[platform] + post_id)
        out = [("social", key, post, None, "pos", None)]
        for _ in range(min(60, int(reach * rng.uniform(0.01, 0.04)))):
            t = t0 + int(rng.lognormvariate(math.log(30 * MINUTE_MS), 1.1))
            if t > end:
                continue
            who = self.social_author(platform)
            like = tpl["social"].copy()
            like.update(event_id=ids.hex("s-"), event_type="like", event_time=t,
                        platform=platform, brand=brand.name, author_handle=who.handles[platform],
                        post_id=ids.hex(platform[:2] + "l_", 14), parent_post_id=post_id)
            out.append(("social", key, like, who, None, None))
        for _ in range(_choice(rng, (1, 2, 3, 4, 6, 8))):
            t = t0 + int(rng.lognormvariate(math.log(40 * MINUTE_MS), 1.0))
            if t > end:
                continue
            who = self.social_author(platform)
            comment_id = ids.hex(platform[:2] + "c_", 14)
            comment = tpl["social"].copy()
            aimed = rng.random() < 0.4
            if aimed:
                c_text, c_sent = _choice(rng, _COMMENT_QUESTIONS[who.lang]).replace(
                    "{b}", handle), "neu"
            else:
                c_sent = "pos" if rng.random() < 0.75 else "neg"
                c_text = _choice(rng, _COMMENTS[(who.lang, c_sent)])
            comment.update(event_id=ids.hex("s-"), event_type="comment", event_time=t,
                           platform=platform, brand=brand.name,
                           author_handle=who.handles[platform], post_id=comment_id,
                           parent_post_id=post_id, aimed_at_brand=aimed, text=c_text,
                           lang=who.lang if rng.random() < 0.85 else None,
                           followers=who.followers,
                           mentioned_brands=[brand.name] if aimed else [],
                           url=_PLATFORM_URL[platform] + post_id)
            out.append(("social", key, comment, who, c_sent, None))
            if aimed and rng.random() < brand.reply_rate:
                tr = t + int(rng.lognormvariate(math.log(45 * MINUTE_MS), 0.9))
                if tr <= end:
                    reply = tpl["social"].copy()
                    reply_id = ids.hex(platform[:2] + "r_", 14)
                    reply.update(event_id=ids.hex("s-"), event_type="reply", event_time=tr,
                                 platform=platform, brand=brand.name, author_handle=handle,
                                 author_is_brand=True, post_id=reply_id,
                                 parent_post_id=comment_id,
                                 text=_choice(rng, _REPLIES[(who.lang, "question")]).replace(
                                     "{n}", who.first),
                                 lang=who.lang, followers=brand.followers,
                                 url=_PLATFORM_URL[platform] + reply_id)
                    out.append(("social", key, reply, None, None, None))
        if rng.random() < 0.5:
            t = t0 + int(rng.lognormvariate(math.log(HOUR_MS), 1.0))
            if t <= end:
                who = self.social_author(platform)
                share = tpl["social"].copy()
                share_id = ids.hex(platform[:2] + "s_", 14)
                share.update(event_id=ids.hex("s-"), event_type="share", event_time=t,
                             platform=platform, brand=brand.name,
                             author_handle=who.handles[platform], post_id=share_id,
                             parent_post_id=post_id,
                             reach=int(who.followers * rng.uniform(0.05, 0.4)) + 3,
                             followers=who.followers, url=_PLATFORM_URL[platform] + share_id)
                out.append(("social", key, share, who, None, None))
        return out

    def web_session(self, t0: int) -> list:
        """One visit to an own brand's shop: landing (referrer, UTM), views, maybe a login,
        a cart, an order (with a survey invitation answered hours later), an account link."""
        rng, ids, tpl, end = self.rng, self.ids, self.tpl, self.end
        is_customer = rng.random() < 0.65
        person = self.customer_chooser.pick(rng) if is_customer else self._visitor()
        brand = self.brands[_choice(rng, person.brands).name] if person.brands \
            else _choice(rng, self.own)
        # Half of the visits from the main device, the rest from any.
        cookie, device = person.cookies[0] if rng.random() < 0.5 else \
            _choice(rng, person.cookies)
        session_id = ids.hex("ses-", 16)
        key = session_id.encode()
        base = tpl["web"].copy()
        base.update(brand=brand.name, session_id=session_id, cookie_id=cookie, device=device)
        products = brand.products
        industry = brand.industry if brand.industry in _CAMPAIGNS else "retail"
        campaign = f"{brand.slug}_{_choice(rng, _CAMPAIGNS[industry])}"
        out = []

        def add(event_type, t, **fields):
            ev = base.copy()
            ev.update(event_id=ids.hex("w-"), event_type=event_type, event_time=t, **fields)
            out.append(("web", key, ev, person, None, None))
            return ev

        # Where the visit comes from.
        r = rng.random()
        landing_product = None
        if r < 0.2:  # a social referral, often from a platform the person is on
            platform = _choice(rng, person.platforms) if person.platforms and rng.random() < 0.7 \
                else _choice(rng, _SOCIAL_REFERRAL_PLATFORMS)
            if platform not in _REFERRER:
                platform = "instagram"
            paid = rng.random() < 0.4
            src = dict(referrer=_REFERRER[platform], utm_source=platform,
                       utm_medium="paid_social" if paid else "social", utm_campaign=campaign)
            landing_product = _choice(rng, products)
        elif r < 0.45:
            src = dict(referrer=_choice(rng, ("google.com", "google.com", "bing.com",
                                            "duckduckgo.com")))
        elif r < 0.53:
            src = dict(referrer="google.com", utm_source="google", utm_medium="cpc",
                       utm_campaign=campaign)
            landing_product = _choice(rng, products)
        elif r < 0.63 and is_customer:
            src = dict(referrer=None, utm_source="newsletter", utm_medium="email",
                       utm_campaign=campaign)
        else:
            src = dict(referrer=None)
        t = t0
        if landing_product:
            add("session_start", t, page_type="product", page_url=f"/p/{landing_product[0]}",
                product_id=landing_product[0], **src)
        else:
            add("session_start", t, page_type="home", page_url="/", **src)
        gap = 45 * SECOND_MS
        if rng.random() < 0.3:  # bounce
            return out
        viewed = [landing_product] if landing_product else []
        account = None
        login_step = -1
        if is_customer and cookie in person.remembered:
            # "Stay logged in" on this device: the visit is logged in from its first event.
            account = person.account_id
            base["account_id"] = account
            out[0][2]["account_id"] = account
        elif is_customer and rng.random() < 0.5:
            login_step = rng.randrange(0, 4)
        steps = 1 + min(int(rng.expovariate(0.45)), 10)
        for step in range(steps):
            t += int(rng.expovariate(1.0 / gap)) + 2 * SECOND_MS
            if step == login_step:
                account = person.account_id
                base["account_id"] = account
                add("login", t, page_type="account", page_url="/login",
                    email=self._email_variant(person) if rng.random() < 0.3 else None)
                if rng.random() < REMEMBER_LOGIN:
                    person.remembered.add(cookie)
                t += int(rng.expovariate(1.0 / gap)) + SECOND_MS
            r = rng.random()
            if r < 0.55:
                product = _choice(rng, products)
                viewed.append(product)
                add("product_view", t, page_type="product", page_url=f"/p/{product[0]}",
                    product_id=product[0])
            elif r < 0.85:
                category = _choice(rng, ("neu", "angebote", "bestseller", "zubehoer"))
                add("page_view", t, page_type="category", page_url=f"/c/{category}")
            else:
                page = _choice(rng, (("support", "/hilfe"), ("home", "/"), ("account", "/konto")))
                add("page_view", t, page_type=page[0], page_url=page[1])
        if account and person.handles and rng.random() < LINK_SOCIAL:
            # "Connect your social accounts" in the shop's profile: all of them at once.
            for platform in [p for p in person.platforms if p not in person.linked]:
                person.linked.append(platform)
                t += int(rng.expovariate(1.0 / gap)) + SECOND_MS
                add("account_link", t, page_type="account", page_url="/konto/social",
                    social_platform=platform, social_handle=person.handles[platform])
        if not viewed or rng.random() > 0.4:
            return out
        cart = [_choice(rng, viewed) for _ in range(_choice(rng, (1, 1, 1, 2, 3)))]
        for product in cart:
            t += int(rng.expovariate(1.0 / gap)) + SECOND_MS
            add("add_to_cart", t, page_type="cart", page_url="/cart", product_id=product[0])
        if not is_customer or rng.random() > 0.55:
            return out  # abandoned cart (anonymous visitors never check out here)
        t += int(rng.expovariate(1.0 / (3 * gap))) + 10 * SECOND_MS
        if account is None and rng.random() < 0.7:  # log in at checkout, else guest checkout
            account = person.account_id
            base["account_id"] = account
            add("login", t, page_type="checkout", page_url="/checkout/login")
            t += int(rng.expovariate(1.0 / gap)) + SECOND_MS
        value = round(sum(p[2] * _choice(rng, (1, 1, 1, 2)) for p in cart), 2)
        order_id = ids.digits("ORD-", 10)
        person.orders.append(order_id)
        add("order", t, page_type="confirmation", page_url="/checkout/confirmation",
            product_id=cart[0][0], order_id=order_id, order_value=value, currency="EUR",
            email=self._email_variant(person))
        if rng.random() < 0.35:  # the post-purchase survey, answered hours later
            ts = t + int(rng.lognormvariate(math.log(5 * HOUR_MS), 0.8))
            if ts <= end:
                out.append(self.survey(ts, person, brand, _choice(rng, _TOUCHPOINTS_AFTER_ORDER),
                                       order_id=order_id, cookie=cookie))
        return out

    def _email_variant(self, person: _Person) -> str:
        """The e-mail as typed: 3% with different letter case (pipelines must normalise)."""
        if self.rng.random() < 0.03:
            local, _, domain = person.email.partition("@")
            return f"{local.title()}@{domain}"
        return person.email

    def survey(self, t: int, person: _Person, brand: _BrandInfo, touchpoint: str,
               order_id: str | None = None, cookie: str | None = None):
        rng, ids = self.rng, self.ids
        if touchpoint in ("support", "returns"):
            stype = "CES" if rng.random() < 0.6 else "CSAT"
        else:
            r = rng.random()
            stype = "NPS" if r < 0.55 else "CSAT" if r < 0.85 else "CES"
        values, weights = _SURVEY_SCORES[stype]
        score = rng.choices(values, weights)[0]
        low, high = values[0], values[-1]
        position = (score - low) / (high - low)
        sentiment = "pos" if position >= 0.8 else "neu" if position >= 0.55 else "neg"
        r = rng.random()
        channel = "email" if r < 0.55 else "web" if r < 0.75 else "app" if r < 0.9 else "sms"
        email = self._email_variant(person) if channel == "email" or rng.random() < 0.7 else None
        account = person.account_id if rng.random() < 0.6 or email is None else None
        phone = None
        if person.phone and (channel == "sms" or rng.random() < 0.1):
            phone = person.phone if rng.random() < 0.9 else "0" + person.phone[3:6] + " " + \
                person.phone[6:]
        survey = self.tpl["survey"].copy()
        survey.update(event_id=ids.hex("v-"), event_time=t, brand=brand.name,
                      survey_id=f"{brand.slug}-{stype.lower()}-{touchpoint}", survey_type=stype,
                      score=score,
                      comment=_choice(rng, _SURVEY_COMMENTS[(person.lang, sentiment)])
                      if rng.random() < 0.6 else None,
                      lang=person.lang, touchpoint=touchpoint, channel=channel,
                      account_id=account, email=email, phone=phone,
                      cookie_id=(cookie or person.cookies[0][0]) if channel == "web" else None,
                      order_id=order_id)
        key = (account or email).encode()
        return ("survey", key, survey, person, sentiment if survey["comment"] else None,
                touchpoint)

    def standalone_survey(self, t0: int) -> list:
        rng = self.rng
        person = self.customer_chooser.pick(rng)
        brand = self.brands[_choice(rng, person.brands).name]
        touchpoint = _choice(rng, _TOUCHPOINTS_STANDALONE)
        order_id = person.orders[-1] if person.orders and touchpoint in ("delivery", "returns") \
            else None
        return [self.survey(t0, person, brand, touchpoint, order_id=order_id)]


# -- encoding ----------------------------------------------------------------------------------
_VARINT_CACHE = {}


def _zigzag(n: int) -> bytes:
    """Avro int/long: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


for _n in range(-4096, 4096):
    _VARINT_CACHE[_n] = _zigzag(_n)


class _Unsupported(Exception):
    pass


_PRIMITIVE_CODE = {
    "null": ["pass"],
    "boolean": ["ap(b'\\x01' if {v} else b'\\x00')"],
    "int": ["ap(C.get({v}) or Z({v}))"],
    "long": ["ap(C.get({v}) or Z({v}))"],
    "double": ["ap(PD({v}))"],
    "float": ["ap(PF({v}))"],
    "string": ["b = {v}.encode()", "ap(C.get(len(b)) or Z(len(b)))", "ap(b)"],
    "bytes": ["b = bytes({v})", "ap(C.get(len(b)) or Z(len(b)))", "ap(b)"],
}


def _type_code(avro_type, var: str, depth: int = 0) -> list[str]:
    """Python lines writing ``var`` as Avro binary of ``avro_type`` (the subset the event
    schemas use: primitives, [null, X] unions, arrays of primitives)."""
    if isinstance(avro_type, str) and avro_type in _PRIMITIVE_CODE:
        return [line.format(v=var) for line in _PRIMITIVE_CODE[avro_type]]
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        inner = _type_code(avro_type[1], var, depth)
        return [f"if {var} is None:", "    ap(b'\\x00')", "else:", "    ap(b'\\x02')",
                *("    " + line for line in inner)]
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind in _PRIMITIVE_CODE and set(avro_type) <= {"type", "doc"}:
            return _type_code(kind, var, depth)
        if kind == "array" and depth == 0:
            item = _type_code(avro_type["items"], "x", depth + 1)
            return [f"if {var}:", f"    ap(C.get(len({var})) or Z(len({var})))",
                    f"    for x in {var}:", *("        " + line for line in item),
                    "ap(b'\\x00')"]
    raise _Unsupported(f"type {avro_type!r}")


def _compile_record(schema: dict):
    """encode(record, header) -> header + the Avro binary body, generated as straight-line
    Python for one record schema (a tenth of the calls a generic writer makes)."""
    if schema.get("type") != "record":
        raise _Unsupported("not a record")
    lines = ["def encode(r, header):", "    out = [header]", "    ap = out.append"]
    for field in schema["fields"]:
        lines.append(f"    v = r.get({field['name']!r})")
        lines.extend("    " + line for line in _type_code(field["type"], "v"))
    lines.append("    return b''.join(out)")
    namespace = {"C": _VARINT_CACHE, "Z": _zigzag, "PD": struct.Struct("<d").pack,
                 "PF": struct.Struct("<f").pack}
    exec(compile("\n".join(lines), f"<avro encoder {schema.get('name')}>", "exec"), namespace)
    return namespace["encode"]


class _Encoder:
    """Values exactly as :meth:`AvroCodec.encode` writes them: the codec's schema and id for
    each subject, and the same bytes (checked against the codec on the first records and in
    the tests). The schema is compiled into plain Python writers because fastavro's per-call
    cost (about 25 us per event; 50 us through AvroCodec, which re-parses the schema on every
    call) would halve the generation rate; a schema outside the compiled subset falls back
    to ``codec.encode``."""

    CHECK_FIRST = 50

    def __init__(self, codec: AvroCodec):
        self.codec = codec
        self._writers = {}
        self._checked = dict.fromkeys(ROLES, 0)
        for role in ROLES:
            subject = SUBJECT_BY_ROLE[role]
            schema_id, schema = codec.reader_schema(subject)
            try:
                writer = _compile_record(strip_logical_types(schema))
            except _Unsupported:
                writer = None
            self._writers[role] = (struct.pack(">bI", 0, schema_id), writer, subject)

    def avro(self, role: str, event: dict) -> bytes:
        header, writer, subject = self._writers[role]
        if writer is None:
            return self.codec.encode(subject, event)
        try:
            value = writer(event, header)
        except (AttributeError, TypeError, struct.error):
            return self.codec.encode(subject, event)  # raises the codec's own error
        if self._checked[role] < self.CHECK_FIRST:
            self._checked[role] += 1
            expected = self.codec.encode(subject, event)
            if value != expected:  # never seen; be safe rather than fast
                self._writers[role] = (header, None, subject)
                return expected
        return value

    @staticmethod
    def json(event: dict, iso_time: bool) -> bytes:
        """A JSON object as a user's system would send it: nulls and empty lists left out,
        the time as epoch ms or ISO-8601."""
        obj = {k: v for k, v in event.items() if v is not None and v != []}
        if iso_time:
            obj["event_time"] = iso_ms(event["event_time"])
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _templates(codec: AvroCodec) -> dict:
    """Per role, an event dict with every schema field at its default (or None)."""
    out = {}
    for role in ROLES:
        _, schema = codec.reader_schema(SUBJECT_BY_ROLE[role])
        out[role] = {f["name"]: (list(f["default"]) if isinstance(f.get("default"), list)
                                 else f.get("default")) for f in schema["fields"]}
    return out


# -- malformed records ---------------------------------------------------------------------------
class _Malformer:
    """One malformed record per call, cycling through every dead-letter reason."""

    def __init__(self, world: _World, encoder: _Encoder, codec: AvroCodec, now_ms: int):
        self.world, self.encoder, self.codec = world, encoder, codec
        self.rng = world.rng
        self.now_ms = now_ms
        self.cycle: list[str] = []

    def next_reason(self) -> str:
        if not self.cycle:
            self.cycle = list(MALFORMED_REASONS)
            self.rng.shuffle(self.cycle)
        return self.cycle.pop()

    def _sample(self, role: str, t: int) -> dict:
        """A plausible valid event of ``role`` to break."""
        world, rng, ids = self.world, self.rng, self.world.ids
        if role == "social":
            platform = world.platform_chooser.pick(rng)
            author = world.social_author(platform)
            brand = world.brand_chooser.pick(rng)
            text, named, _ = world.post_text(author.lang, "complaint", "delivery", brand,
                                             "@" + brand.slug, None)
            ev = world.tpl["social"].copy()
            post_id = ids.hex(platform[:2] + "_", 14)
            ev.update(event_id=ids.hex("s-"), event_type="post", event_time=t,
                      platform=platform, brand=brand.name, author_handle=author.handles[platform],
                      post_id=post_id, aimed_at_brand=True, text=text, lang=author.lang,
                      mentioned_brands=named)
            return ev
        person = world.customer_chooser.pick(rng)
        brand = world.brands[person.brands[0].name]
        if role == "web":
            product = _choice(rng, brand.products)
            ev = world.tpl["web"].copy()
            ev.update(event_id=ids.hex("w-"), event_type="order", event_time=t,
                      brand=brand.name, session_id=ids.hex("ses-", 16),
                      cookie_id=person.cookies[0][0], account_id=person.account_id,
                      email=person.email, page_type="confirmation",
                      page_url="/checkout/confirmation", product_id=product[0],
                      order_id=ids.digits("ORD-", 10), order_value=product[2], currency="EUR",
                      device=person.cookies[0][1])
            return ev
        return world.survey(t, person, brand, "delivery")[2]

    @staticmethod
    def _key(role: str, ev: dict) -> bytes:
        if role == "social":
            return ev["post_id"].encode()
        if role == "web":
            return ev["session_id"].encode()
        return (ev.get("account_id") or ev.get("email") or ev["event_id"]).encode()

    def make(self, t: int) -> tuple[str, bytes, bytes | None, dict]:
        """(role, key, value, truth extras) of one malformed record."""
        rng, enc = self.rng, self.encoder
        reason = self.next_reason()
        role = _choice(rng, ("social", "social", "web", "web", "survey"))
        ev = self._sample(role, t)
        key = self._key(role, ev)
        event_id, event_time = ev["event_id"], ev["event_time"]
        variant = ""
        if reason == "empty_value":
            value, variant = (None, "null value") if rng.random() < 0.5 else (b"", "empty value")
        elif reason == "undecodable":
            r = rng.random()
            if r < 0.4:  # an Avro body cut short
                full = enc.avro(role, ev)
                value, variant = full[:5 + (len(full) - 5) // 2], "truncated Avro body"
            elif r < 0.7:  # binary garbage that is neither wire format nor JSON
                value = bytes([rng.randrange(0x80, 0x100)]) + bytes(
                    rng.randrange(256) for _ in range(rng.randrange(8, 40)))
                variant = "binary garbage"
            else:
                value = f"{ev['event_id']};{ev['event_time']};{ev.get('brand')}".encode()
                variant = "CSV text"
        elif reason == "unknown_schema_id":
            value = struct.pack(">bI", 0, UNKNOWN_SCHEMA_ID) + enc.avro(role, ev)[5:]
            variant = f"schema id {UNKNOWN_SCHEMA_ID}"
        elif reason == "incompatible_schema":
            other = _choice(rng, [r for r in ROLES if r != role])
            foreign = self._sample(other, t)
            value = enc.avro(other, foreign)
            event_id, event_time = foreign["event_id"], foreign["event_time"]
            variant = f"{other} event on the {role} topic"
        elif reason == "invalid_json":
            text = _Encoder.json(ev, False).decode()
            if rng.random() < 0.6:
                value, variant = text[: len(text) // 2].encode(), "truncated JSON"
            else:
                value = ("{'event_id': '" + ev["event_id"] + "', 'brand': 'x'}").encode()
                variant = "single-quoted pseudo JSON"
        elif reason == "schema_violation":
            obj = json.loads(_Encoder.json(ev, False))
            if role == "survey":
                obj["score"], variant = _choice(rng, ("nine", "10/10", "zehn")), "score is text"
            elif role == "web":
                obj["order_value"], variant = "12,50 €", "order_value is text"
            else:
                obj["followers"], variant = "many", "followers is text"
            value = json.dumps(obj, ensure_ascii=False).encode()
        elif reason == "missing_field":
            if rng.random() < 0.5 or role == "social":
                obj = json.loads(_Encoder.json(ev, False))
                del obj["event_id"]
                value, variant, event_id = json.dumps(obj, ensure_ascii=False).encode(), \
                    "JSON without event_id", None
            elif role == "web":
                ev["order_value"] = None
                value, variant = enc.avro(role, ev), "order without order_value"
            else:
                ev["brand"] = ""
                value, variant = enc.avro(role, ev), "survey with an empty brand"
        elif reason == "invalid_value":
            if role == "survey":
                high = {"NPS": 10, "CSAT": 5, "CES": 7}[ev["survey_type"]]
                ev["score"] = high + rng.randrange(1, 3)
                variant = f"{ev['survey_type']} score {ev['score']}"
            elif role == "web":
                ev["order_value"] = -round(ev["order_value"], 2)
                variant = "negative order value"
            else:
                ev["event_type"] = _choice(rng, ("retweet", "story", "teleport"))
                variant = f"unknown event_type {ev['event_type']!r}"
            value = enc.avro(role, ev)
        else:  # future_timestamp: days ahead of "now"
            event_time = ev["event_time"] = self.now_ms + int(rng.uniform(1.5, 10) * DAY_MS)
            value, variant = enc.avro(role, ev), "event_time days ahead"
        truth = {"event_id": event_id, "event_time": event_time, "expected_reason": reason,
                 "malformed": variant}
        return role, key, value, truth


# -- the stream --------------------------------------------------------------------------------
def _slots(config: GeneratorConfig) -> list[tuple[int, int, float]]:
    """Hour slots covering [start, end) with their cumulative share of activity."""
    start, end = config.start_ms, config.end_ms
    edges = [start]
    t = start - start % HOUR_MS + HOUR_MS
    while t < end:
        edges.append(t)
        t += HOUR_MS
    edges.append(end)
    weights = [_hour_weight(a // HOUR_MS % 24) * (b - a) for a, b in zip(edges, edges[1:])]
    total = sum(weights)
    out, acc = [], 0.0
    for (a, b), w in zip(zip(edges, edges[1:]), weights):
        acc += w
        out.append((a, b, acc / total))
    out[-1] = (out[-1][0], out[-1][1], 1.0)
    return out


def _valid_stream(config: GeneratorConfig, world: _World, n_valid: int) -> Iterator[tuple]:
    """Exactly ``n_valid`` valid events as (arrival_ms, seq, item, late) in arrival order.

    Activities start hour slot by hour slot (more in busy hours) until the cumulative share
    of events is reached; their events go into a heap keyed by arrival time and leave it once
    no later activity can arrive earlier."""
    rng = world.rng
    jitter_ms = config.jitter_s * 1000
    late_min, late_max = config.late_min_s * 1000, config.late_max_s * 1000
    late_p = config.late
    end = config.end_ms
    heap: list = []
    produced = seq = 0
    for slot_start, slot_end, share in _slots(config):
        target = n_valid if share >= 1.0 else int(round(n_valid * share))
        width = slot_end - slot_start
        while produced < target:
            items = [item for item in world.activity(slot_start + int(rng.random() * width))
                     if item[2]["event_time"] <= end]
            if produced + len(items) > n_valid:
                items = items[:n_valid - produced]  # causal order: parents stay
            produced += len(items)
            for item in items:
                event_time = item[2]["event_time"]
                late = rng.random() < late_p
                if late:
                    arrival = event_time + int(rng.uniform(late_min, late_max))
                else:
                    arrival = event_time + (int(rng.expovariate(1.0 / jitter_ms))
                                            if jitter_ms else 0)
                seq += 1
                heapq.heappush(heap, (arrival, seq, item, late))
        while heap and heap[0][0] <= slot_end:
            yield heapq.heappop(heap)
    while heap:
        yield heapq.heappop(heap)


def generate(config: GeneratorConfig, codec: AvroCodec | None = None
             ) -> Iterator[GeneratedRecord]:
    """The records of ``config`` in arrival order (see the module docstring).

    ``codec`` decides the schema ids written (default: the schemas shipped with cx360)."""
    codec = codec or AvroCodec(FileSchemaRegistry())
    rng = random.Random(config.seed)
    templates = _templates(codec)
    encoder = _Encoder(codec)
    world = _World(config, rng, templates)
    malformer = _Malformer(world, encoder, codec, max(config.now_ms or 0, config.end_ms))

    n = config.events
    n_mal = int(round(n * config.malformed))
    n_dup = int(round(n * config.duplicates))
    if n_mal + n_dup > n:
        n_dup = max(0, n - n_mal)
    n_valid = n - n_mal - n_dup
    if n_valid == 0:
        n_mal, n_dup = n, 0
    lead = min(n_valid, 20)  # the stream opens with valid events, so a duplicate has a source
    special = dict.fromkeys(rng.sample(range(lead, n), n_mal + n_dup), "malformed")
    for position in list(special)[n_mal:]:
        special[position] = "duplicate"

    valid = _valid_stream(config, world, n_valid)
    recent: deque = deque(maxlen=32)
    json_p = config.json
    avro = encoder.avro
    last_arrival = config.start_ms
    for index in range(n):
        kind = special.get(index)
        if kind is None:
            arrival, _, (role, key, event, person, sentiment, aspect), late = next(valid)
            if json_p and rng.random() < json_p:
                value = _Encoder.json(event, rng.random() < 0.5)
                encoding = "json"
            else:
                value = avro(role, event)
                encoding = "avro"
            truth = {"seq": index, "role": role, "kind": "valid", "event_id": event["event_id"],
                     "event_type": event.get("event_type") or event.get("survey_type"),
                     "event_time": event["event_time"], "arrival_ms": arrival, "late": late,
                     "customer_id": person.cid if person is not None else None,
                     "person_id": person.pid if person is not None else
                     ("brand:" + event["brand"] if role == "social" else None),
                     "brand": event.get("brand"), "encoding": encoding,
                     "sentiment": sentiment, "aspect": aspect,
                     "expected_reason": None}
            record = GeneratedRecord(role, key, value, event, truth)
            recent.append(record)
            last_arrival = arrival
        elif kind == "duplicate":
            original = _choice(rng, recent)
            truth = dict(original.truth, seq=index, kind="duplicate",
                         duplicate_of=original.truth["seq"], arrival_ms=last_arrival)
            record = GeneratedRecord(original.role, original.key, original.value,
                                     dict(original.event), truth)
        else:
            role, key, value, extras = malformer.make(last_arrival)
            truth = {"seq": index, "role": role, "kind": "malformed", "event_id": None,
                     "event_type": None, "event_time": None, "arrival_ms": last_arrival,
                     "late": False, "customer_id": None, "person_id": None, "brand": None,
                     "encoding": None, "sentiment": None, "aspect": None}
            truth.update(extras)
            record = GeneratedRecord(role, key, value, None, truth)
        yield record
