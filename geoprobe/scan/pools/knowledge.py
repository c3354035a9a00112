"""The ``knowledge`` pool: general-knowledge statements and questions, written for geoprobe.

How it is made: 24 templates (12 written to end on a determined next token, e.g. "The capital of Peru is" or
"The chemical symbol for gold is"; 12 written to end where many continuations fit, e.g. "One interesting fact
about volcanoes is that") filled from the slot vocabularies below (countries, elements, planets, animals and
topics listed for this pool; only names are listed, no answers are needed) by the seeded sampler of
:mod:`geoprobe.scan.pools.base`. Nothing is copied from any dataset; the capacity is about 900 distinct
texts.
"""

from __future__ import annotations

from geoprobe.scan.pools.base import Template

COUNTRIES = ["France", "Japan", "Peru", "Kenya", "Canada", "Egypt", "Norway", "Brazil", "India", "Australia",
             "Mexico", "Italy", "Spain", "Germany", "Chile", "Vietnam", "Poland", "Greece", "Turkey", "Argentina",
             "Thailand", "Portugal", "Sweden", "Nigeria", "Ireland", "Cuba", "Morocco", "Iceland"]
ELEMENTS = ["gold", "silver", "iron", "oxygen", "hydrogen", "carbon", "sodium", "helium", "copper", "lead",
            "nitrogen", "calcium", "potassium", "zinc", "mercury", "tin"]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ANIMALS = ["elephant", "octopus", "penguin", "cheetah", "bee", "whale", "owl", "kangaroo", "salmon", "bat",
           "giraffe", "ant", "dolphin", "crow"]
TOPICS = ["volcanoes", "photosynthesis", "the Roman Empire", "black holes", "the printing press", "vaccines",
          "glaciers", "the human heart", "electricity", "the Silk Road", "coral reefs", "earthquakes",
          "the immune system", "rainbows", "tides", "the Moon", "bread yeast", "the internet", "democracy",
          "antibiotics", "DNA", "the water cycle"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
VOCAB = {"country": COUNTRIES, "element": ELEMENTS, "planet": PLANETS, "animal": ANIMALS, "topic": TOPICS,
         "ordinal": ORDINALS, "topic2": TOPICS}

TEMPLATES = [
    # determined endings
    Template("capital", "determined", "The capital of {country} is"),
    Template("capital_q", "determined", "Q: What is the capital city of {country}?\nA: The capital city of {country} is"),
    Template("symbol", "determined", "The chemical symbol for {element} is"),
    Template("planet_order", "determined", "The {ordinal} planet from the Sun is"),
    Template("planet_is", "determined", "{planet} is a planet in our solar"),
    Template("boils", "determined", "At sea level, pure water boils at 100 degrees"),
    Template("mammal", "determined", "The {animal} is a kind of"),
    Template("language", "determined", "The official language of {country} is"),
    Template("continent", "determined", "{country} is a country on the continent of"),
    Template("currency", "determined", "The currency used in {country} is the"),
    Template("days_week", "determined", "There are seven days in a"),
    Template("element_is", "determined", "In the periodic table, {element} is a chemical"),
    # open endings
    Template("fact", "open", "One interesting fact about {topic} is that"),
    Template("historians", "open", "Historians often describe {topic} as"),
    Template("reason", "open", "The main reason {topic} matters is"),
    Template("qa", "open", "Q: What do we know about {topic}?\nA:"),
    Template("scientists", "open", "Scientists study {topic} because"),
    Template("misconception", "open", "A common misconception about {topic} is"),
    Template("animal_open", "open", "The {animal} lives"),
    Template("country_open", "open", "{country} is famous for its"),
    Template("compare", "open", "The difference between {topic} and {topic2} is"),
    Template("planet_open", "open", "If you could stand on {planet}, you would"),
    Template("element_open", "open", "{element} is used in"),
    Template("history_open", "open", "In the history of {country},"),
]
