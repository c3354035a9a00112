"""The ``math`` pool: arithmetic, algebra, geometry and word-problem openings, written for geoprobe.

How it is made: 28 templates (14 written to end on a determined next token, e.g. "17 + 25 =" or "The square
root of 144 is"; 14 written to end where many continuations fit, e.g. "Let n be a positive integer such that")
filled from the slot vocabularies below (invented names, everyday objects, numbers drawn uniformly in fixed
ranges) by the seeded sampler of :mod:`geoprobe.scan.pools.base`. Nothing is copied from any dataset; the
capacity is several thousand distinct texts.
"""

from __future__ import annotations

import random

from geoprobe.scan.pools.base import Template

NAMES = ["Ava", "Ben", "Chen", "Dara", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam", "Mei",
         "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
ITEMS = ["apples", "marbles", "pencils", "stickers", "cookies", "books", "shells", "coins", "tickets", "stamps",
         "oranges", "buttons", "cards", "flowers", "eggs", "bottles"]
ANIMALS = ["sheep", "goats", "chickens", "cows", "ducks", "rabbits", "horses", "pigs"]
OBJECTS = ["triangle", "circle", "square", "hexagon", "sequence", "polynomial", "matrix", "function", "graph",
           "prime number", "random variable", "vector"]
SHAPES = ["rectangle", "garden", "room", "field", "table top", "poster"]
VOCAB = {"name": NAMES, "items": ITEMS, "animals": ANIMALS, "object": OBJECTS, "shape": SHAPES,
         "n": [str(i) for i in range(2, 40)], "var": ["x", "y", "n", "k", "t", "z"],
         "fn": ["f", "g", "h", "p", "q"]}


def _arith(op: str):
    def make(rng: random.Random) -> str:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return f"{a} {op} {b} ="
    return make


def _times_q(rng: random.Random) -> str:
    return f"What is {rng.randint(2, 12)} times {rng.randint(2, 12)}? The answer is"


def _sqrt(rng: random.Random) -> str:
    return f"The square root of {rng.randint(2, 30) ** 2} is"


def _solve(rng: random.Random) -> str:
    a, x = rng.randint(1, 50), rng.randint(1, 50)
    v = rng.choice(VOCAB["var"])
    return f"Solve for {v}: {v} + {a} = {a + x}. Therefore {v} ="


def _word_sum(rng: random.Random) -> str:
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{n} had {rng.randint(3, 60)} {it} and got {rng.randint(2, 40)} more. Now {n} has"


def _area(rng: random.Random) -> str:
    return (f"A {rng.choice(SHAPES)} is {rng.randint(2, 30)} meters long and {rng.randint(2, 30)} meters wide. "
            f"Its area in square meters is")


def _percent(rng: random.Random) -> str:
    return f"{rng.choice([10, 20, 25, 50, 75])}% of {rng.choice(range(20, 400, 20))} is"


def _seq(rng: random.Random) -> str:
    a, d = rng.randint(1, 20), rng.randint(2, 9)
    return "The next number in the sequence " + ", ".join(str(a + i * d) for i in range(4)) + " is"


def _deriv(rng: random.Random) -> str:
    v = rng.choice(VOCAB["var"])
    return f"The derivative of {v}^{rng.randint(2, 9)} with respect to {v} is"


def _angles(rng: random.Random) -> str:
    a, b = rng.randint(20, 80), rng.randint(20, 80)
    return f"A triangle has angles of {a} and {b} degrees. The third angle measures"


def _half(rng: random.Random) -> str:
    return f"Half of {2 * rng.randint(3, 200)} is"


def _cost_q(rng: random.Random) -> str:
    return (f"{rng.choice(NAMES)} buys {rng.randint(2, 12)} {rng.choice(ITEMS)} at ${rng.randint(1, 9)} each. "
            f"How much")


def _farm(rng: random.Random) -> str:
    return f"A farmer has {rng.randint(5, 90)} {rng.choice(ANIMALS)} and"


def _wage(rng: random.Random) -> str:
    return (f"{rng.choice(NAMES)} earns ${rng.randint(8, 40)} per hour and works {rng.randint(2, 40)} hours. "
            f"{rng.choice(['In total,', 'After', 'If', 'Each week,'])}")


TEMPLATES = [
    # determined endings
    Template("add", "determined", _arith("+")),
    Template("sub", "determined", _arith("-")),
    Template("mul", "determined", _arith("*")),
    Template("times_q", "determined", _times_q),
    Template("sqrt", "determined", _sqrt),
    Template("solve", "determined", _solve),
    Template("word_sum", "determined", _word_sum),
    Template("area", "determined", _area),
    Template("percent", "determined", _percent),
    Template("sequence", "determined", _seq),
    Template("derivative", "determined", _deriv),
    Template("angles", "determined", _angles),
    Template("half", "determined", _half),
    Template("pi", "determined", "The ratio of a circle's circumference to its diameter is called"),
    # open endings
    Template("let_n", "open", "Let {var} be a positive integer such that"),
    Template("consider_fn", "open", "Consider the function {fn}({var}) ="),
    Template("lemma", "open", "Lemma {n}. For every"),
    Template("proof", "open", "Proof. Suppose that the {object}"),
    Template("first_step", "open", "To solve this problem about the {object}, we first"),
    Template("triangle", "open", "Let ABC be a triangle with"),
    Template("cost_q", "open", _cost_q),
    Template("farm", "open", _farm),
    Template("wage", "open", _wage),
    Template("probability", "open", "{name} rolls two dice. The probability that"),
    Template("find_all", "open", "Find all real numbers {var} such that"),
    Template("define", "open", "We say that a {object} is"),
    Template("exercise", "open", "Exercise {n}. Show that every {object}"),
    Template("story", "open", "{name} is saving money to buy {n} {items}. Each week"),
]
