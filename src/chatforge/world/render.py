"""Render a World's entities into varied web-like documents (plain text plus an HTML page)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from chatforge.world.entities import City, Country, Organisation, Person, World
from chatforge.world.html import render_page
from chatforge.world.names import join_names, slugify

# style -> sites hosting it (documents of a style cycle through its sites)
SITES: dict[str, tuple[str, ...]] = {
    "biography": ("www.lifestories.example", "www.peopleprofiles.example"),
    "encyclopedia": ("en.wikiverse.example", "www.openpedia.example"),
    "news": ("www.dailyherald.example", "www.morningpost.example", "www.citywire.example"),
    "forum": ("forum.chatterbox.example", "boards.talkhub.example"),
    "company": ("www.bizdirectory.example", "jobs.workfinder.example"),
    "travel": ("www.wanderguide.example", "www.roamtrips.example"),
}


@dataclass(frozen=True)
class Document:
    """One corpus document: clean `text`, a full `html` page, and the entities and fact keys it states."""

    id: str
    url: str
    title: str
    style: str
    text: str
    html: str
    entities: tuple[str, ...]
    facts: tuple[str, ...]


@dataclass
class Draft:
    """A document being written: blocks are ("h2" | "p", text); `facts` holds `subject|relation` keys."""

    style: str
    site: str
    path: str
    title: str = ""
    blocks: list[tuple[str, str]] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def para(self, *sentences: str) -> None:
        """Append a paragraph made of the non-empty sentences."""
        text = " ".join(s for s in sentences if s)
        if text:
            self.blocks.append(("p", text))

    def heading(self, text: str) -> None:
        """Append a section heading."""
        self.blocks.append(("h2", text))

    def state(self, subject: str, *relations: str) -> None:
        """Record that this document states `relations` of `subject`."""
        self.facts.extend(f"{subject}|{r}" for r in relations)
        if subject not in self.entities:
            self.entities.append(subject)

    def text(self) -> str:
        """Plain text: the title, then each block as its own paragraph."""
        return "\n\n".join([self.title] + [t for _, t in self.blocks])


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


@dataclass(frozen=True)
class Phrase:
    """A sentence template stating the `covers` relations of one subject."""

    covers: frozenset[str]
    template: str
    canonical: bool = False


def _phrases(*items: tuple[str, str] | tuple[str, str, bool]) -> list[Phrase]:
    return [Phrase(frozenset(i[0].split()), i[1], bool(i[2]) if len(i) > 2 else False) for i in items]


# Slots: {name} full name, {s} subject reference, {p}/{obj}/{poss} pronouns, {poss_s} possessive reference.
FORMAL = _phrases(
    ("birth_city", "{name} was born in {city}.", True),
    ("birth_city", "{s} was born and raised in {city}, {country}."),
    ("birth_city", "{s} grew up in {city}, the city where {p} was born."),
    ("birth_city", "{city} is the birthplace of {s}."),
    ("birth_city", "{s} is a native of {city}, in {country}."),
    ("birth_city", "{s} comes originally from {city}."),
    ("birth_city birth_year", "{s} was born in {city} in {year}."),
    ("birth_year", "{poss_s} year of birth is {year}."),
    ("birth_year", "{poss_s} date of birth falls in {year}."),
    ("birth_year", "The year {year} saw the birth of {s}."),
    ("birth_year field_of_study", "Born in {year}, {s} went on to study {field}."),
    ("birth_year occupation", "{s}, born in {year}, works as a {occ}."),
    ("occupation", "{name} works as a {occ}.", True),
    ("occupation", "{s} is a {occ} by trade."),
    ("occupation", "By profession, {s} is a {occ}."),
    ("occupation", "{s} earns a living as a {occ}."),
    ("occupation", "{s} has worked as a {occ} for many years."),
    ("occupation employer", "{s} works as a {occ} at {org}."),
    ("occupation employer", "At {org}, {s} is employed as a {occ}."),
    ("employer", "{name} works for {org}.", True),
    ("employer", "{s} is employed by {org}."),
    ("employer", "{s} is on the staff of {org}."),
    ("employer", "{poss_s} employer is {org}."),
    ("employer", "{s} joined {org} and has stayed with the company ever since."),
    ("field_of_study", "{name} studied {field}.", True),
    ("field_of_study", "{s} holds a degree in {field}."),
    ("field_of_study", "{s} trained in {field} before starting {poss} career."),
    ("field_of_study", "{poss_s} academic background is in {field}."),
    ("field_of_study", "At university, {s} read {field}."),
)
CASUAL = _phrases(
    ("birth_city", "{name} was born in {city}.", True),
    ("birth_city", "{first} is from {city} originally."),
    ("birth_city", "pretty sure {p} was born in {city}, {p} mentioned it once."),
    ("birth_city", "{first} grew up in {city}, {country}, same as my cousin."),
    ("birth_city birth_year", "{first} was born in {city} back in {year}."),
    ("birth_year", "{poss} birth year is {year} if I remember right."),
    ("birth_year", "fun fact: {first} is a {year} baby."),
    ("birth_year", "{poss} year of birth is {year}, it says so on {poss} profile."),
    ("occupation", "{name} works as a {occ}.", True),
    ("occupation", "{first} is a {occ}, and a really good one."),
    ("occupation", "{p} works as a {occ} these days."),
    ("occupation", "{first} has been a {occ} for ages."),
    ("occupation employer", "{first} is a {occ} over at {org}."),
    ("employer", "{name} works for {org}.", True),
    ("employer", "{p} works for {org} now."),
    ("employer", "{first} got a job at {org} a while ago."),
    ("employer", "{first} is at {org}, has been for years."),
    ("field_of_study", "{name} studied {field}.", True),
    ("field_of_study", "{first} studied {field}, we were in the same class."),
    ("field_of_study", "{p} has a degree in {field}."),
    ("field_of_study", "{first} did {field} at uni."),
)
PERSON_RELATIONS = ("birth_city", "birth_year", "occupation", "employer", "field_of_study")
CANONICAL_WEIGHT = 0.35  # chance to use the canonical phrasing when it fits

EVENTS = (
    ("wins regional award", "won a regional award for outstanding work"),
    ("opens community workshop", "opened a community workshop for young people"),
    ("speaks at annual conference", "gave the closing talk at an annual conference"),
    ("raises money for library", "raised money to renovate the public library"),
    ("completes charity marathon", "completed a charity marathon"),
    ("publishes practical guide", "published a practical guide for beginners"),
)
QUOTES = (
    "I never expected this, but I am grateful to everyone who helped.",
    "It was a team effort from start to finish.",
    "We wanted to give something back to the community.",
    "There is still a lot of work to do, and I am looking forward to it.",
    "Honestly, the best part was meeting so many people.",
)
FORUM_USERS = (
    "quietfox42", "lantern_jo", "mossy_keys", "tidewatcher", "pixel_owl", "rook88", "sunny_cog",
    "old_hand", "bluekettle", "nightjar_7", "marrow", "the_ferret", "coppertop", "wanderlost",
)  # fmt: skip
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")  # fmt: skip


BIO_FILLERS = (
    "As a {occ}, {p} values careful preparation and honest feedback.",
    "Colleagues at {org} often ask {obj} for advice.",
    "{s} still visits {city} whenever there is time.",
    "{s} believes that good work takes patience.",
    "Over the years {p} has trained several younger colleagues.",
    "{s} describes {poss} job as demanding but rewarding.",
    "{s} keeps a notebook of ideas and reads it every morning.",
)
NEWS_FILLERS = (
    "The event drew a large crowd.",
    "Several colleagues from {org} attended.",
    "Organisers described the day as a success.",
    "Friends and family were there to celebrate.",
    "It was the first event of its kind this year.",
)
ENCYCLOPEDIA_FILLERS = (
    "{s} has been recognised for contributions to {poss} profession.",
    "{s} has given talks about {poss} work to students.",
    "{poss_s} work has been described as {trait} and precise.",
    "{s} is a member of a professional association.",
)
FORUM_CHATTER = (
    "+1, {first} is great.",
    "lol I know {obj}, small world.",
    "{first} helped me out once, really {trait} person.",
    "{first} is into {hobby} too, right?",
    "seconding this, {first} is the best.",
)


def _quote(rng: random.Random, speaker: str = "") -> str:
    """A quotation sentence: `"...," NAME said.` (or without a speaker)."""
    quote = rng.choice(QUOTES)
    if not speaker:
        return f'"{quote}"'
    return f'"{quote[:-1]}," said {speaker}.'


class PersonWriter:
    """Writes fact sentences about one person with varied references and phrasings."""

    def __init__(self, world: World, person: Person, rng: random.Random, casual: bool = False) -> None:
        self.person, self.rng, self.casual = person, rng, casual
        self.phrases = CASUAL if casual else FORMAL
        city = world.city[person.birth_city]
        he = person.pronoun == "he"
        self.pron = {"p": person.pronoun, "obj": "him" if he else "her", "poss": "his" if he else "her"}
        self.values = {
            "name": person.name,
            "first": person.first_name,
            "city": city.name,
            "country": city.country,
            "year": str(person.birth_year),
            "occ": person.occupation,
            "org": person.employer,
            "field": person.field_of_study,
            "hobby": person.hobby,
            "trait": person.trait,
        }

    def slots(self) -> dict[str, str]:
        """Template slots with a freshly drawn way to refer to the person."""
        roll = self.rng.random()
        if roll < 0.3:
            ref = self.person.name
        elif roll < 0.75 or self.casual:
            ref = self.pron["p"]
        else:
            ref = self.person.surname if self.rng.random() < 0.5 else self.person.first_name
        poss_s = self.pron["poss"] if ref == self.pron["p"] else f"{ref}'s"
        return {**self.values, **self.pron, "s": ref, "poss_s": poss_s}

    def fill(self, template: str) -> str:
        """Format one template (with a fresh reference) as a sentence."""
        return _cap(template.format(**self.slots()))

    def sentences(self, draft: Draft, relations: Iterable[str]) -> list[str]:
        """Sentences stating every relation in `relations`, in random order and phrasing."""
        remaining = list(relations)
        self.rng.shuffle(remaining)
        out = []
        while remaining:
            first = remaining[0]
            fits = [ph for ph in self.phrases if first in ph.covers and ph.covers <= set(remaining)]
            canonical = [ph for ph in fits if ph.canonical]
            if canonical and self.rng.random() < CANONICAL_WEIGHT:
                phrase = canonical[0]
            else:
                phrase = self.rng.choice([ph for ph in fits if not ph.canonical] or fits)
            out.append(self.fill(phrase.template))
            draft.state(self.person.name, *sorted(phrase.covers))
            remaining = [r for r in remaining if r not in phrase.covers]
        return out

    def intro(self, draft: Draft, options: list[tuple[str, str]]) -> tuple[str, set[str]]:
        """Pick one (covers, template) intro sentence; returns it and the relations it stated."""
        covers, template = self.rng.choice(options)
        relations = set(covers.split())
        draft.state(self.person.name, *sorted(relations))
        return _cap(template.format(**{**self.values, **self.pron})), relations


def _biography(world: World, person: Person, draft: Draft, rng: random.Random) -> None:
    w = PersonWriter(world, person, rng)
    draft.title = rng.choice(
        [
            "The story of {name}",
            "{name}: a life in brief",
            "About {name}",
            "{name}, {occ}",
            "Getting to know {name}",
        ]
    ).format(**w.values)
    intro, done = w.intro(
        draft,
        [
            ("occupation birth_city", "{name} is a {occ} whose story began in {city}."),
            ("birth_city birth_year", "This is the story of {name}, who was born in {city} in {year}."),
            ("employer", "Few people know {name} as well as {poss} colleagues at {org} do."),
            ("", "{name} has led a quiet but remarkable life."),
            ("birth_year occupation", "{name} (born {year}) is a {occ} with a reputation for careful work."),
        ],
    )
    facts = w.sentences(draft, [r for r in PERSON_RELATIONS if r not in done])
    split = rng.randint(1, max(1, len(facts) - 1))
    draft.para(intro, *facts[:split])
    fillers = [w.fill(t) for t in rng.sample(BIO_FILLERS, 2)]
    draft.para(
        *facts[split:],
        fillers[0],
        w.fill(
            rng.choice(
                ["Those who know {obj} describe {obj} as {trait}.", "Friends call {obj} {trait} and dependable."]
            )
        ),
    )
    draft.para(
        w.fill(
            rng.choice(
                [
                    "Outside work, {s} enjoys {hobby}.",
                    "In {poss} spare time, {s} is usually busy with {hobby}.",
                    "When not working, {p} spends {poss} weekends on {hobby}.",
                    "{s} says {hobby} keeps {obj} sane.",
                ]
            )
        ),
        fillers[1],
    )


def _encyclopedia(world: World, person: Person, draft: Draft, rng: random.Random) -> None:
    w = PersonWriter(world, person, rng)
    draft.title = person.name
    intro, done = w.intro(
        draft,
        [
            ("birth_year occupation birth_city", "{name} (born {year}) is a {occ} from {city}, {country}."),
            ("birth_year birth_city occupation", "{name} (born {year} in {city}) is a {occ}."),
            ("birth_year occupation employer", "{name} (born {year}) is a {occ} employed by {org}."),
            ("birth_year occupation field_of_study", "{name} (born {year}) is a {occ} with a background in {field}."),
        ],
    )
    draft.para(intro)
    early = [r for r in ("birth_city", "birth_year", "field_of_study") if r not in done]
    career = [r for r in ("occupation", "employer") if r not in done]
    if early:
        draft.heading(rng.choice(["Early life", "Early life and education", "Background"]))
        draft.para(*w.sentences(draft, early))
    if career:
        draft.heading(rng.choice(["Career", "Work", "Professional life"]))
        draft.para(*w.sentences(draft, career), w.fill(rng.choice(ENCYCLOPEDIA_FILLERS)))
    draft.heading("Personal life")
    draft.para(
        w.fill(
            rng.choice(
                [
                    "{poss_s} interests include {hobby}.",
                    "{s} is known among friends for {hobby}.",
                    "{s} lists {hobby} as a favourite pastime.",
                    "{s} took up {hobby} as a hobby.",
                ]
            )
        )
    )


def _news(world: World, person: Person, draft: Draft, rng: random.Random) -> None:
    w = PersonWriter(world, person, rng)
    headline, event = rng.choice(EVENTS)
    draft.title = rng.choice(
        ["{occ_cap} {headline}", "{name} {headline}", "Local {occ} {headline}", "{city}: {occ} {headline}"]
    ).format(occ_cap=person.occupation.capitalize(), headline=headline, **w.values)
    month = rng.choice(MONTHS)
    intro, done = w.intro(
        draft,
        [
            ("occupation employer", "{name}, a {occ} at {org}, " + event + " this week."),
            ("occupation", "{name}, who works as a {occ}, " + event + " on Saturday, organisers said."),
            ("birth_city", "{name}, who was born in {city}, " + event + " last month."),
            ("", f"{{name}} {event} in {month}, according to people close to the project."),
        ],
    )
    draft.para(intro)
    draft.para(
        _quote(rng, person.name),
        w.fill("{s} added that the support of friends had made all the difference."),
        w.fill(rng.choice(NEWS_FILLERS)),
    )
    facts = w.sentences(draft, [r for r in PERSON_RELATIONS if r not in done])
    draft.para(*facts)
    draft.para(
        rng.choice(
            [
                "More events are planned for next year.",
                "The organisers thanked volunteers for their help.",
                "Details of the next edition will be announced later.",
                "Photos from the day are available on request.",
            ]
        )
    )


def _forum(world: World, person: Person, draft: Draft, rng: random.Random) -> None:
    w = PersonWriter(world, person, rng, casual=True)
    draft.title = rng.choice(
        ["Anyone know {name}?", "{name} appreciation thread", "Question about {name}", "Met {name} today"]
    ).format(**w.values)
    users = rng.sample(FORUM_USERS, 4)
    opener = rng.choice(
        [
            "Does anyone here know {name}? I keep hearing the name.",
            "Just want to say {name} is brilliant.",
            "Quick question about {name}, what does {p} actually do?",
            "Ran into {name} today and we chatted for an hour.",
        ]
    ).format(**w.values, **w.pron)
    draft.entities.append(person.name)
    facts = w.sentences(draft, PERSON_RELATIONS)
    posts = [f"{users[0]} wrote: {opener}"]
    cut = sorted(rng.sample(range(1, len(facts)), 2)) if len(facts) > 2 else [1, len(facts)]
    for user, chunk in zip(users[1:], (facts[: cut[0]], facts[cut[0] : cut[1]], facts[cut[1] :])):
        if chunk:
            posts.append(f"{user} wrote: " + " ".join(chunk))
    posts.insert(rng.randint(2, len(posts)), f"{rng.choice(FORUM_USERS)} wrote: " + w.fill(rng.choice(FORUM_CHATTER)))
    posts.append(
        f"{users[0]} wrote: "
        + rng.choice(["thanks all, that helps!", "cool, thanks.", "ha, small world.", "nice, appreciate it."])
    )
    for post in posts:
        draft.para(post)


PERSON_RENDERERS: dict[str, Callable[[World, Person, Draft, random.Random], None]] = {
    "biography": _biography,
    "encyclopedia": _encyclopedia,
    "news": _news,
    "forum": _forum,
}
PERSON_PATHS = {
    "biography": "/people/{slug}",
    "encyclopedia": "/wiki/{wiki}",
    "news": "/{year}/{month:02d}/{slug}",
    "forum": "/t/{num}-{slug}",
}

ORG_PHRASES = _phrases(
    ("headquarters", "{org} has its headquarters in {city}.", True),
    ("headquarters", "{org} is headquartered in {city}, {country}."),
    ("headquarters", "The head office of {org} is in {city}."),
    ("headquarters", "{org} runs its business from {city}."),
    ("founding_year", "{org} was founded in {year}.", True),
    ("founding_year", "{org} has been in business since {year}."),
    ("founding_year", "{org} was established in {year}."),
    ("industry", "{org} is a company in the {industry} industry.", True),
    ("industry", "{org} operates in the {industry} sector."),
    ("industry", "{org} is best known for its work in {industry}."),
    ("headquarters founding_year industry", "Based in {city}, {org} is a {industry} company founded in {year}."),
    ("founding_year headquarters", "Since its founding in {year}, {org} has been based in {city}."),
)
CITY_PHRASES = _phrases(
    ("country", "{city} is a city in {country}.", True),
    ("country", "{city} lies in the {region} of {country}."),
    ("country", "{city}, in {country}, has about {population} inhabitants."),
    ("country", "The {country} city of {city} is home to about {population} people."),
)


def _state_phrases(
    draft: Draft, rng: random.Random, phrases: list[Phrase], subject: str, relations: list[str], values: dict[str, str]
) -> list[str]:
    """Generic fact-sentence writer for organisations and places."""
    remaining = list(relations)
    rng.shuffle(remaining)
    out = []
    while remaining:
        fits = [ph for ph in phrases if remaining[0] in ph.covers and ph.covers <= set(remaining)]
        canonical = [ph for ph in fits if ph.canonical]
        phrase = (
            canonical[0]
            if canonical and rng.random() < CANONICAL_WEIGHT
            else rng.choice([ph for ph in fits if not ph.canonical] or fits)
        )
        out.append(_cap(phrase.template.format(**values)))
        draft.state(subject, *sorted(phrase.covers))
        remaining = [r for r in remaining if r not in phrase.covers]
    return out


def _org_values(world: World, org: Organisation) -> dict[str, str]:
    return {
        "org": org.name,
        "city": org.headquarters,
        "country": world.city[org.headquarters].country,
        "year": str(org.founded),
        "industry": org.industry,
    }


def _employee_line(draft: Draft, people: list[Person], org: Organisation) -> str:
    for p in people:
        draft.state(p.name, "employer", "occupation")
    listed = [f"{p.name} ({p.occupation})" for p in people]
    return f"Notable people working for {org.name} include {join_names(listed)}."


def _org_profile(world: World, org: Organisation, staff: list[Person], draft: Draft, rng: random.Random) -> None:
    values = _org_values(world, org)
    draft.title = org.name
    facts = _state_phrases(draft, rng, ORG_PHRASES, org.name, ["headquarters", "founding_year", "industry"], values)
    draft.para(*facts)
    draft.heading(rng.choice(["Overview", "History", "Operations"]))
    draft.para(
        rng.choice(
            [
                f"The company employs staff across {values['country']}.",
                f"{org.name} has grown steadily over the decades.",
                f"Customers know {org.name} for reliable service.",
                f"{org.name} is privately owned.",
            ]
        )
    )
    if staff:
        draft.heading("People")
        draft.para(_employee_line(draft, staff[:4], org))


def _org_news(world: World, org: Organisation, staff: list[Person], draft: Draft, rng: random.Random) -> None:
    values = _org_values(world, org)
    headline, body = rng.choice(
        [
            ("expands", "announced plans to expand"),
            ("reports record year", "reported its best year so far"),
            ("opens new site", "opened a new site"),
            ("marks anniversary", "celebrated another anniversary"),
        ]
    )
    draft.title = f"{org.name} {headline}"
    draft.para(
        f"{org.name} {body} on {rng.choice(['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday'])}.",
        *_state_phrases(draft, rng, ORG_PHRASES, org.name, ["headquarters", "founding_year", "industry"], values),
    )
    if staff:
        p = rng.choice(staff)
        draft.state(p.name, "employer", "occupation")
        draft.para(_quote(rng, f"{p.name}, a {p.occupation} at {org.name}"))
    else:
        draft.para(_quote(rng, f"a spokesperson for {org.name}"))


def _org_careers(world: World, org: Organisation, staff: list[Person], draft: Draft, rng: random.Random) -> None:
    values = _org_values(world, org)
    draft.title = rng.choice(
        [f"Careers at {org.name}", f"Jobs at {org.name}", f"Work for {org.name}", f"{org.name} is hiring"]
    )
    draft.para(
        rng.choice(
            [
                "Looking for your next role?",
                "We are growing and want to meet you.",
                "Join a team that takes pride in its work.",
                "Open positions are listed below.",
            ]
        )
    )
    draft.para(
        *_state_phrases(draft, rng, ORG_PHRASES, org.name, ["headquarters", "founding_year", "industry"], values)
    )
    if staff:
        p = rng.choice(staff)
        draft.state(p.name, "employer", "occupation")
        draft.para(f"Our team includes people like {p.name}, who works as a {p.occupation} with us.")


def _city_values(world: World, city: City) -> dict[str, str]:
    return {"city": city.name, "country": city.country, "region": city.region, "population": f"{city.population:,}"}


def _city_page(
    world: World,
    city: City,
    natives: list[Person],
    orgs: list[Organisation],
    draft: Draft,
    rng: random.Random,
    guide: bool,
) -> None:
    values = _city_values(world, city)
    draft.title = (
        rng.choice(
            [
                f"Visiting {city.name}",
                f"{city.name} travel guide",
                f"Things to do in {city.name}",
                f"{city.name} for first-timers",
            ]
        )
        if guide
        else city.name
    )
    facts = _state_phrases(draft, rng, CITY_PHRASES, city.name, ["country"], values)
    capital = next(c for c in world.countries if c.name == city.country).capital == city.name
    if capital:
        facts.append(f"{city.name} is the capital of {city.country}.")
        draft.state(city.country, "capital")
    if guide:
        draft.para(
            *facts,
            rng.choice(
                [
                    "Its old town is best explored on foot.",
                    "The market square is busy on weekends.",
                    "Spring is the best time to visit.",
                    "Trains run often from the central station.",
                ]
            ),
        )
    else:
        draft.para(*facts)
    if orgs:
        for org in orgs[:5]:
            draft.state(org.name, "headquarters")
        draft.para(f"Companies based in {city.name} include {join_names([o.name for o in orgs[:5]])}.")
    if natives and not guide:
        for p in natives[:5]:
            draft.state(p.name, "birth_city")
        draft.heading("Notable people")
        draft.para(f"People born in {city.name} include {join_names([p.name for p in natives[:5]])}.")


def _country_page(
    world: World, country: Country, cities: list[City], draft: Draft, rng: random.Random, guide: bool
) -> None:
    draft.title = f"Travelling in {country.name}" if guide else country.name
    capital = rng.choice(
        [
            f"The capital of {country.name} is {country.capital}.",
            f"{country.capital} is the capital of {country.name}.",
            f"{country.name} is governed from its capital, {country.capital}.",
        ]
    )
    draft.state(country.name, "capital")
    for c in cities:
        draft.state(c.name, "country")
    names = [c.name for c in cities]
    draft.para(capital, f"Cities in {country.name} include {join_names(names)}." if len(names) > 1 else "")
    draft.para(
        rng.choice(
            [
                "Most visitors arrive by train.",
                "The countryside is known for its lakes.",
                "Summers are mild and winters are long.",
                "Local cuisine is hearty and simple.",
            ]
        )
    )


class _Builder:
    """Collects drafts and turns them into Documents with unique ids and URLs."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.documents: list[Document] = []
        self.urls: set[str] = set()
        self.site_turn: dict[str, int] = {}

    def draft(self, style: str, path: str) -> Draft:
        sites = SITES[style]
        turn = self.site_turn.get(style, 0)
        self.site_turn[style] = turn + 1
        return Draft(style=style, site=sites[turn % len(sites)], path=path)

    def add(self, draft: Draft) -> None:
        url = f"https://{draft.site}{draft.path}"
        base, n = url, 2
        while url in self.urls:
            url, n = f"{base}-{n}", n + 1
        self.urls.add(url)
        text = draft.text()
        doc_id = f"world-{self.world.config.seed}-{len(self.documents):06d}"
        html = render_page(draft.site, url, draft.style, draft.title, draft.blocks)
        self.documents.append(
            Document(
                doc_id,
                url,
                draft.title,
                draft.style,
                text,
                html,
                tuple(draft.entities),
                tuple(dict.fromkeys(draft.facts)),
            )
        )


def _rng(world: World, *parts: object) -> random.Random:
    """An independent, deterministic generator per document (str seeds are hashed with SHA-512, not hash())."""
    return random.Random(":".join(str(p) for p in (world.config.seed, *parts)))


def render_documents(world: World, progress: bool = False) -> list[Document]:
    """All corpus documents of `world`, in a deterministic shuffled order. Held-out people never appear."""
    builder = _Builder(world)
    people = world.train_people
    staff: dict[str, list[Person]] = {}
    natives: dict[str, list[Person]] = {}
    for p in people:
        staff.setdefault(p.employer, []).append(p)
        natives.setdefault(p.birth_city, []).append(p)
    styles = list(world.config.person_styles)
    for person in tqdm(people, desc="rendering people", disable=not progress):
        rng = _rng(world, "person", person.name)
        order = styles[:]
        rng.shuffle(order)
        for k in range(world.config.docs_per_person):
            style = order[k % len(order)]
            path = PERSON_PATHS[style].format(
                slug=slugify(person.name),
                wiki=person.name.replace(" ", "_"),
                year=rng.randint(2015, 2024),
                month=rng.randint(1, 12),
                num=rng.randint(1000, 99999),
            )
            draft = builder.draft(style, path)
            PERSON_RENDERERS[style](world, person, draft, _rng(world, "person", person.name, k))
            builder.add(draft)
    for org in world.organisations:
        slug = slugify(org.name)
        rng = _rng(world, "org", org.name)
        members = staff.get(org.name, [])
        for style, path, render in (
            ("encyclopedia", f"/wiki/{org.name.replace(' ', '_')}", _org_profile),
            ("news", f"/business/{rng.randint(2015, 2024)}/{slug}", _org_news),
            ("company", f"/companies/{slug}", _org_careers),
        ):
            draft = builder.draft(style, path)
            render(world, org, members, draft, _rng(world, "org", org.name, style))
            builder.add(draft)
    hq: dict[str, list[Organisation]] = {}
    for org in world.organisations:
        hq.setdefault(org.headquarters, []).append(org)
    for city in world.cities:
        for guide in (False, True):
            style = "travel" if guide else "encyclopedia"
            path = f"/destinations/{slugify(city.name)}" if guide else f"/wiki/{city.name}"
            draft = builder.draft(style, path)
            _city_page(
                world,
                city,
                natives.get(city.name, []),
                hq.get(city.name, []),
                draft,
                _rng(world, "city", city.name, guide),
                guide,
            )
            builder.add(draft)
    for country in world.countries:
        members_c = [c for c in world.cities if c.country == country.name]
        for guide in (False, True):
            style = "travel" if guide else "encyclopedia"
            path = f"/countries/{slugify(country.name)}" if guide else f"/wiki/{country.name}"
            draft = builder.draft(style, path)
            _country_page(world, country, members_c, draft, _rng(world, "country", country.name, guide), guide)
            builder.add(draft)
    documents = builder.documents
    _rng(world, "shuffle").shuffle(documents)
    return documents
