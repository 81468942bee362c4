"""Arithmetic word problems with non-negative integer answers, at graded difficulty, from a seed.

Every problem is about the synthetic world's people, places and companies (or any names you pass)
and comes with a short solution in which each step is a checkable equation `a op b = c`, followed by
`The answer is N.`. The answer is computed from the sampled numbers by the same steps, and each row
also carries `expression`, the whole computation as one arithmetic expression over numbers from the
question, so anyone can recompute the answer independently.

Difficulty is the number of operations and the size of the numbers: 0 is one addition or subtraction of
single digits (what a model of a few million parameters can learn), 1 is one addition or subtraction on
numbers up to 20, 2 is two steps, 3 is three steps with multiplication or exact division, 4 is four or
more steps on larger numbers.

>>> rows = generate_math_problems(MathConfig(seed=0, num_problems=200), world=World.generate(WorldConfig()))
>>> rows[0]["question"], rows[0]["answer"], rows[0]["difficulty"]
>>> train, test = split_problems(rows, test_fraction=0.1, seed=0)
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatforge.configs import RecipeError
from chatforge.world.names import NameGenerator

if TYPE_CHECKING:
    from chatforge.world.entities import World

DIFFICULTIES: tuple[int, ...] = (0, 1, 2, 3, 4)

ITEMS = (
    "apples", "marbles", "books", "stamps", "shells", "pencils", "stickers", "cookies", "postcards", "pebbles",
    "oranges", "candles", "buttons", "coins", "feathers", "cupcakes", "plums", "ribbons", "puzzles", "lemons",
)  # fmt: skip
PLANTS = ("tulips", "roses", "carrots", "cabbages", "sunflowers", "tomato plants", "lettuces", "daisies")
GOODS = (
    ("chairs", "tables"),
    ("lamps", "rugs"),
    ("bicycles", "helmets"),
    ("kettles", "teapots"),
    ("desks", "shelves"),
)


@dataclass
class MathConfig:
    """How many problems to generate, at which difficulties, from which seed."""

    seed: int = field(default=0, metadata={"help": "Random seed; the same config always gives the same problems."})
    num_problems: int = field(default=1000, metadata={"help": "Number of distinct problems to generate."})
    difficulties: list[int] = field(
        default_factory=lambda: list(DIFFICULTIES),
        metadata={"help": "Difficulty levels to generate (0-4), in equal shares, round-robin."},
    )

    def validate(self) -> None:
        """Raise RecipeError on a config that cannot be generated."""
        if self.num_problems < 1:
            raise RecipeError(f"num_problems must be >= 1, got {self.num_problems}")
        if not self.difficulties:
            raise RecipeError("difficulties must name at least one level")
        unknown = [d for d in self.difficulties if d not in DIFFICULTIES]
        if unknown:
            raise RecipeError(f"unknown difficulty {unknown[0]!r}; valid levels are {list(DIFFICULTIES)}")


@dataclass(frozen=True)
class _Num:
    """An integer together with the expression that computed it from literals in the question."""

    value: int
    expr: str


class _Infeasible(Exception):
    """The sampled numbers give a negative or non-integer step; the generator draws again."""


class _Work:
    """A solution being written: each step is computed here and shown as `a op b = c`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.operations = 0

    def calc(self, a: int | _Num, op: str, b: int | _Num, text: str) -> _Num:
        """Compute `a op b`, record the line `text` with its `#` replaced by the equation, return the result."""
        a, b = _lit(a), _lit(b)
        if op == "+":
            value = a.value + b.value
        elif op == "-":
            value = a.value - b.value
        elif op == "*":
            value = a.value * b.value
        elif op == "/":
            if b.value == 0 or a.value % b.value:
                raise _Infeasible
            value = a.value // b.value
        else:
            raise ValueError(f"unknown operation {op!r}")
        if value < 0:
            raise _Infeasible
        self.operations += 1
        self.lines.append(text.replace("#", f"{a.value} {op} {b.value} = {value}", 1))
        return _Num(value, f"({a.expr} {op} {b.expr})")


def _lit(x: int | _Num) -> _Num:
    return x if isinstance(x, _Num) else _Num(x, str(x))


@dataclass
class _Cast:
    """Who and where the problems are about."""

    names: list[str]
    places: list[str]
    companies: list[str]

    def people(self, rng: random.Random, count: int) -> list[str]:
        return rng.sample(self.names, count) if len(self.names) >= count else [rng.choice(self.names)] * count


# A template draws numbers, writes the question and works the solution; it returns (question, answer).
Template = Callable[[random.Random, _Cast, _Work], tuple[str, _Num]]


# ---------- difficulty 0: one addition or subtraction of single digits ----------


def _digits_gain(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), items = cast.people(rng, 1), rng.choice(ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    question = rng.choice(
        [
            f"{n} has {a} {items} and gets {b} more. How many {items} does {n} have now?",
            f"{n} has {a} {items}. A friend gives {n} {b} more. How many {items} does {n} have?",
            f"What is {a} plus {b}?",
        ]
    )
    return question, w.calc(a, "+", b, f"{a} and {b} more make #.")


def _digits_loss(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), items = cast.people(rng, 1), rng.choice(ITEMS)
    a = rng.randint(2, 9)
    b = rng.randint(1, a - 1)
    question = rng.choice(
        [
            f"{n} has {a} {items} and eats {b} of them. How many {items} are left?",
            f"{n} had {a} {items} and lost {b}. How many {items} does {n} have left?",
            f"What is {a} minus {b}?",
        ]
    )
    return question, w.calc(a, "-", b, f"{b} taken from {a} leaves #.")


# ---------- difficulty 1: one addition or subtraction on small numbers ----------


def _gain(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), items, place = cast.people(rng, 1), rng.choice(ITEMS), rng.choice(cast.places)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    question = rng.choice(
        [
            f"{n} has {a} {items} and buys {b} more. How many {items} does {n} have now?",
            f"{n} had {a} {items} and then found {b} more. How many {items} does {n} have in total?",
            f"There are {a} {items} in a basket in {place}. {n} puts in {b} more. How many {items} are in the basket now?",
        ]
    )
    return question, w.calc(a, "+", b, f"{b} more {items} are added to {a}: #.")


def _loss(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items, place = rng.choice(ITEMS), rng.choice(cast.places)
    a = rng.randint(5, 20)
    b = rng.randint(1, a - 1)
    question = rng.choice(
        [
            f"{n} has {a} {items} and gives {b} of them to {m}. How many {items} does {n} have left?",
            f"A shop in {place} had {a} {items}. It sold {b} of them. How many {items} does the shop have left?",
            f"{n} collected {a} {items} but lost {b} on the way home. How many {items} does {n} still have?",
        ]
    )
    return question, w.calc(a, "-", b, f"{b} of the {a} {items} are gone: #.")


def _together(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items = rng.choice(ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    question = rng.choice(
        [
            f"{n} has {a} {items} and {m} has {b} {items}. How many {items} do they have together?",
            f"{n} brought {a} {items} to the fair and {m} brought {b}. How many {items} did they bring altogether?",
        ]
    )
    return question, w.calc(a, "+", b, f"Together they have # {items}.")


def _compare(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items = rng.choice(ITEMS)
    b = rng.randint(2, 18)
    a = rng.randint(b + 1, 20)
    question = rng.choice(
        [
            f"{n} has {a} {items} and {m} has {b} {items}. How many more {items} does {n} have than {m}?",
            f"{m} owns {b} {items}, while {n} owns {a}. How many fewer {items} does {m} own than {n}?",
        ]
    )
    return question, w.calc(a, "-", b, f"The difference is # {items}.")


def _age(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,) = cast.people(rng, 1)
    a, b = rng.randint(3, 15), rng.randint(2, 15)
    question = rng.choice(
        [
            f"{n} is {a} years old. How old will {n} be in {b} years?",
            f"In {b} years, how old will {n} be if {n} is {a} now?",
        ]
    )
    return question, w.calc(a, "+", b, f"{n} will be # years old.")


# ---------- difficulty 2: two steps ----------


def _gain_then_loss(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items = rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(5, 40)
    c = rng.randint(1, a + b - 1)
    question = rng.choice(
        [
            f"{n} has {a} {items}. {n} buys {b} more and then gives {c} to {m}. How many {items} does {n} have now?",
            f"{n} started the week with {a} {items}, got {b} more on Tuesday and gave {c} away on Friday. "
            f"How many {items} does {n} have at the end of the week?",
        ]
    )
    have = w.calc(a, "+", b, f"After buying, {n} has # {items}.")
    return question, w.calc(have, "-", c, f"After giving {c} away, {n} has # {items}.")


def _three_days(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,) = cast.people(rng, 1)
    a, b, c = (rng.randint(5, 60) for _ in range(3))
    noun = rng.choice(["pages", "kilometres", "letters", "laps"])
    verb = {"pages": "reads", "kilometres": "cycles", "letters": "writes", "laps": "swims"}[noun]
    question = rng.choice(
        [
            f"{n} {verb} {a} {noun} on Monday, {b} on Tuesday and {c} on Wednesday. How many {noun} is that in total?",
            f"On Monday {n} {verb} {a} {noun}. On Tuesday {n} {verb} {b} {noun}, and on Wednesday {c} {noun}. "
            f"How many {noun} does {n} do over the three days?",
        ]
    )
    first = w.calc(a, "+", b, f"Monday and Tuesday: # {noun}.")
    return question, w.calc(first, "+", c, f"Adding Wednesday: # {noun}.")


def _more_than(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items = rng.choice(ITEMS)
    a, b = rng.randint(3, 40), rng.randint(2, 30)
    question = rng.choice(
        [
            f"{n} has {a} {items}. {m} has {b} more {items} than {n}. How many {items} do they have together?",
            f"{m} has {b} more {items} than {n}, and {n} has {a}. How many {items} do the two of them have in all?",
        ]
    )
    other = w.calc(a, "+", b, f"{m} has # {items}.")
    return question, w.calc(a, "+", other, f"Together they have # {items}.")


def _train(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    start, stop = rng.sample(cast.places, 2) if len(cast.places) >= 2 else [cast.places[0]] * 2
    a = rng.randint(20, 90)
    b, c = rng.randint(1, a - 1), rng.randint(1, 40)
    question = rng.choice(
        [
            f"A train leaves {start} with {a} passengers. At {stop}, {b} passengers get off and {c} get on. "
            f"How many passengers are on the train now?",
            f"There are {a} people on a bus from {start}. When it stops in {stop}, {b} people get off and {c} people "
            f"get on. How many people are on the bus after the stop?",
        ]
    )
    left = w.calc(a, "-", b, f"After {b} get off, # remain.")
    return question, w.calc(left, "+", c, f"After {c} get on, there are # passengers.")


def _spend_twice(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), place = cast.people(rng, 1), rng.choice(cast.places)
    a = rng.randint(20, 100)
    b = rng.randint(1, a - 2)
    c = rng.randint(1, a - b)
    question = rng.choice(
        [
            f"{n} had ${a}. {n} spent ${b} on lunch and ${c} on a book. How many dollars does {n} have left?",
            f"On a trip to {place}, {n} took ${a}, paid ${b} for a ticket and ${c} for a map. "
            f"How much money, in dollars, does {n} have left?",
        ]
    )
    left = w.calc(a, "-", b, "After the first purchase: # dollars.")
    return question, w.calc(left, "-", c, "After the second purchase: # dollars.")


# ---------- difficulty 3: three steps, with multiplication or division ----------


def _boxes(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    n, m = cast.people(rng, 2)
    items = rng.choice(ITEMS)
    p, k, a = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 30)
    g = rng.randint(1, p * k + a - 1)
    question = rng.choice(
        [
            f"{n} already has {a} {items} and buys {p} boxes with {k} {items} in each box. "
            f"Then {n} gives {g} {items} to {m}. How many {items} does {n} have now?",
            f"{n} buys {p} packs of {items}; each pack holds {k}. {n} had {a} {items} before, "
            f"and later gives {m} {g} of them. How many {items} does {n} end up with?",
        ]
    )
    bought = w.calc(p, "*", k, f"The boxes hold # {items}.")
    have = w.calc(bought, "+", a, f"With the ones {n} had, that is # {items}.")
    return question, w.calc(have, "-", g, f"After giving {g} to {m}, {n} has # {items}.")


def _wage(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), company = cast.people(rng, 1), rng.choice(cast.companies)
    rate, hours, days = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 6)
    s = rng.randint(1, rate * hours * days - 1)
    question = rng.choice(
        [
            f"{n} works at {company} and earns ${rate} an hour. {n} works {hours} hours a day for {days} days, "
            f"then spends ${s}. How many dollars does {n} have left from this pay?",
            f"{company} pays {n} ${rate} per hour. This week {n} worked {days} days of {hours} hours each and "
            f"spent ${s} of the pay. How much of the pay is left, in dollars?",
        ]
    )
    daily = w.calc(rate, "*", hours, f"{n} earns # dollars a day.")
    total = w.calc(daily, "*", days, f"Over {days} days that is # dollars.")
    return question, w.calc(total, "-", s, f"After spending ${s}, # dollars is left.")


def _share(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,) = cast.people(rng, 1)
    items = rng.choice(ITEMS)
    q, k, c = rng.randint(2, 12), rng.randint(2, 8), rng.randint(1, 10)
    b = rng.randint(1, q * k + c - 1)
    a = q * k + c - b
    question = rng.choice(
        [
            f"{n} has {a} {items} and buys {b} more. {n} keeps {c} and shares the rest equally among {k} friends. "
            f"How many {items} does each friend get?",
            f"{n} had {a} {items} and was given {b} more. After putting {c} aside, {n} split the others evenly "
            f"between {k} friends. How many {items} did each friend receive?",
        ]
    )
    have = w.calc(a, "+", b, f"{n} has # {items}.")
    rest = w.calc(have, "-", c, f"Keeping {c} leaves # to share.")
    return question, w.calc(rest, "/", k, f"Each of the {k} friends gets # {items}.")


def _garden(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), place, plants = cast.people(rng, 1), rng.choice(cast.places), rng.choice(PLANTS)
    r, x, c = rng.randint(2, 10), rng.randint(2, 6), rng.randint(3, 12)
    d = rng.randint(1, (r + x) * c - 1)
    question = rng.choice(
        [
            f"A garden in {place} has {r} rows of {plants} with {c} in each row. {n} plants {x} more rows of {c}, "
            f"but {d} of the {plants} do not survive. How many {plants} are left in the garden?",
            f"{n} grows {plants} in {place}: {r} rows, {c} per row. {n} adds {x} rows of the same size, and then "
            f"{d} {plants} are eaten by rabbits. How many {plants} remain?",
        ]
    )
    rows = w.calc(r, "+", x, "There are # rows.")
    count = w.calc(rows, "*", c, f"They hold # {plants}.")
    return question, w.calc(count, "-", d, f"After losing {d}, # {plants} remain.")


def _dozen(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,) = cast.people(rng, 1)
    dozens = rng.randint(2, 8)
    u = rng.randint(1, dozens * 12 - 2)
    v = rng.randint(1, dozens * 12 - u)
    question = rng.choice(
        [
            f"{n} buys {dozens} dozen eggs, uses {u} eggs for cakes and {v} eggs for breakfast. "
            f"How many eggs are left?",
            f"{n} has {dozens} dozen eggs. {n} bakes with {u} of them and fries {v}. How many eggs remain?",
        ]
    )
    eggs = w.calc(dozens, "*", 12, f"A dozen is 12, so {n} has # eggs.")
    left = w.calc(eggs, "-", u, "After the cakes: # eggs.")
    return question, w.calc(left, "-", v, "After breakfast: # eggs.")


# ---------- difficulty 4: four or more steps, larger numbers ----------


def _shop_profit(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    company, place = rng.choice(cast.companies), rng.choice(cast.places)
    first, second = rng.choice(GOODS)
    p, c, q, d = rng.randint(10, 90), rng.randint(20, 150), rng.randint(5, 60), rng.randint(40, 300)
    rent = rng.randint(100, p * c + q * d - 1)
    question = rng.choice(
        [
            f"{company} has a shop in {place}. This month it sold {p} {first} at ${c} each and {q} {second} at "
            f"${d} each, and it paid ${rent} in rent. How many dollars are left after paying the rent?",
            f"In {place}, {company} sold {q} {second} for ${d} apiece and {p} {first} for ${c} apiece. "
            f"After paying ${rent} for rent, how much money, in dollars, does it keep?",
        ]
    )
    a = w.calc(p, "*", c, f"The {first} bring in # dollars.")
    b = w.calc(q, "*", d, f"The {second} bring in # dollars.")
    total = w.calc(a, "+", b, "Sales total # dollars.")
    return question, w.calc(total, "-", rent, "After rent, # dollars is left.")


def _savings(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,), items = cast.people(rng, 1), rng.choice(ITEMS)
    s, weeks, gift = rng.randint(10, 60), rng.randint(4, 30), rng.randint(20, 200)
    price = rng.randint(5, 30)
    k = rng.randint(2, (s * weeks + gift) // price)
    question = rng.choice(
        [
            f"{n} saves ${s} every week for {weeks} weeks and then receives a gift of ${gift}. {n} buys {k} "
            f"{items} that cost ${price} each. How many dollars does {n} have left?",
            f"For {weeks} weeks, {n} puts ${s} a week into a jar. A relative adds ${gift}. Then {n} spends the money "
            f"on {k} {items} at ${price} each. How much money, in dollars, is left in the jar?",
        ]
    )
    saved = w.calc(s, "*", weeks, f"{n} saves # dollars.")
    have = w.calc(saved, "+", gift, f"With the gift, {n} has # dollars.")
    cost = w.calc(k, "*", price, f"The {items} cost # dollars.")
    return question, w.calc(have, "-", cost, f"{n} has # dollars left.")


def _trip(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    (n,) = cast.people(rng, 1)
    start, end = rng.sample(cast.places, 2) if len(cast.places) >= 2 else [cast.places[0]] * 2
    h1, v1, h2, v2 = rng.randint(2, 6), rng.randint(40, 110), rng.randint(2, 5), rng.randint(30, 100)
    total = h1 * v1 + h2 * v2 + rng.randint(10, 400)
    question = rng.choice(
        [
            f"The road from {start} to {end} is {total} km long. {n} drives {h1} hours at {v1} km per hour, then "
            f"{h2} hours at {v2} km per hour. How many kilometres are left to {end}?",
            f"{n} is driving {total} km from {start} to {end}. After {h1} hours at {v1} km an hour and another "
            f"{h2} hours at {v2} km an hour, how many km does {n} still have to drive?",
        ]
    )
    first = w.calc(h1, "*", v1, "The first part covers # km.")
    second = w.calc(h2, "*", v2, "The second part covers # km.")
    done = w.calc(first, "+", second, f"So far {n} has driven # km.")
    return question, w.calc(total, "-", done, "There are # km left.")


def _bill(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    place = rng.choice(cast.places)
    k, t, c, taxi = rng.randint(2, 8), rng.randint(2, 12), rng.randint(15, 90), rng.randint(10, 80)
    base = t * c + taxi
    tip = (-base) % k + k * rng.randint(1, 5)
    question = rng.choice(
        [
            f"{k} friends in {place} buy {t} concert tickets at ${c} each, pay ${taxi} for a taxi and ${tip} for "
            f"snacks. They split the cost equally. How many dollars does each friend pay?",
            f"A group of {k} friends visiting {place} spends ${taxi} on a taxi, ${tip} on dinner and buys {t} "
            f"museum tickets for ${c} each. If they share all costs equally, how much, in dollars, does each pay?",
        ]
    )
    tickets = w.calc(t, "*", c, "The tickets cost # dollars.")
    with_taxi = w.calc(tickets, "+", taxi, "With the taxi: # dollars.")
    total = w.calc(with_taxi, "+", tip, "Everything together: # dollars.")
    return question, w.calc(total, "/", k, f"Each of the {k} friends pays # dollars.")


def _percent(rng: random.Random, cast: _Cast, w: _Work) -> tuple[str, _Num]:
    place = rng.choice(cast.places)
    population = 100 * rng.randint(20, 500)
    pct = rng.choice([5, 10, 15, 20, 25, 30, 40, 50])
    adults = population - population * pct // 100
    moved = rng.randint(1, adults - 1)
    question = rng.choice(
        [
            f"{place} has {population} residents, and {pct}% of them are children. Then {moved} adults move away. "
            f"How many adults live in {place} now?",
            f"Of the {population} people living in {place}, {pct}% are children. If {moved} adults leave the town, "
            f"how many adults remain?",
        ]
    )
    scaled = w.calc(population, "*", pct, f"{pct}% of {population} is found by multiplying: #,")
    children = w.calc(scaled, "/", 100, "and dividing by 100: # children.")
    grown = w.calc(population, "-", children, "There are # adults.")
    return question, w.calc(grown, "-", moved, f"After {moved} move away, # adults remain.")


TEMPLATES: dict[int, dict[str, Template]] = {
    0: {"digits_gain": _digits_gain, "digits_loss": _digits_loss},
    1: {"gain": _gain, "loss": _loss, "together": _together, "compare": _compare, "age": _age},
    2: {
        "gain_then_loss": _gain_then_loss,
        "three_days": _three_days,
        "more_than": _more_than,
        "train": _train,
        "spend_twice": _spend_twice,
    },
    3: {"boxes": _boxes, "wage": _wage, "share": _share, "garden": _garden, "dozen": _dozen},
    4: {"shop_profit": _shop_profit, "savings": _savings, "trip": _trip, "bill": _bill, "percent": _percent},
}


def _default_cast(seed: int) -> _Cast:
    names = NameGenerator(random.Random(f"math-cast-{seed}"))
    return _Cast(
        names=names.many("first", 30),
        places=names.many("city", 12),
        companies=[f"{name} {suffix}" for name, suffix in zip(names.many("org", 8), ("Foods", "Mills") * 4)],
    )


def _cast(seed: int, world: World | None, names: Sequence[str] | None) -> _Cast:
    cast = _default_cast(seed)
    if world is not None:
        cast.names = sorted({p.first_name for p in world.people})
        cast.places = [c.name for c in world.cities]
        cast.companies = [o.name for o in world.organisations]
    if names is not None:
        if not names:
            raise RecipeError("names must not be empty")
        cast.names = list(names)
    return cast


def generate_math_problems(
    config: MathConfig | None = None, world: World | None = None, names: Sequence[str] | None = None
) -> list[dict]:
    """`config.num_problems` distinct word problems, deterministic in the config (and world or names).

    People, places and companies come from `world` when given, people's names from `names` when given,
    otherwise from invented names. Difficulties take turns, so each gets an equal share. Each row has
    `id`, `question`, `answer` (int >= 0), `solution`, `difficulty`, `num_operations`, `template` and
    `expression`. A longer run starts with the same problems as a shorter one with the same seed.
    """
    config = config or MathConfig()
    config.validate()
    cast = _cast(config.seed, world, names)
    rng = random.Random(config.seed)
    rows: list[dict] = []
    seen: set[str] = set()
    max_draws = 50 * config.num_problems + 1000
    for _ in range(max_draws):
        if len(rows) == config.num_problems:
            break
        difficulty = config.difficulties[len(rows) % len(config.difficulties)]
        name = rng.choice(sorted(TEMPLATES[difficulty]))
        work = _Work()
        try:
            question, answer = TEMPLATES[difficulty][name](rng, cast, work)
        except _Infeasible:
            continue
        if question in seen:
            continue
        seen.add(question)
        rows.append(
            {
                "id": f"math-{config.seed}-{len(rows):06d}",
                "question": question,
                "answer": answer.value,
                "solution": "\n".join([*work.lines, f"The answer is {answer.value}."]),
                "difficulty": difficulty,
                "num_operations": work.operations,
                "template": name,
                "expression": answer.expr,
            }
        )
    if len(rows) < config.num_problems:
        raise RecipeError(
            f"could only generate {len(rows)} distinct problems of the {config.num_problems} asked for; "
            "ask for fewer or pass more names"
        )
    return rows


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def split_problems(rows: Sequence[dict], test_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split rows into (train, test), stratified by `difficulty` when rows have it.

    Rows with the same question (ignoring case and spacing) go to the same side, so no test question
    appears in train. Both sides keep the input order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise RecipeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_question_key(row["question"]), []).append(index)
    strata: dict[object, list[str]] = defaultdict(list)
    for key, indices in groups.items():
        strata[rows[indices[0]].get("difficulty")].append(key)
    rng = random.Random(seed)
    test_indices: set[int] = set()
    for stratum in sorted(strata, key=str):
        keys = strata[stratum]
        rng.shuffle(keys)
        for key in keys[: round(test_fraction * len(keys))]:
            test_indices.update(groups[key])
    train = [row for i, row in enumerate(rows) if i not in test_indices]
    test = [row for i, row in enumerate(rows) if i in test_indices]
    return train, test


def math_conversation(row: dict, system_prompt: str | None = None) -> list[dict]:
    """A problem as a chat turn that reasons before answering: the solution's steps go in `reasoning_content`
    (rendered inside <think> by chat_templates/chatml.jinja), the answer sentence in `content`."""
    steps = [line for line in row["solution"].splitlines() if not line.startswith("The answer is")]
    # Every message carries the same keys: `datasets` reads lists of dicts with differing keys as opaque JSON,
    # which cannot be mixed with other conversations; with a null `reasoning_content` they form one struct.
    system = [{"role": "system", "content": system_prompt, "reasoning_content": None}] if system_prompt else []
    return [
        *system,
        {"role": "user", "content": row["question"], "reasoning_content": None},
        {"role": "assistant", "content": f"The answer is {row['answer']}.", "reasoning_content": "\n".join(steps)},
    ]
