"""chatforge's own datatrove steps: what the library lacks for an offline, reproducible web pipeline.

- `HtmlFolderReader`: datatrove reads WARC/WET, JSONL and Parquet, but not a folder of saved pages.
- `TolerantWarcReader`: datatrove's WarcReader stops the whole task at the first broken record or file; real
  crawls have both, so this one counts them, logs them and goes on.
- `OfflineURLFilter`: datatrove's URLFilter, with tldextract kept offline (its bundled suffix list).
- `Pycld2LanguageFilter`: datatrove's LanguageFilter downloads a fastText model at run time; pycld2 ships
  its model inside the wheel and was the most accurate and fastest offline option measured here.
- `SplitAssigner`: tags each document train or validation by a hash of its id, so reruns and any number of
  workers give the same split.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Iterable
from pathlib import PurePosixPath

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import URLFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader
from loguru import logger

# datatrove's URLFilter reads tldextract's renamed `registered_domain` (same value), once per URL.
warnings.filterwarnings("ignore", message="The 'registered_domain' property", category=DeprecationWarning)

_CANONICAL = re.compile(r"<link[^>]+rel=[\"']canonical[\"'][^>]*href=[\"']([^\"']+)[\"']", re.IGNORECASE)
_OG_URL = re.compile(r"<meta[^>]+property=[\"']og:url[\"'][^>]*content=[\"']([^\"']+)[\"']", re.IGNORECASE)


def page_url(html: str, fallback: str) -> str:
    """The page's own URL from `<link rel="canonical">` or `og:url`, else `fallback`."""
    head = html[:20000]
    for pattern in (_CANONICAL, _OG_URL):
        match = pattern.search(head)
        if match:
            return match.group(1).strip()
    return fallback


class HtmlFolderReader(BaseDiskReader):
    """Read every `*.html`/`*.htm` file under a folder as one document (text = the raw HTML).

    The URL comes from the page's canonical link when it has one, else `file://<relative path>`. Bytes that are
    not UTF-8 are decoded with the charset cchardet detects (pages as crawlers saved them use many).
    """

    name = "📄 HTML folder"

    def __init__(self, data_folder, glob_pattern: str | None = "**/*.htm*", **kwargs) -> None:
        super().__init__(data_folder, glob_pattern=glob_pattern, **kwargs)

    def read_file(self, filepath: str) -> Iterable[Document]:
        with self.data_folder.open(filepath, "rb") as f:
            raw = f.read()
        with self.track_time():
            html = _decode(raw)
            if html is None:
                self.stat_update("undecodable")
                return
            url = page_url(html, f"file://{PurePosixPath(filepath)}")
            document = self.get_document_from_dict({"text": html, "id": filepath, "url": url}, filepath, 0)
        if document:
            yield document


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        import cchardet

        encoding = cchardet.detect(raw)["encoding"]
        if not encoding:
            return None
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            return None


class TolerantWarcReader(WarcReader):
    """WarcReader that skips broken records and files (counted as `bad_records` and `broken_files`)."""

    name = "🕷 WARC (tolerant)"

    def read_file(self, filepath: str) -> Iterable[Document]:
        from datatrove.pipeline.readers.warc import process_record
        from warcio.archiveiterator import ArchiveIterator

        index = 0
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for index, record in enumerate(ArchiveIterator(f)):
                    with self.track_time():
                        try:
                            data = process_record(record)
                        except Exception as err:  # noqa: BLE001 - any malformed record is skipped, not fatal
                            self.stat_update("bad_records")
                            logger.warning(f"{filepath}: record {index} skipped ({type(err).__name__}: {err})")
                            continue
                        document = self.get_document_from_dict(data, filepath, index) if data else None
                    if document:
                        yield document
        except Exception as err:  # noqa: BLE001 - warcio raises several types on a corrupt file
            self.stat_update("broken_files")
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            logger.warning(f"{filepath}: unreadable after record {index} ({first_line}); going on with the next file")


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter (its shipped blocklists plus the recipe's own) without network access.

    The stock filter builds `tldextract.TLDExtract()`, which tries to download the public suffix list on first
    use and logs a connection error offline; the suffix list bundled with tldextract gives the same domains.
    """

    name = "😈 URL filter (offline)"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        # `.example`/`.test` are reserved test TLDs (RFC 2606) missing from the suffix list: without them a
        # blocked domain such as casino.example would never match
        self.tldextractor = TLDExtract(suffix_list_urls=(), extra_suffixes=("example", "test"))


class Pycld2LanguageFilter(BaseFilter):
    """Keep documents whose main language (pycld2) is one of `languages` with at least `threshold` confidence.

    Sets `metadata["language"]` and `metadata["language_score"]` (the share of text in the main language,
    0-1) on every document; removed ones get the reason `language_<code>` (or `language_unknown`).
    """

    name = "🌍 Language ID (pycld2)"
    _requires_dependencies = ["pycld2"]

    def __init__(self, languages: Iterable[str] = ("en",), threshold: float = 0.65, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.languages = tuple(languages)
        self.threshold = threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        language, score = detect_language(doc.text)
        doc.metadata["language"] = language
        doc.metadata["language_score"] = score
        if language in self.languages and score >= self.threshold:
            return True
        return False, f"language_{language}"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, share of the text in that language) by pycld2; ("unknown", 0.0) when it cannot tell."""
    import pycld2

    clean = _CONTROL.sub(" ", text)  # pycld2 rejects control characters and lone surrogates
    try:
        reliable, _, details = pycld2.detect(clean)
    except pycld2.error:
        return "unknown", 0.0
    _name, code, percent, _score = details[0]
    if code == "un" or not reliable:
        return "unknown", 0.0
    return code.split("-")[0], percent / 100.0


class SplitAssigner(PipelineStep):
    """Set `metadata["split"]` to "validation" for a stable hash-chosen `fraction` of documents, else "train"."""

    name = "🔀 Split"
    type = "🔀 - SPLIT"

    def __init__(self, validation_fraction: float = 0.05) -> None:
        super().__init__()
        self.validation_fraction = validation_fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for document in data:
            key = str(document.metadata.get("url") or document.id)
            bucket = zlib.crc32(key.encode("utf-8")) % 10_000
            split = "validation" if bucket < self.validation_fraction * 10_000 else "train"
            document.metadata["split"] = split
            self.stat_update(split)
            yield document
