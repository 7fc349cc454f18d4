"""Schema registries: where the Avro schema behind a Confluent wire-format schema id is found.

Two implementations share one small interface:

* :class:`FileSchemaRegistry` (the default): ``registry.json`` files that give every ``.avsc``
  file a permanent id. The schemas shipped with cx360 are always loaded; further folders (for a
  team's own schema versions) can be added and are searched after them.
* :class:`ConfluentSchemaRegistry`: the Confluent Schema Registry REST API
  (``GET /schemas/ids/{id}``, ``GET /subjects/{subject}/versions/latest``,
  ``POST /subjects/{subject}/versions``), with basic auth from the environment.

Subjects follow the record-name strategy (``cx360.events.SocialEvent``), so topics can be
renamed freely. Both registries are picklable and load lazily: Beam ships them to workers.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from typing import Iterable

PACKAGED_DIR = pathlib.Path(__file__).resolve().parent

SOCIAL = "cx360.events.SocialEvent"
WEB = "cx360.events.WebEvent"
SURVEY = "cx360.events.SurveyEvent"
DEAD_LETTER = "cx360.ops.DeadLetter"

#: The event kind (topic role) each subject is read as.
SUBJECT_BY_ROLE = {"social": SOCIAL, "web": WEB, "survey": SURVEY, "dead_letter": DEAD_LETTER}


class RegistryError(Exception):
    """The registry could not answer (unreachable, misconfigured)."""


class UnknownSchemaId(KeyError):
    """No schema is registered under this id."""


class SchemaRegistry(ABC):
    @abstractmethod
    def schema_by_id(self, schema_id: int) -> dict:
        """The schema (parsed JSON) registered under ``schema_id``; raises UnknownSchemaId."""

    @abstractmethod
    def latest(self, subject: str) -> tuple[int, dict]:
        """The id and schema of the newest version of ``subject``."""

    @abstractmethod
    def register(self, subject: str, schema: dict) -> int:
        """The id of ``schema`` under ``subject``, registering it if the registry allows."""


def canonical(schema: dict) -> str:
    """A stable text form used to compare schemas (docs and key order do not matter)."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k != "doc"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(schema), separators=(",", ":"))


class FileSchemaRegistry(SchemaRegistry):
    """Schemas from ``registry.json`` files: the packaged one, then any extra folders."""

    def __init__(self, extra_dirs: Iterable[str | os.PathLike] = ()):
        self.dirs = [PACKAGED_DIR, *(pathlib.Path(d) for d in extra_dirs)]
        self._by_id: dict[int, dict] | None = None
        self._subjects: dict[str, list[tuple[int, int]]] = {}

    def __getstate__(self):
        return {"dirs": self.dirs}

    def __setstate__(self, state):
        self.__init__(state["dirs"][1:])

    def _load(self) -> dict[int, dict]:
        if self._by_id is not None:
            return self._by_id
        by_id: dict[int, dict] = {}
        subjects: dict[str, list[tuple[int, int]]] = {}
        for folder in self.dirs:
            index_file = folder / "registry.json"
            if not index_file.exists():
                raise RegistryError(f"no registry.json in schema folder {folder}")
            index = json.loads(index_file.read_text(encoding="utf-8"))
            for entry in index["schemas"]:
                schema_id = int(entry["id"])
                schema = json.loads((folder / entry["file"]).read_text(encoding="utf-8"))
                if schema_id in by_id and canonical(by_id[schema_id]) != canonical(schema):
                    raise RegistryError(
                        f"schema id {schema_id} is used twice with different schemas "
                        f"({folder / entry['file']})")
                by_id[schema_id] = schema
                subjects.setdefault(entry["subject"], []).append(
                    (int(entry["version"]), schema_id))
        for versions in subjects.values():
            versions.sort()
        self._by_id, self._subjects = by_id, subjects
        return by_id

    def schema_by_id(self, schema_id: int) -> dict:
        try:
            return self._load()[schema_id]
        except KeyError:
            raise UnknownSchemaId(schema_id) from None

    def latest(self, subject: str) -> tuple[int, dict]:
        self._load()
        if subject not in self._subjects:
            raise RegistryError(f"subject {subject!r} is not in the file registry")
        schema_id = self._subjects[subject][-1][1]
        return schema_id, self._by_id[schema_id]

    def register(self, subject: str, schema: dict) -> int:
        """File registries are edited by hand; this only finds an identical registered schema."""
        self._load()
        wanted = canonical(schema)
        for _, schema_id in self._subjects.get(subject, []):
            if canonical(self._by_id[schema_id]) == wanted:
                return schema_id
        raise RegistryError(
            f"schema for {subject!r} is not registered: add the .avsc file with a new id to a "
            "registry.json")


class ConfluentSchemaRegistry(SchemaRegistry):
    """Client for the Confluent Schema Registry REST API (and compatible servers)."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.username = username or os.environ.get("CX360_SCHEMA_REGISTRY_USER")
        self._password = password
        self.timeout = timeout
        self._cache: dict[int, dict] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show credentials
        return f"ConfluentSchemaRegistry({self.url!r})"

    def __getstate__(self):
        return {"url": self.url, "username": self.username, "password": self._password,
                "timeout": self.timeout}

    def __setstate__(self, state):
        self.__init__(state["url"], state["username"], state["password"], state["timeout"])

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/vnd.schemaregistry.v1+json")
        if data is not None:
            request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        password = self._password or os.environ.get("CX360_SCHEMA_REGISTRY_PASSWORD")
        if self.username:
            token = base64.b64encode(f"{self.username}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read().decode(errors="replace")
            if exc.code == 404:
                raise KeyError(payload) from None
            raise RegistryError(f"schema registry answered {exc.code}: {payload}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"schema registry {self.url} unreachable: {exc}") from None

    def schema_by_id(self, schema_id: int) -> dict:
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
        try:
            answer = self._request("GET", f"/schemas/ids/{schema_id}")
        except KeyError:
            raise UnknownSchemaId(schema_id) from None
        schema = json.loads(answer["schema"])
        with self._lock:
            self._cache[schema_id] = schema
        return schema

    def latest(self, subject: str) -> tuple[int, dict]:
        quoted = urllib.parse.quote(subject, safe="")
        try:
            answer = self._request("GET", f"/subjects/{quoted}/versions/latest")
        except KeyError:
            raise RegistryError(f"subject {subject!r} is not registered") from None
        return int(answer["id"]), json.loads(answer["schema"])

    def register(self, subject: str, schema: dict) -> int:
        quoted = urllib.parse.quote(subject, safe="")
        answer = self._request("POST", f"/subjects/{quoted}/versions",
                               {"schema": json.dumps(schema)})
        return int(answer["id"])


def registry_from_url(url: str | None) -> SchemaRegistry:
    """``None``/``''``: packaged schemas; ``file:DIR[,DIR]`` or a folder: packaged + those
    folders; ``http(s)://...``: a Confluent-compatible Schema Registry."""
    if not url:
        return FileSchemaRegistry()
    if url.startswith(("http://", "https://")):
        return ConfluentSchemaRegistry(url)
    path = url[len("file:"):] if url.startswith("file:") else url
    path = path.lstrip("/") if path.startswith("///") else path
    folders = [p for p in path.split(",") if p]
    for folder in folders:
        if not (pathlib.Path(folder) / "registry.json").exists():
            raise RegistryError(f"schema folder {folder!r} has no registry.json")
    return FileSchemaRegistry(folders)
