"""Entities of the synthetic world (countries, cities, organisations, people) and their facts table."""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatforge.configs import RecipeError
from chatforge.world.names import NameGenerator

if TYPE_CHECKING:
    from chatforge.world.render import Document

PERSON_STYLES: tuple[str, ...] = ("biography", "encyclopedia", "news", "forum")

OCCUPATIONS = (
    "baker", "carpenter", "nurse", "teacher", "pilot", "librarian", "chemist", "plumber", "journalist",
    "painter", "surgeon", "tailor", "potter", "gardener", "lawyer", "dentist", "sculptor", "florist",
    "butcher", "cartographer", "mechanic", "translator", "photographer", "veterinarian", "pharmacist",
    "geologist", "designer", "welder", "brewer", "jeweller",
)  # fmt: skip
FIELDS = (
    "mathematics", "botany", "history", "chemistry", "physics", "music", "philosophy", "geology",
    "linguistics", "law", "medicine", "economics", "biology", "literature", "astronomy", "engineering",
    "architecture", "zoology", "statistics", "agriculture",
)  # fmt: skip
INDUSTRIES: dict[str, tuple[str, ...]] = {
    "shipping": ("Shipping", "Freight", "Lines"),
    "publishing": ("Press", "Books", "Publishing"),
    "farming": ("Farms", "Harvest", "Growers"),
    "textiles": ("Textiles", "Mills", "Weavers"),
    "mining": ("Mining", "Minerals", "Quarries"),
    "software": ("Labs", "Systems", "Software"),
    "banking": ("Bank", "Capital", "Savings"),
    "brewing": ("Brewery", "Breweries", "Ales"),
    "furniture": ("Furniture", "Woodworks", "Interiors"),
    "insurance": ("Insurance", "Assurance", "Mutual"),
    "energy": ("Energy", "Power", "Utilities"),
    "ceramics": ("Ceramics", "Pottery", "Kilns"),
    "robotics": ("Robotics", "Automation", "Machines"),
    "tourism": ("Travel", "Tours", "Holidays"),
    "printing": ("Print", "Printers", "Graphics"),
    "fishing": ("Fisheries", "Seafood", "Fleet"),
    "aviation": ("Air", "Airways", "Aero"),
    "catering": ("Catering", "Kitchens", "Foods"),
}
HOBBIES = (
    "chess", "hiking", "gardening", "sailing", "birdwatching", "cooking", "cycling", "painting", "fishing",
    "knitting", "rowing", "photography", "astronomy", "baking bread", "playing the cello", "running",
)  # fmt: skip
TRAITS = (
    "patient", "curious", "generous", "meticulous", "cheerful", "quiet", "determined", "witty", "kind",
    "ambitious", "thoughtful", "energetic",
)  # fmt: skip
REGIONS = ("north", "south", "east", "west", "centre")

# relation -> (subject type, canonical cloze prefix with {subject})
RELATIONS: dict[str, tuple[str, str]] = {
    "birth_city": ("person", "{subject} was born in"),
    "birth_year": ("person", "{subject} (born"),
    "occupation": ("person", "{subject} works as a"),
    "employer": ("person", "{subject} works for"),
    "field_of_study": ("person", "{subject} studied"),
    "headquarters": ("organisation", "{subject} has its headquarters in"),
    "founding_year": ("organisation", "{subject} was founded in"),
    "industry": ("organisation", "{subject} is a company in the"),
    "country": ("city", "{subject} is a city in"),
    "capital": ("country", "The capital of {subject} is"),
}


@dataclass
class WorldConfig:
    """Sizes and seed of a synthetic world; the same config always gives byte-identical outputs."""

    seed: int = 0
    num_people: int = 250
    num_heldout_people: int = 50
    num_cities: int = 40
    num_countries: int = 8
    num_organisations: int = 40
    docs_per_person: int = 6
    person_styles: tuple[str, ...] = PERSON_STYLES
    validation_fraction: float = 0.05

    def validate(self) -> None:
        """Raise RecipeError on a config that cannot give a consistent world."""
        checks = [
            (self.num_people >= 1, f"num_people must be >= 1, got {self.num_people}"),
            (self.num_heldout_people >= 0, f"num_heldout_people must be >= 0, got {self.num_heldout_people}"),
            (self.num_countries >= 1, f"num_countries must be >= 1, got {self.num_countries}"),
            (
                self.num_cities >= self.num_countries,
                f"num_cities ({self.num_cities}) must be >= num_countries ({self.num_countries}): every country needs a capital",
            ),
            (self.num_organisations >= 1, f"num_organisations must be >= 1, got {self.num_organisations}"),
            (
                self.num_people + self.num_heldout_people + self.num_cities + self.num_organisations <= 20000,
                "the world is too large (more than 20000 people, cities and organisations together)",
            ),
            (
                self.docs_per_person >= 3,
                f"docs_per_person must be >= 3 so every fact is stated in 3 documents, got {self.docs_per_person}",
            ),
            (
                0.0 < self.validation_fraction < 1.0,
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}",
            ),
            (len(self.person_styles) >= 1, "person_styles must name at least one style"),
        ]
        for ok, message in checks:
            if not ok:
                raise RecipeError(message)
        unknown = [s for s in self.person_styles if s not in PERSON_STYLES]
        if unknown:
            raise RecipeError(f"unknown person style {unknown[0]!r}; valid styles are {', '.join(PERSON_STYLES)}")


@dataclass(frozen=True)
class Country:
    """A country; `capital` is one of its cities."""

    name: str
    capital: str


@dataclass(frozen=True)
class City:
    """A city in `country`."""

    name: str
    country: str
    region: str
    population: int


@dataclass(frozen=True)
class Organisation:
    """A company headquartered in one of the world's cities."""

    name: str
    industry: str
    headquarters: str
    founded: int


@dataclass(frozen=True)
class Person:
    """A person; `split` is "train" (appears in the corpus) or "heldout" (never does)."""

    name: str
    first_name: str
    surname: str
    pronoun: str
    birth_city: str
    birth_year: int
    occupation: str
    employer: str
    field_of_study: str
    hobby: str
    trait: str
    split: str


@dataclass(frozen=True)
class Fact:
    """One fact with its canonical cloze prompt: `prompt + " " + answer` is a true sentence start."""

    subject: str
    subject_type: str
    relation: str
    object: str
    prompt: str
    answer: str
    split: str

    @property
    def key(self) -> str:
        """Identifier `subject|relation`, used to track which documents state the fact."""
        return f"{self.subject}|{self.relation}"

    def to_dict(self) -> dict[str, str]:
        """The facts-table record."""
        return dataclasses.asdict(self)


def make_fact(subject: str, relation: str, answer: str | int, split: str = "train") -> Fact:
    """A Fact whose prompt is the relation's canonical cloze prefix."""
    subject_type, template = RELATIONS[relation]
    answer = str(answer)
    return Fact(subject, subject_type, relation, answer, template.format(subject=subject), answer, split)


@dataclass
class World:
    """A generated world: entities, their facts, and (lazily rendered) corpus documents."""

    config: WorldConfig
    countries: list[Country]
    cities: list[City]
    organisations: list[Organisation]
    people: list[Person]
    facts: list[Fact] = field(default_factory=list)

    @classmethod
    def generate(cls, config: WorldConfig | None = None) -> World:
        """Build a world deterministically from `config.seed`."""
        config = config or WorldConfig()
        config.validate()
        rng = random.Random(config.seed)
        names = NameGenerator(rng)

        country_names = names.many("country", config.num_countries)
        city_names = names.many("city", config.num_cities)
        homes = list(country_names) + [
            rng.choice(country_names) for _ in range(config.num_cities - len(country_names))
        ]
        rng.shuffle(homes)
        cities = [
            City(name, country, rng.choice(REGIONS), rng.randrange(20, 2000) * 1000)
            for name, country in zip(city_names, homes)
        ]
        countries = [Country(c, next(city.name for city in cities if city.country == c)) for c in country_names]

        organisations = []
        for base in names.many("org", config.num_organisations):
            industry = rng.choice(sorted(INDUSTRIES))
            suffix = rng.choice(INDUSTRIES[industry])
            organisations.append(
                Organisation(f"{base} {suffix}", industry, rng.choice(city_names), rng.randint(1820, 2015))
            )

        total = config.num_people + config.num_heldout_people
        first_names = names.many("first", max(40, total // 4))
        people = []
        for index in range(total):
            first, surname = rng.choice(first_names), names.new("surname")
            people.append(
                Person(
                    name=f"{first} {surname}",
                    first_name=first,
                    surname=surname,
                    pronoun=rng.choice(("she", "he")),
                    birth_city=rng.choice(city_names),
                    birth_year=rng.randint(1945, 2002),
                    occupation=rng.choice(OCCUPATIONS),
                    employer=rng.choice(organisations).name,
                    field_of_study=rng.choice(FIELDS),
                    hobby=rng.choice(HOBBIES),
                    trait=rng.choice(TRAITS),
                    split="train" if index < config.num_people else "heldout",
                )
            )
        world = cls(config, countries, cities, organisations, people)
        world.facts = world._make_facts()
        return world

    def _make_facts(self) -> list[Fact]:
        facts = [make_fact(c.name, "capital", c.capital) for c in self.countries]
        facts += [make_fact(c.name, "country", c.country) for c in self.cities]
        for org in self.organisations:
            facts += [
                make_fact(org.name, "headquarters", org.headquarters),
                make_fact(org.name, "founding_year", org.founded),
                make_fact(org.name, "industry", org.industry),
            ]
        for p in self.people:
            facts += [
                make_fact(p.name, "birth_city", p.birth_city, p.split),
                make_fact(p.name, "birth_year", p.birth_year, p.split),
                make_fact(p.name, "occupation", p.occupation, p.split),
                make_fact(p.name, "employer", p.employer, p.split),
                make_fact(p.name, "field_of_study", p.field_of_study, p.split),
            ]
        return facts

    def facts_table(self) -> list[dict[str, str]]:
        """Every fact as a plain dict (subject, subject_type, relation, object, prompt, answer, split)."""
        return [f.to_dict() for f in self.facts]

    @property
    def train_people(self) -> list[Person]:
        """People who appear in the corpus."""
        return [p for p in self.people if p.split == "train"]

    @property
    def heldout_people(self) -> list[Person]:
        """People who never appear in any document."""
        return [p for p in self.people if p.split == "heldout"]

    @cached_property
    def city(self) -> dict[str, City]:
        """Cities by name."""
        return {c.name: c for c in self.cities}

    @cached_property
    def organisation(self) -> dict[str, Organisation]:
        """Organisations by name."""
        return {o.name: o for o in self.organisations}

    @cached_property
    def documents(self) -> list[Document]:
        """The corpus documents (rendered on first access, deterministic)."""
        return self.render()

    def render(self, progress: bool = False) -> list[Document]:
        """Render (once) and cache the corpus documents, optionally with a progress bar."""
        if "documents" not in self.__dict__:
            from chatforge.world.render import render_documents

            self.__dict__["documents"] = render_documents(self, progress=progress)
        return self.__dict__["documents"]

    def to_dict(self) -> dict[str, Any]:
        """Entities and config as JSON-ready data (what `world.json` holds)."""
        config = dataclasses.asdict(self.config)
        config["person_styles"] = list(self.config.person_styles)
        return {
            "config": config,
            "countries": [dataclasses.asdict(c) for c in self.countries],
            "cities": [dataclasses.asdict(c) for c in self.cities],
            "organisations": [dataclasses.asdict(o) for o in self.organisations],
            "people": [dataclasses.asdict(p) for p in self.people],
        }


def load_world(path: str | Path) -> World:
    """The world a `world.json` describes, regenerated from its config (generation is deterministic and fast)."""
    path = Path(path)
    if path.is_dir():
        path = path / "world.json"
    if not path.is_file():
        raise RecipeError(f"world file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes it")
    config = json.loads(path.read_text())["config"]
    config["person_styles"] = tuple(config.get("person_styles", WorldConfig().person_styles))
    return World.generate(WorldConfig(**config))


def generate_world(config: WorldConfig | None = None) -> World:
    """Shorthand for `World.generate(config)`."""
    return World.generate(config)
