"""Identity: pseudonymisation at ingestion, the identity graph and per-event touchpoint facts.

* :class:`Pseudonymiser` normalises e-mails (strip, lower-case) and phone numbers (E.164-ish
  digits, default country DE) and replaces them by a keyed hash (HMAC-SHA256, secret from
  ``CX360_PSEUDONYM_KEY``) right after decoding, before anything is stored or logged.
* :func:`event_links` gives the identifiers an event carries and the links between them;
  :func:`stitch` recomputes the connected components touched by a micro-batch from every
  stored link (union-find in a fixed order, with the anti-merge rules) and returns the new
  ``identity_map`` and ``identity_merges`` rows. It is a pure function of the batch's links
  and the graph state before the batch, so a re-run of a batch gives the same rows.
* :func:`touchpoint_row` is the per-event fact (keyed by one identifier) that the
  ``customer_360`` view joins with the current identity map: a later merge re-attributes
  history without rewriting facts.

Identifiers are typed strings: ``acct:A-12345678``, ``ck:<cookie>``, ``em:<hmac>``,
``ph:<hmac>``, ``sh:<platform>:<handle>``. docs/identity.md documents the rules.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
from collections import Counter
from typing import Iterable, Protocol

LOG = logging.getLogger(__name__)

KEY_ENV = "CX360_PSEUDONYM_KEY"
#: Used only when CX360_PSEUDONYM_KEY is unset (local demos and tests). Production must set
#: its own secret: with a public key anyone can test whether an e-mail is in the warehouse.
DEMO_KEY = b"cx360-demo-pseudonym-key-NOT-FOR-PRODUCTION"

EMAIL_RE = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
PHONE_RE = re.compile(rb"(?:\+|\b00|\b0)[1-9][0-9 ()/\-]{6,18}[0-9]")

ACCOUNT, COOKIE, EMAIL, PHONE, HANDLE = "acct", "ck", "em", "ph", "sh"
#: Strongest first: the identifier an event's facts are keyed by.
STRENGTH = (ACCOUNT, EMAIL, PHONE, COOKIE, HANDLE)

#: True once the demo-key warning is given, or where the parent process gives it (the local
#: parallel workers).
demo_key_warned = False


def pseudonym_key() -> bytes:
    global demo_key_warned
    key = os.environ.get(KEY_ENV)
    if key:
        return key.encode("utf-8")
    if not demo_key_warned:
        LOG.warning("%s is not set: pseudonymising with the built-in DEMO key. Production must "
                    "set its own secret.", KEY_ENV)
        demo_key_warned = True
    return DEMO_KEY


def normalise_email(value: str) -> str:
    return value.strip().lower()


def normalise_phone(value: str, country_code: str = "49") -> str:
    """E.164-ish: '+' and digits. '0151 234' -> '+49151234'; '0049...' -> '+49...'."""
    raw = value.strip()
    digits = re.sub(r"\D", "", raw)
    if raw.startswith("+"):
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    if digits.startswith("0"):
        return "+" + country_code + digits[1:]
    return "+" + digits


class Pseudonymiser:
    """Replaces ``email`` and ``phone`` of an event by keyed hashes (hex), in place."""

    FIELDS = ("email", "phone")

    def __init__(self, key: bytes | None = None, country_code: str = "49"):
        self.key = key if key is not None else pseudonym_key()
        self.country_code = country_code

    def _hash(self, kind: str, normalised: str) -> str:
        return hmac.new(self.key, f"{kind}:{normalised}".encode("utf-8"),
                        hashlib.sha256).hexdigest()

    def email(self, value: str) -> str:
        return self._hash(EMAIL, normalise_email(value))

    def phone(self, value: str) -> str:
        return self._hash(PHONE, normalise_phone(value, self.country_code))

    def apply(self, event: dict) -> dict:
        if event.get("email"):
            event["email"] = self.email(event["email"])
        if event.get("phone"):
            event["phone"] = self.phone(event["phone"])
        return event

    def identifier(self, raw: str) -> list[str]:
        """Typed identifiers a user-given value may denote (for ``cx360 forget``)."""
        raw = raw.strip()
        if ":" in raw and raw.split(":", 1)[0] in STRENGTH:
            return [raw]
        if "@" in raw and not raw.startswith("@"):
            return [f"{EMAIL}:{self.email(raw)}"]
        if re.fullmatch(r"[+0-9][0-9 ()/\-]{5,}", raw):
            return [f"{PHONE}:{self.phone(raw)}"]
        if raw.startswith("A-"):
            return [f"{ACCOUNT}:{raw}"]
        if raw.startswith("ck-"):
            return [f"{COOKIE}:{raw}"]
        return [f"{ACCOUNT}:{raw}", f"{COOKIE}:{raw}"]


def contains_personal_data(data: bytes | None) -> bool:
    return bool(data) and bool(EMAIL_RE.search(data) or PHONE_RE.search(data))


def redact_dead_letter(row: dict) -> dict:
    """The warehouse copy of a dead letter: key/value kept only when they contain no e-mail or
    phone pattern; otherwise NULL plus a redacted copy and the SHA-256 of the original (the
    dead-letter topic keeps the original bytes for replay)."""
    out = dict(row)
    for name in ("key", "value"):
        data = row.get(name)
        if contains_personal_data(data):
            out[name] = None
            out[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
            if name == "value":
                # NUL becomes U+FFFD too: PostgreSQL TEXT cannot hold it (the bytes are kept
                # on the dead-letter topic).
                out["value_redacted"] = PHONE_RE.sub(
                    b"<phone>", EMAIL_RE.sub(b"<email>", data)).decode(
                        "utf-8", "replace").replace("\x00", "\ufffd")
    detail = row.get("detail")
    if detail and contains_personal_data(detail.encode("utf-8", "replace")):
        out["detail"] = PHONE_RE.sub(b"<phone>", EMAIL_RE.sub(
            b"<email>", detail.encode("utf-8", "replace"))).decode("utf-8", "replace")
    return out


# -- identifiers and links of one event -------------------------------------------------------

def event_identifiers(event: dict) -> list[str]:
    """Typed identifiers of a (pseudonymised) event, strongest first; [] for brand accounts."""
    role = event["_role"]
    ids: list[str] = []
    if role == "social":
        if event.get("author_is_brand"):
            return []
        return [f"{HANDLE}:{event['platform']}:{event['author_handle'].lower()}"]
    if event.get("account_id"):
        ids.append(f"{ACCOUNT}:{event['account_id']}")
    if event.get("email"):
        ids.append(f"{EMAIL}:{event['email']}")
    if event.get("phone"):
        ids.append(f"{PHONE}:{event['phone']}")
    if event.get("cookie_id"):
        ids.append(f"{COOKIE}:{event['cookie_id']}")
    if role == "web" and event.get("event_type") == "account_link" and event.get(
            "social_handle") and event.get("social_platform") and event.get("account_id"):
        ids.append(f"{HANDLE}:{event['social_platform']}:{event['social_handle'].lower()}")
    return ids


def event_links(event: dict) -> list[dict]:
    """Link rows: every identifier of the event with its strongest one (a star, not a clique:
    the components are the same)."""
    ids = event_identifiers(event)
    rows = []
    for other in ids[1:]:
        a, b = sorted((ids[0], other))
        rows.append({"id_a": a, "id_b": b, "first_seen": event["event_time"],
                     "event_id": event["event_id"]})
    return rows


def primary_identifier(event: dict) -> str | None:
    ids = event_identifiers(event)
    return ids[0] if ids else None


ANONYMOUS_KEY = re.compile(r"K[0-9a-f]{16}")


def implicit_key(identifier: str) -> str:
    """The customer key of an identifier that is in no component (the view computes the same:
    'K' || left(sha256(identifier), 16)); accounts are their own key."""
    if identifier.startswith(ACCOUNT + ":"):
        return identifier[len(ACCOUNT) + 1:]
    return "K" + hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]


def id_type(identifier: str) -> str:
    return identifier.split(":", 1)[0]


# -- the graph --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IdentityRules:
    #: a non-account identifier directly linked to more than this many distinct accounts (or
    #: e-mails) is treated as shared (a household device) and links nothing.
    max_accounts_per_identifier: int = 1


class GraphStore(Protocol):
    def links_touching(self, identifiers: list[str]) -> list[tuple[str, str, int, str]]:
        """Stored links (id_a, id_b, first_seen ms, event_id) touching ``identifiers``."""
    def keys_of(self, identifiers: list[str]) -> dict[str, str]: ...
    def shared_among(self, identifiers: list[str]) -> set[str]: ...


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}
        self.accounts: dict[str, str | None] = {}

    def add(self, node: str) -> None:
        if node not in self.parent:
            self.parent[node] = node
            self.accounts[node] = node if node.startswith(ACCOUNT + ":") else None

    def find(self, node: str) -> str:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        acc_a, acc_b = self.accounts[ra], self.accounts[rb]
        if acc_a and acc_b and acc_a != acc_b:
            return False                 # never two accounts in one customer
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.accounts[ra] = self.accounts[ra] or self.accounts[rb]
        return True


#: A link's first sighting: (event time in ms, event id). The smallest wins, whatever the order
#: in which batches saw the events, so the graph does not depend on batch boundaries.
Sighting = tuple[int, str]


def load_subgraph(store: GraphStore, seeds: Iterable[str], max_rounds: int = 20
                  ) -> dict[tuple[str, str], Sighting]:
    """Every stored link of the components around ``seeds`` (breadth first)."""
    links: dict[tuple[str, str], Sighting] = {}
    seen: set[str] = set()
    frontier = sorted(set(seeds))
    for _ in range(max_rounds):
        if not frontier:
            break
        seen.update(frontier)
        found = store.links_touching(frontier)
        nxt = set()
        for a, b, first_seen, event_id in found:
            k = (a, b)
            if k not in links or (first_seen, event_id) < links[k]:
                links[k] = (first_seen, event_id)
            for n in (a, b):
                if n not in seen:
                    nxt.add(n)
        frontier = sorted(nxt)
    return links


def components(links: dict[tuple[str, str], Sighting], rules: IdentityRules,
               known_shared: Iterable[str] = ()) -> tuple[dict[str, str], set[str]]:
    """(node -> root, shared nodes). Links in a fixed order (first seen, then ids). A node
    once found shared stays shared (``known_shared``), even after the links that showed it
    were erased."""
    strong: dict[str, set[str]] = {}
    for a, b in links:
        for x, y in ((a, b), (b, a)):
            if id_type(y) in (ACCOUNT, EMAIL) and id_type(x) != ACCOUNT:
                strong.setdefault(x, set()).add(y)
    shared = set(known_shared)
    for node, neighbours in strong.items():
        accounts = sum(1 for n in neighbours if id_type(n) == ACCOUNT)
        emails = sum(1 for n in neighbours if id_type(n) == EMAIL)
        if max(accounts, emails) > rules.max_accounts_per_identifier:
            shared.add(node)
    uf = _UnionFind()
    for (a, b), _ in sorted(links.items(), key=lambda item: (item[1], item[0])):
        uf.add(a)
        uf.add(b)
        if a in shared or b in shared:
            continue
        uf.union(a, b)
    return {n: uf.find(n) for n in uf.parent}, shared


def stitch(batch_links: list[dict], store: GraphStore, rules: IdentityRules,
           erased: set[str], batch_id: str, now_ms: int) -> dict[str, list[dict]]:
    """New identity rows for one micro-batch: ``identity_links`` (new links),
    ``identity_map`` (every identifier of an affected component whose key is new or changed)
    and ``identity_merges`` (key changes: merges, splits, an account joining)."""
    new_links: dict[tuple[str, str], dict] = {}
    for row in batch_links:
        if row["id_a"] in erased or row["id_b"] in erased:
            continue
        k = (row["id_a"], row["id_b"])
        best = new_links.get(k)
        if best is None or (row["first_seen"], row["event_id"]) < (best["first_seen"],
                                                                     best["event_id"]):
            new_links[k] = row
    if not new_links:
        return {}
    seeds = {n for k in new_links for n in k}
    links = load_subgraph(store, seeds)
    links = {k: v for k, v in links.items() if k[0] not in erased and k[1] not in erased}
    # A link is (re)written when it is new or this batch saw it earlier than the stored row
    # (a late event): identity_links keeps the earliest sighting (merge 'replace').
    changed_links = {}
    for k, row in new_links.items():
        sighting = (row["first_seen"], row["event_id"])
        if k not in links or sighting < links[k]:
            links[k] = sighting
            changed_links[k] = row
    all_nodes = sorted({n for k in links for n in k})
    roots, shared = components(links, rules, store.shared_among(all_nodes))
    nodes = sorted(roots)
    before = store.keys_of(nodes)
    members: dict[str, list[str]] = {}
    for node in nodes:
        members.setdefault(roots[node], []).append(node)
    was_shared = store.shared_among(nodes)
    map_rows, merges = [], {}
    earliest: dict[str, Sighting] = {}
    for (a, b), sighting in links.items():
        for n in (a, b):
            if n not in earliest or sighting < earliest[n]:
                earliest[n] = sighting
    for root, group in sorted(members.items()):
        account = next((n for n in group if id_type(n) == ACCOUNT), None)
        if account:
            key = implicit_key(account)
        else:  # the earliest-seen identifier's key: new members do not change it
            key = min((earliest[n][0], implicit_key(n)) for n in group)[1]
        for node in group:
            old_key = before.get(node)
            if old_key != key or (node in shared and node not in was_shared):
                map_rows.append({"identifier": node, "id_type": id_type(node),
                                 "customer_key": key, "shared": node in shared,
                                 "batch_id": batch_id, "updated_at": now_ms})
            if old_key is not None and old_key != key:
                m = merges.setdefault((old_key, key), {
                    "batch_id": batch_id, "from_key": old_key, "to_key": key, "kind": "merge",
                    "identifiers": 0, "merged_at": now_ms})
                m["identifiers"] += 1
    # An old key whose identifiers now have different keys was split (a shared device found).
    after: dict[str, set[str]] = {}
    for row in map_rows:
        if row["identifier"] in before:
            after.setdefault(before[row["identifier"]], set()).add(row["customer_key"])
    for (old_key, key), m in merges.items():
        kept = any(before.get(n) == old_key and n not in {r["identifier"] for r in map_rows}
                   for n in nodes)
        if kept or len(after.get(old_key, ())) > 1:
            m["kind"] = "split"
    return {"identity_links": [
                {"id_a": r["id_a"], "id_b": r["id_b"], "first_seen": r["first_seen"],
                 "event_id": r["event_id"], "batch_id": batch_id}
                for _, r in sorted(changed_links.items())],
            "identity_map": map_rows,
            "identity_merges": [merges[k] for k in sorted(merges)]}


class MemoryGraphStore:
    """The graph state in memory (evaluation, tests): apply() what stitch() returned."""

    def __init__(self):
        self.adjacent: dict[str, dict[tuple[str, str], Sighting]] = {}
        self.keys: dict[str, str] = {}
        self.shared: set[str] = set()

    def links_touching(self, identifiers):
        out = {}
        for n in identifiers:
            out.update(self.adjacent.get(n, {}))
        return [(a, b, t, e) for (a, b), (t, e) in out.items()]

    def keys_of(self, identifiers):
        return {n: self.keys[n] for n in identifiers if n in self.keys}

    def shared_among(self, identifiers):
        return {n for n in identifiers if n in self.shared}

    def apply(self, rows: dict[str, list[dict]]) -> None:
        for r in rows.get("identity_links", []):  # merge 'replace': stitch() emits only
            k = (r["id_a"], r["id_b"])             # new links and earlier sightings
            for n in k:
                self.adjacent.setdefault(n, {})[k] = (r["first_seen"], r["event_id"])
        for r in rows.get("identity_map", []):
            self.keys[r["identifier"]] = r["customer_key"]
            if r["shared"]:
                self.shared.add(r["identifier"])

    def key(self, identifier: str) -> str:
        return self.keys.get(identifier) or implicit_key(identifier)


class WarehouseGraphStore:
    """The graph state in the warehouse, read through ``Warehouse.select_where_in`` and
    ``Warehouse.query`` with SQL every backend (DuckDB, PostgreSQL, BigQuery) accepts."""

    def __init__(self, warehouse):
        self.warehouse = warehouse

    def links_touching(self, identifiers):
        cols = ("id_a", "id_b", self.warehouse.epoch_ms_sql("first_seen"),  # any dialect
                "event_id")
        found = set(self.warehouse.select_where_in("identity_links", "id_a", identifiers, cols))
        found |= set(self.warehouse.select_where_in("identity_links", "id_b", identifiers, cols))
        return sorted({(a, b, int(t), e) for a, b, t, e in found})

    def keys_of(self, identifiers):
        return dict(self.warehouse.select_where_in(
            "identity_map", "identifier", identifiers, ("identifier", "customer_key")))

    def shared_among(self, identifiers):
        return {r[0] for r in self.warehouse.select_where_in(
            "identity_map", "identifier", identifiers, ("identifier",), where="shared")}

    def erased(self) -> set[str]:
        return {r[0] for r in self.warehouse.query("SELECT identifier FROM erasures")}


# -- touchpoint facts -------------------------------------------------------------------------

def touchpoint_row(event: dict, score: dict | None) -> dict | None:
    """One fact per event with a customer identifier; ``score`` is the sentiment of its text."""
    identifier = primary_identifier(event)
    if identifier is None:
        return None
    role = event["_role"]
    row = {"event_id": event["event_id"], "identifier": identifier, "channel": role,
           "event_time": event["event_time"], "brand": event.get("brand") or "(none)",
           "polarity": score["polarity"] if score else None,
           "label": score["label"] if score else None,
           "order_id": None, "order_value": None, "survey_type": None, "score": None,
           "aimed_at_brand": None}
    if role == "social":
        row["touchpoint"] = f"{event['platform']}:{event['event_type']}"
        row["aimed_at_brand"] = bool(event.get("aimed_at_brand"))
    elif role == "web":
        row["touchpoint"] = f"web:{event['event_type']}"
        row["order_id"] = event.get("order_id")
        row["order_value"] = event.get("order_value")
    else:
        row["touchpoint"] = f"survey:{event.get('touchpoint') or '(unknown)'}"
        row["survey_type"] = event["survey_type"]
        row["score"] = event["score"]
    return row


def is_erased(event: dict, erased: set[str]) -> bool:
    return bool(erased) and any(i in erased for i in event_identifiers(event))


# -- evaluation -------------------------------------------------------------------------------

def pairwise_scores(predicted: list[str], truth: list[str]) -> dict:
    """Pairwise precision and recall over items: pairs predicted in one cluster vs pairs
    truly in one cluster (counted from the contingency table, not pair by pair)."""
    def pairs(counts):
        return sum(n * (n - 1) // 2 for n in counts.values())

    both = pairs(Counter(zip(predicted, truth)))
    pred, true = pairs(Counter(predicted)), pairs(Counter(truth))
    return {"items": len(truth), "predicted_pairs": pred, "true_pairs": true,
            "correct_pairs": both,
            "precision": both / pred if pred else 1.0, "recall": both / true if true else 1.0}


def evaluate_stitching(records, batches: int = 5, rules: IdentityRules = IdentityRules(),
                       key: bytes = DEMO_KEY) -> dict:
    """Run generated records (``GeneratedRecord``) through pseudonymisation and stitching in
    ``batches`` micro-batches (arrival order, first occurrence of each event id) and score
    the final attribution of every event whose true customer is known."""
    pseudo = Pseudonymiser(key)
    events, truth, seen = [], {}, set()
    for record in records:
        event = record.event
        if event is None or event["event_id"] in seen or record.truth.get("kind") == "malformed":
            continue
        seen.add(event["event_id"])
        event = pseudo.apply(dict(event, _role=record.role))
        events.append(event)
        truth[event["event_id"]] = record.truth.get("customer_id")
    store = MemoryGraphStore()
    size = max(1, -(-len(events) // batches))
    for i in range(0, len(events), size):
        links = [link for e in events[i:i + size] for link in event_links(e)]
        store.apply(stitch(links, store, rules, set(), f"eval{i}", 0))
    oracle = _UnionFind()
    for e in events:
        for link in event_links(e):
            oracle.add(link["id_a"])
            oracle.add(link["id_b"])
            oracle.parent[oracle.find(link["id_b"])] = oracle.find(link["id_a"])
    predicted, true, linkable, kinds = [], [], [], []
    for event in events:
        customer = truth[event["event_id"]]
        identifier = primary_identifier(event)
        if customer is None or identifier is None:
            continue
        predicted.append(store.key(identifier))
        true.append(customer)
        linkable.append((customer, oracle.find(identifier) if identifier in oracle.parent
                         else identifier))
        kinds.append(identifier.split(":", 1)[0])
    report = pairwise_scores(predicted, true)
    # The ceiling: pairs of one customer that any chain of links connects at all (no rules).
    ceiling = pairwise_scores(linkable, true)
    report["linkable_pairs"] = ceiling["correct_pairs"]
    # Where the unlinkable pairs come from: events outside their customer's main group (the
    # one links connect to the shop account; without an account event, the largest), by the
    # type of their identifier (sh: a handle never linked to the account; ck: a device never
    # logged in on; em/ph: contact data never seen with the account).
    sizes = Counter(linkable)
    main: dict[str, tuple] = {}
    for group, kind in sorted(zip(linkable, kinds), key=lambda gk: (
            gk[1] != ACCOUNT, -sizes[gk[0]], str(gk[0]))):
        main.setdefault(group[0], group)
    outside = Counter(kind for group, kind in zip(linkable, kinds) if group != main[group[0]])
    report["unlinkable_events_by_identifier"] = dict(sorted(outside.items()))
    report["recall_of_linkable"] = (report["correct_pairs"] / ceiling["correct_pairs"]
                                    if ceiling["correct_pairs"] else 1.0)
    report.update(events=len(events), batches=batches,
                  customers=len(set(true)), profiles=len(set(predicted)))
    return report
