"""The `search` tool: BM25 over a local corpus (bm25s), returning short snippets that fit a context window.

>>> index = SearchIndex.from_documents([{"id": "a", "title": "Brenn", "text": "Brenn is a town in the valley."}])
>>> [(hit.id, hit.snippet) for hit in index.search("where is Brenn?", k=3)]
[('a', 'Brenn is a town in the valley.')]
>>> index.save("outputs/search_index"); SearchIndex.load("outputs/search_index")
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chatforge.configs import RecipeError
from chatforge.tools._bm25 import bm25s

DOCUMENTS_FILE = "documents.jsonl"
CONFIG_FILE = "search_index.json"
STOPWORDS = "en"  # bm25s's English stopword list; no stemming (names and numbers matter most here)
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class SearchDocument:
    """One indexed document."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class SearchHit:
    """One result: the document's id and title, its BM25 score, and a snippet of at most `snippet_chars`."""

    id: str
    score: float
    snippet: str
    title: str = ""


def _as_documents(docs: Sequence[str | dict]) -> list[SearchDocument]:
    """Plain strings (ids "0", "1", ...) or dicts with "text" and optional "title"/"id"; checks ids are unique."""
    documents = []
    for position, doc in enumerate(docs):
        if isinstance(doc, str):
            documents.append(SearchDocument(str(position), doc))
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            documents.append(SearchDocument(str(doc.get("id", position)), doc["text"], str(doc.get("title") or "")))
        else:
            raise RecipeError(f"search document {position} must be a string or a dict with a 'text' string: {doc!r}")
    if not documents:
        raise RecipeError("cannot build a search index from no documents")
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise RecipeError(f"search document ids must be unique; {duplicate!r} appears more than once")
    return documents


def make_snippet(text: str, terms: set[str], max_chars: int) -> str:
    """The passage of `text` around its first sentence with the most query `terms`, cut to `max_chars`.

    Hand-written: bm25s ranks whole documents and has no passage highlighter; this is a few lines.
    """
    text = text.strip()
    if len(text) <= max_chars:
        return text
    sentences = [s for s in SENTENCE_SPLIT.split(text) if s.strip()]
    matches = [len(terms & set(re.findall(r"\w+", s.lower()))) for s in sentences]
    start = matches.index(max(matches)) if matches else 0
    snippet = ""
    for sentence in sentences[start:]:
        candidate = f"{snippet} {sentence}".strip()
        if len(candidate) > max_chars:
            break
        snippet = candidate
    if snippet:
        return snippet
    # The best sentence alone is too long: a window from a little before its first query term.
    sentence = sentences[start]
    found = [m.start() for t in terms if (m := re.search(rf"\b{re.escape(t)}\b", sentence.lower()))]
    begin = max(0, min(found, default=0) - max_chars // 4)
    if begin and " " in sentence[begin : begin + max_chars // 4]:
        begin = sentence.index(" ", begin) + 1
    window = sentence[begin : begin + max_chars - 2]  # room for the two ellipses
    if begin + len(window) < len(sentence) and " " in window:
        window = window.rsplit(" ", 1)[0]
    return ("…" if begin else "") + window + ("…" if begin + len(window) < len(sentence) else "")


class SearchIndex:
    """A BM25 index of documents (`bm25s`, English stopwords, no stemming) with snippets and save/load."""

    def __init__(self, documents: list[SearchDocument], retriever: bm25s.BM25, snippet_chars: int) -> None:
        if snippet_chars < 20:
            raise RecipeError(f"snippet_chars must be at least 20, got {snippet_chars}")
        self.documents = documents
        self.retriever = retriever
        self.snippet_chars = snippet_chars

    @classmethod
    def from_documents(cls, docs: Sequence[str | dict], snippet_chars: int = 400) -> SearchIndex:
        """Index `docs` (strings, or dicts with "text" and optional "title" and "id"); titles are searched too."""
        documents = _as_documents(docs)
        tokens = bm25s.tokenize([f"{d.title}\n{d.text}" for d in documents], stopwords=STOPWORDS, show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(documents, retriever, snippet_chars)

    def __len__(self) -> int:
        return len(self.documents)

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        """The `k` best documents for `query` with a positive score, best first (none if no query word is known)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        words = bm25s.tokenize([query], stopwords=STOPWORDS, return_ids=False, show_progress=False)[0]
        if not any(word in self.retriever.vocab_dict for word in words):
            return []
        positions, scores = self.retriever.retrieve([words], k=min(k, len(self.documents)), show_progress=False)
        terms = set(words)
        hits = []
        for position, score in zip(positions[0], scores[0]):
            if score <= 0:
                continue
            document = self.documents[int(position)]
            snippet = make_snippet(document.text, terms, self.snippet_chars)
            hits.append(SearchHit(document.id, round(float(score), 4), snippet, document.title))
        return hits

    def save(self, folder: str | Path) -> Path:
        """Write the index, its vocabulary and the documents to `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), show_progress=False)
        with open(folder / DOCUMENTS_FILE, "w", encoding="utf-8") as f:
            for d in self.documents:
                f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
        (folder / CONFIG_FILE).write_text(json.dumps({"snippet_chars": self.snippet_chars}) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        """Load an index written by `save`."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise RecipeError(f"no search index in {folder} (missing {CONFIG_FILE})")
        config = json.loads((folder / CONFIG_FILE).read_text())
        with open(folder / DOCUMENTS_FILE, encoding="utf-8") as f:
            documents = [SearchDocument(**json.loads(line)) for line in f]
        retriever = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(documents, retriever, config["snippet_chars"])


def format_hits(hits: list[SearchHit]) -> str:
    """The tool response text for a list of hits."""
    if not hits:
        return "No results."
    # One line per hit, titled: every token counts in a 256-position context.
    return "\n".join(f"[{rank}] {hit.title or hit.id}: {hit.snippet}" for rank, hit in enumerate(hits, 1))
