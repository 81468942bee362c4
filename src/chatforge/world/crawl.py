"""A simulated web crawl of the world: every document once plus labelled noise, for a FineWeb-style pipeline.

A page's `kind` says what the pipeline should do with it: keep ("good", with its `pii` scrubbed) or drop it as a
copy ("exact_duplicate", "near_duplicate"), by quality ("spam"), by language ("non_english") or by URL ("blocked").
>>> write_crawl(build_crawl(world, CrawlConfig(seed=0)), "data/crawl")  # crawl.warc.gz + labels.jsonl
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from html import unescape
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

from chatforge.configs import RecipeError
from chatforge.world.entities import World
from chatforge.world.html import render_page
from chatforge.world.names import slugify
from chatforge.world.render import MONTHS, Document

KINDS = ("good", "exact_duplicate", "near_duplicate", "spam", "non_english", "blocked")
LANGUAGES = ("en", "de", "fr", "es")
# Invented block-listed domains (pass them as URLFilter(extra_domains=...)); none holds a banned word.
BLOCKED_DOMAINS: tuple[str, ...] = (
    "luckyspins-casino.example", "jackpotpalace.example", "megawin-slots.example",
    "hotsingles-dating.example", "adultcams-live.example", "velvetnights-club.example",
)  # fmt: skip
# Hosts and paths whose URL holds a word of datatrove's banned_words.txt ("porn", "xxx").
BANNED_WORD_URLS = ("https://free-porn-clips.example/watch/", "https://www.hotvideos.example/xxx/")
MIRROR_SITES = ("www.mirrorpages.example", "archive.copycat.example", "www.feedreader.example")
SPAM_SITES = ("www.best-deals-247.example", "cheap-stuff-online.example", "www.topoffers.example")
MIN_NEAR_JACCARD = 0.88  # 5-gram Jaccard kept by near duplicates: MinHash 14x8 finds them with p > 0.998
_BLOCK = re.compile(r"^      <(h1|h2|p)>(.*)</\1>$", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")
_LIMITS = {"exact_duplicate_fraction": 0.5, "near_duplicate_fraction": 0.5, "pii_fraction": 0.5}
_LIMITS |= {"spam_pages": 100_000, "non_english_pages": 100_000, "blocked_pages": 100_000}
Blocks = list[tuple[str, str]]  # ("h2" | "p" | "a", text) blocks of an article, as render_page takes them


@dataclass(frozen=True)
class CrawlConfig:
    """How much of each kind of noise to mix into the crawl of a world's documents."""

    seed: int = 0
    exact_duplicate_fraction: float = 0.05
    near_duplicate_fraction: float = 0.05
    spam_pages: int = 60
    non_english_pages: int = 60
    pii_fraction: float = 0.1
    blocked_pages: int = 30

    def validate(self) -> None:
        """Raise RecipeError naming the first field outside its range."""
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise RecipeError(f"CrawlConfig.seed must be an integer, got {self.seed!r}")
        for name, high in _LIMITS.items():
            value, fraction = getattr(self, name), isinstance(high, float)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float) if fraction else int)
                or not 0 <= value <= high
            ):
                expected = f"{'a number' if fraction else 'an integer'} in [0, {high}]"
                raise RecipeError(f"CrawlConfig.{name} must be {expected}, got {value!r}")
        total = self.exact_duplicate_fraction + self.near_duplicate_fraction + self.pii_fraction
        if total > 0.9:
            raise RecipeError(
                "CrawlConfig.exact_duplicate_fraction + near_duplicate_fraction + pii_fraction must be <= 0.9 "
                f"(they pick disjoint good pages), got {total:g}"
            )


@dataclass(frozen=True)
class CrawlPage:
    """One crawled page and its ground-truth label (what a cleaning pipeline should do with it)."""

    url: str
    html: str
    kind: str
    language: str = "en"
    source_url: str | None = None
    document_id: str | None = None
    pii: tuple[str, ...] = ()

    def label(self) -> dict:
        """The labels.jsonl record (everything but the html)."""
        record = asdict(self)
        del record["html"]
        record["pii"] = list(self.pii)
        return record


def _rng(world: World, config: CrawlConfig, *parts: object) -> random.Random:
    """An independent generator per decision (str seeds are hashed with SHA-512, so runs are reproducible)."""
    return random.Random(":".join(str(p) for p in ("crawl", world.config.seed, config.seed, *parts)))


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The set of lowercased word n-grams of `text`."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _jaccard(a: str, b: str) -> float:
    sa, sb = word_shingles(a), word_shingles(b)
    return len(sa & sb) / len(sa | sb)


@dataclass(frozen=True)
class _Article:
    """A document's page, decomposed so it can be re-rendered with edits."""

    site: str
    path: str
    style: str
    title: str
    blocks: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, doc: Document) -> _Article:
        body = doc.html.split("<article>", 1)[1].split("</article>", 1)[0]
        found = [(tag, unescape(text)) for tag, text in _BLOCK.findall(body)]
        parts = urlsplit(doc.url)
        return cls(parts.netloc, parts.path, doc.style, found[0][1], tuple(found[1:]))

    def text(self, blocks: Blocks | None = None) -> str:
        return "\n".join([self.title] + [t for _, t in (self.blocks if blocks is None else blocks)])


# ---- near duplicates: one small text edit each (plus, half of the time, another site's chrome)


def _add_dateline(blocks: Blocks, rng: random.Random) -> Blocks | None:
    line = ("p", f"Last updated on {rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2019, 2024)}.")
    return [line, *blocks] if rng.random() < 0.5 else [*blocks, line]


def _append_sentence(blocks: Blocks, rng: random.Random) -> Blocks | None:
    last = max(i for i, (tag, _) in enumerate(blocks) if tag == "p")
    extra = rng.choice(("Thanks for reading.", "Share this story with a friend.", "Comments are closed for now."))
    return [*blocks[:last], ("p", f"{blocks[last][1]} {extra}"), *blocks[last + 1 :]]


def _drop_sentence(blocks: Blocks, rng: random.Random) -> Blocks | None:
    multi = [i for i, (tag, text) in enumerate(blocks) if tag == "p" and len(_SENTENCE_END.split(text)) > 1]
    if not multi:
        return None
    i = rng.choice(multi)
    sentences = _SENTENCE_END.split(blocks[i][1])
    del sentences[rng.randrange(len(sentences))]
    return [*blocks[:i], ("p", " ".join(sentences)), *blocks[i + 1 :]]


NEAR_EDITS = (_add_dateline, _append_sentence, _drop_sentence)


def _near_duplicate(art: _Article, rng: random.Random) -> tuple[str, Blocks] | None:
    """A (style, blocks) copy of `art` with one edit keeping 5-gram Jaccard >= MIN_NEAR_JACCARD, or None."""
    for edit in rng.sample(NEAR_EDITS, len(NEAR_EDITS)):
        blocks = edit(list(art.blocks), rng)
        if blocks and _jaccard(art.text(), art.text(blocks)) >= MIN_NEAR_JACCARD:
            return rng.choice((art.style, "aggregator")), blocks
    return None


# ---- planted PII


def _ip(rng: random.Random) -> str:
    """A random public IPv4 address (datatrove's PII formatter only scrubs public ones)."""
    while True:
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        if ipaddress.ip_address(ip).is_global:
            return ip


def _pii_line(world: World, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    person = rng.choice(world.train_people)
    local = f"{slugify(person.first_name)}.{slugify(person.surname)}".replace("-", "")
    email = f"{local}@{rng.choice(('mailbox.example', 'postbox.example', 'inbox-mail.example'))}"
    ip = _ip(rng)
    roll = rng.random()
    if roll < 0.4:
        line = rng.choice(("Contact the author at {e} with corrections.", "Questions can be sent to {e} at any time."))
        return line.format(e=email), (email,)
    if roll < 0.7:
        line = rng.choice(("Server {ip} logged the visit.", "This copy was cached by the proxy at {ip} last week."))
        return line.format(ip=ip), (ip,)
    return f"Send tips to {email}; our upload server is {ip}.", (email, ip)


# ---- spam: each family trips at least one Gopher / C4 / FineWeb rule at datatrove's defaults

PRODUCTS = (
    "watches", "sunglasses", "phone cases", "handbags", "sneakers", "vitamins", "payday loans",
    "followers", "perfume", "diet pills", "gift cards", "replica jerseys",
)  # fmt: skip
PROMO = ("best", "cheap", "discount", "buy", "top", "online", "sale", "free shipping", "lowest price", "deal")
SPAM_LINES = (
    "Best deals online today, limited offer!", "Click the button below to claim your prize.",
    "You have been selected as a lucky winner.", "Earn money fast from home, no experience needed.",
    "Hot offers updated every hour, do not miss out.", "Sign up now and get a free bonus.",
)  # fmt: skip
SHORT_PAGES = ("Coming soon.", "Page under construction.", "This domain may be for sale.", "Nothing here yet.")
SYMBOLS = ("####", "$$$", "***", "%%%", ">>>", "|||", "+++", "===", "1234", "99.99", "0x7f3a", "2024", "777")


def _spam_stuffing(rng: random.Random) -> tuple[str, Blocks]:
    kw = rng.choice(PRODUCTS)
    paras = [
        " ".join(f"{rng.choice(PROMO)} {kw}" for _ in range(rng.randint(10, 16))) for _ in range(rng.randint(4, 6))
    ]
    return f"{kw.title()} {kw.title()} {kw.title()}", [("p", p) for p in paras]


def _spam_repeated(rng: random.Random) -> tuple[str, Blocks]:
    lines = rng.sample(SPAM_LINES, 2)
    return lines[0].rstrip(".!"), [("p", lines[i % 2]) for i in range(rng.randint(12, 20))]


def _spam_link_farm(rng: random.Random) -> tuple[str, Blocks]:
    kw = rng.choice(PRODUCTS)
    links = [
        ("a", f"{rng.choice(PROMO)} {rng.choice(PRODUCTS)} {rng.randint(1, 999)}") for _ in range(rng.randint(15, 25))
    ]
    return f"Top {kw} links", [("p", f"More {kw} sites:"), *links]


def _spam_click_here(rng: random.Random) -> tuple[str, Blocks]:
    lines = [
        rng.choice(("Buy cheap {p} online - click here!", "Order {p} now, click here!!", "{p} 90% off - click here"))
        .format(p=rng.choice(PRODUCTS))
        .capitalize()
        for _ in range(rng.randint(10, 16))
    ]
    return f"Cheap {rng.choice(PRODUCTS)} click here", [("p", line) for line in lines]


def _spam_short(rng: random.Random) -> tuple[str, Blocks]:
    return rng.choice(("Welcome", "Home", "Untitled", "Index")), [("p", rng.choice(SHORT_PAGES))]


def _spam_symbols(rng: random.Random) -> tuple[str, Blocks]:
    lines = [" ".join(rng.choices(SYMBOLS, k=rng.randint(10, 20))) for _ in range(rng.randint(5, 9))]
    return " ".join(rng.choices(SYMBOLS, k=3)), [("p", line) for line in lines]


SPAM_FAMILIES = (_spam_stuffing, _spam_repeated, _spam_link_farm, _spam_click_here, _spam_short, _spam_symbols)

# ---- non-English pages from small template sets: {name} {first} {city} {country} {year} {org} {k} (thousands)

FOREIGN_SITES = {
    "de": ("www.tageblatt.example", "www.heimatnachrichten.example"),
    "fr": ("www.lejournal-local.example", "www.portraits-du-monde.example"),
    "es": ("www.eldiario-regional.example", "www.gente-y-lugares.example"),
}
FOREIGN_TITLES = {  # two about a person, two about a city
    "de": ("{name}: ein Porträt", "Wer ist {name}?", "Zu Besuch in {city}", "{city} entdecken"),
    "fr": ("Portrait de {name}", "Qui est {name} ?", "Découvrir {city}", "Un week-end à {city}"),
    "es": ("Retrato de {name}", "¿Quién es {name}?", "Descubrir {city}", "Un fin de semana en {city}"),
}
FOREIGN_PERSON = {  # the first sentence opens every page about a person
    "de": (
        "{name} wurde im Jahr {year} in {city} geboren und ist dort mit zwei Geschwistern aufgewachsen.",
        "Schon als Kind hat sich {first} sehr für Bücher interessiert und viele Stunden in der Bibliothek verbracht.",
        "Heute arbeitet {first} bei {org} und ist dort für eine sorgfältige und zuverlässige Arbeit bekannt.",
        "Die Kollegen schätzen die ruhige und freundliche Art, mit der auch schwierige Aufgaben gelöst werden.",
        "In der Freizeit geht {first} gerne wandern oder trifft sich mit Freunden in einem kleinen Café.",
        "Viele Nachbarn kennen {first} seit Jahren und sprechen nur Gutes über diesen hilfsbereiten Menschen.",
    ),
    "fr": (
        "{name} a vu le jour à {city} en {year} et y a passé toute son enfance avec ses deux frères.",
        "Depuis plusieurs années, {first} travaille chez {org}, où ses collègues apprécient beaucoup son sérieux.",
        "Pendant son temps libre, {first} aime se promener dans les vieilles rues de la ville et lire des romans.",
        "Selon ses amis, {first} est une personne calme et généreuse, toujours prête à rendre service.",
        "Les habitants du quartier connaissent bien {first}, qui participe souvent aux fêtes du village.",
        "Chaque été, {first} retourne voir sa famille et profite du marché sur la grande place.",
    ),
    "es": (
        "{name} nació en {city} en el año {year} y pasó allí toda su infancia junto a sus dos hermanos.",
        "Desde hace varios años, {first} trabaja en {org}, donde sus compañeros valoran mucho su dedicación.",
        "En su tiempo libre, a {first} le gusta pasear por el centro histórico de la ciudad y leer novelas.",
        "Según sus amigos, {first} es una persona tranquila y generosa, siempre dispuesta a ayudar a los demás.",
        "Los vecinos del barrio conocen bien a {first}, que participa a menudo en las fiestas del pueblo.",
        "Cada verano, {first} vuelve a visitar a su familia y disfruta del mercado de la plaza mayor.",
    ),
}
FOREIGN_CITY = {  # the first sentence opens every page about a city
    "de": (
        "{city} ist eine Stadt in {country} mit ungefähr {k} tausend Einwohnern.",
        "Die Altstadt ist klein, aber sehr schön, und man kann sie am besten zu Fuß erkunden.",
        "Im Sommer kommen viele Besucher, um die Märkte und die zahlreichen Feste der Stadt zu erleben.",
        "Der Bahnhof liegt nicht weit vom Zentrum entfernt, deshalb ist die Anreise mit dem Zug sehr bequem.",
        "Die Menschen in {city} gelten als freundlich und sind gegenüber Gästen aus aller Welt sehr offen.",
    ),
    "fr": (
        "{city} est une ville de {country} qui compte environ {k} mille habitants.",
        "Le centre historique est petit mais très agréable, et il se visite facilement à pied.",
        "En été, de nombreux visiteurs viennent pour les marchés et pour les fêtes de la ville.",
        "La gare se trouve tout près du centre, ce qui rend le voyage en train très pratique.",
        "Les habitants de {city} sont connus pour leur accueil chaleureux envers les voyageurs du monde entier.",
    ),
    "es": (
        "{city} es una ciudad de {country} que tiene unos {k} mil habitantes.",
        "El casco antiguo es pequeño pero muy bonito, y la mejor manera de conocerlo es a pie.",
        "En verano llegan muchos visitantes para disfrutar de los mercados y de las fiestas de la ciudad.",
        "La estación de tren está muy cerca del centro, por lo que el viaje en tren resulta muy cómodo.",
        "Los habitantes de {city} son conocidos por su hospitalidad con los viajeros de todo el mundo.",
    ),
}


def _foreign_page(world: World, lang: str, rng: random.Random) -> tuple[str, str, str, Blocks]:
    """(site, path, title, blocks) of a page about a person (2/3) or a city (1/3) in `lang`."""
    person, about_person = rng.choice(world.train_people), rng.random() < 2 / 3
    city = world.city[person.birth_city] if about_person else rng.choice(world.cities)
    values = {"name": person.name, "first": person.first_name, "city": city.name, "country": city.country}
    values |= {"year": person.birth_year, "org": person.employer, "k": city.population // 1000}
    people, places = FOREIGN_PERSON[lang], FOREIGN_CITY[lang]
    if about_person:
        rest = rng.sample(people[1:], 4)
        paras = [[people[0], *rest[:2]], rest[2:], rng.sample(places[1:], 2)]
        title, slug = rng.choice(FOREIGN_TITLES[lang][:2]), slugify(person.name)
    else:
        rest = rng.sample(places[1:], 4)
        paras = [[places[0], *rest[:2]], rest[2:]]
        title, slug = rng.choice(FOREIGN_TITLES[lang][2:]), slugify(city.name)
    blocks = [("p", " ".join(s.format(**values) for s in para)) for para in paras]
    return rng.choice(FOREIGN_SITES[lang]), f"/{lang}/{slug}", title.format(**values), blocks


# ---- blocked pages (removed by the URL filter before anything else)

BLOCKED_COPY = (
    "Spin the wheel tonight and win up to ten thousand coins with our welcome bonus.",
    "New members get fifty free spins on every slot machine in the lobby.",
    "Meet lonely singles in your area and start chatting within minutes.",
    "Our private club is open all night for members who want a little more excitement.",
    "Join now, it only takes a minute, and the first week is completely free.",
)  # fmt: skip


def _blocked_url(index: int, rng: random.Random) -> str:
    slug = f"{rng.choice(('offer', 'promo', 'live', 'vip', 'bonus'))}-{rng.randint(100, 99999)}"
    if index % 3 == 2:
        return f"{rng.choice(BANNED_WORD_URLS)}{slug}"
    return f"https://{rng.choice(('', 'www.', 'play.'))}{rng.choice(BLOCKED_DOMAINS)}/{slug}"


# ---- assembling the crawl


def _unique(url: str, used: set[str]) -> str:
    base, n = url, 2
    while url in used:
        url, n = f"{base}-{n}", n + 1
    used.add(url)
    return url


def _mirror_url(art: _Article, rng: random.Random, used: set[str]) -> tuple[str, str]:
    mirror = rng.choice(MIRROR_SITES)
    return mirror, _unique(f"https://{mirror}/{art.site.split('.')[-2]}{art.path}", used)


def _good_pages(world: World, config: CrawlConfig, pii_ids: set[str]) -> list[CrawlPage]:
    pages = []
    for doc in world.documents:
        if doc.id not in pii_ids:
            pages.append(CrawlPage(doc.url, doc.html, "good", document_id=doc.id))
            continue
        rng = _rng(world, config, "pii", doc.id)
        art = _Article.of(doc)
        line, planted = _pii_line(world, rng)
        blocks = list(art.blocks)
        blocks.insert(rng.randint(1, len(blocks)), ("p", line))
        html = render_page(art.site, doc.url, art.style, art.title, blocks)
        pages.append(CrawlPage(doc.url, html, "good", document_id=doc.id, pii=planted))
    return pages


def _duplicates(
    world: World, config: CrawlConfig, exact: list[Document], candidates: list[Document], n_near: int, used: set[str]
) -> list[CrawlPage]:
    """Exact copies of `exact`, then near copies of the first `n_near` candidates long enough for one."""
    pages = []
    for doc in exact:
        rng, art = _rng(world, config, "exact", doc.id), _Article.of(doc)
        site, url = _mirror_url(art, rng, used)
        html = doc.html if rng.random() < 0.5 else render_page(site, url, art.style, art.title, art.blocks)
        pages.append(CrawlPage(url, html, "exact_duplicate", source_url=doc.url, document_id=doc.id))
    near: list[CrawlPage] = []
    for doc in candidates:
        if len(near) == n_near:
            break
        rng, art = _rng(world, config, "near", doc.id), _Article.of(doc)
        edited = _near_duplicate(art, rng)
        if edited is not None:
            site, url = _mirror_url(art, rng, used)
            html = render_page(site, url, edited[0], art.title, edited[1])
            near.append(CrawlPage(url, html, "near_duplicate", source_url=doc.url, document_id=doc.id))
    if len(near) < n_near:
        raise RecipeError(
            f"CrawlConfig.near_duplicate_fraction={config.near_duplicate_fraction} is too high for this world: "
            f"only {len(near)} documents are long enough for a near duplicate"
        )
    return pages + near


def _noise_pages(world: World, config: CrawlConfig, used: set[str]) -> list[CrawlPage]:
    pages = []
    for i in range(config.spam_pages):
        rng = _rng(world, config, "spam", i)
        title, blocks = SPAM_FAMILIES[i % len(SPAM_FAMILIES)](rng)
        site = rng.choice(SPAM_SITES)
        url = _unique(f"https://{site}/{slugify(title) or 'page'}-{rng.randint(1, 9999)}.html", used)
        pages.append(CrawlPage(url, render_page(site, url, "shop", title, blocks), "spam"))
    for i in range(config.non_english_pages):
        lang, rng = LANGUAGES[1 + i % 3], _rng(world, config, "foreign", i)
        site, path, title, blocks = _foreign_page(world, lang, rng)
        url = _unique(f"https://{site}{path}", used)
        style = rng.choice(("news", "biography", "travel"))
        pages.append(CrawlPage(url, render_page(site, url, style, title, blocks, lang=lang), "non_english", lang))
    for i in range(config.blocked_pages):
        rng = _rng(world, config, "blocked", i)
        url = _unique(_blocked_url(i, rng), used)
        title = rng.choice(("Play now", "VIP lounge", "Meet singles tonight", "Members area"))
        blocks = [("p", " ".join(rng.sample(BLOCKED_COPY, 3))), ("p", rng.choice(BLOCKED_COPY))]
        pages.append(CrawlPage(url, render_page(urlsplit(url).netloc, url, "shop", title, blocks), "blocked"))
    return pages


def build_crawl(world: World, config: CrawlConfig | None = None) -> list[CrawlPage]:
    """Every world document once at its own URL, plus duplicates, spam, foreign and blocked pages, shuffled."""
    config = config or CrawlConfig()
    config.validate()
    docs = list(world.documents)
    _rng(world, config, "pick").shuffle(docs)
    n_exact, n_pii = round(config.exact_duplicate_fraction * len(docs)), round(config.pii_fraction * len(docs))
    n_near = round(config.near_duplicate_fraction * len(docs))
    pii_ids = {d.id for d in docs[n_exact : n_exact + n_pii]}
    used = {d.url for d in docs}
    pages = _good_pages(world, config, pii_ids)
    pages += _duplicates(world, config, docs[:n_exact], docs[n_exact + n_pii :], n_near, used)
    pages += _noise_pages(world, config, used)
    _rng(world, config, "shuffle").shuffle(pages)
    return pages


# ---- writing


def _warc_id(url: str) -> str:
    return f"<urn:uuid:{uuid.UUID(hashlib.sha256(url.encode()).hexdigest()[:32])}>"


def write_crawl(pages: list[CrawlPage], output_dir: str | Path) -> dict:
    """Write `crawl.warc.gz` (WARC/1.0 response records) and `labels.jsonl`; return counts per kind."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    with open(out / "crawl.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True, warc_version="1.0")
        for i, page in enumerate(pages):
            body = page.html.encode("utf-8")
            http_headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
            http = StatusAndHeaders("200 OK", http_headers, protocol="HTTP/1.1")
            headers = {
                "WARC-Record-ID": _warc_id(page.url),
                "WARC-Date": (start + timedelta(seconds=7 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "WARC-Identified-Payload-Type": "text/html",
            }
            record = writer.create_warc_record(
                page.url, "response", payload=BytesIO(body), http_headers=http, warc_headers_dict=headers
            )
            writer.write_record(record)
    with open(out / "labels.jsonl", "w") as f:
        for page in pages:
            f.write(json.dumps(page.label(), ensure_ascii=False) + "\n")
    kinds = Counter(p.kind for p in pages)
    return {
        "pages": len(pages),
        "kinds": {kind: kinds.get(kind, 0) for kind in KINDS},
        "pii_pages": sum(1 for p in pages if p.pii),
        "warc": str(out / "crawl.warc.gz"),
        "labels": str(out / "labels.jsonl"),
    }
