"""The ``prose`` pool: fiction and narrative prose openings, written for geoprobe.

How it is made: 27 templates (12 written to end on a determined next token -- fixed phrases such as "Once upon
a" or "She took a deep" placed after a varied invented sentence; 15 written to end where many continuations
fit, e.g. "When Ines finally reached the lighthouse, she") filled from the slot vocabularies below (names
split by the pronoun used with them, invented villages, places, objects, moods) by the seeded sampler of
:mod:`geoprobe.scan.pools.base`. Nothing is copied from any book or dataset; the capacity is several thousand
distinct texts.
"""

from __future__ import annotations

from geoprobe.scan.pools.base import Template

# names are split by the pronoun the templates use with them, so "she"/"he" always agrees with the name
NAMES_F = ["Ines", "Maren", "Odile", "Sunniva", "Lena", "Beatrix", "Delphine", "Freya", "Hana", "Juno", "Liesel",
           "Amara", "Nell", "Yara"]
NAMES_M = ["Tomas", "Rafe", "Kofi", "Arjun", "Calum", "Emeka", "Gideon", "Ilya", "Kasimir", "Bram", "Teodor",
           "Wendell"]
NAMES = NAMES_F + NAMES_M
PLACES = ["lighthouse", "kitchen", "forest", "station", "market", "attic", "harbor", "library", "orchard",
          "bakery", "cellar", "bridge", "garden", "chapel", "workshop", "platform"]
CONTAINERS = ["box", "drawer", "envelope", "trunk", "cupboard", "suitcase", "jar", "basket", "locket", "tin"]
VILLAGES = ["Ashcombe", "Merrow", "Tilby", "Quenford", "Harrowgate End", "Lowmere", "Skelby", "Orrin Cross"]
MOODS = ["tired", "nervous", "happy", "furious", "restless", "hopeful", "lonely", "curious"]
WEATHER = ["The rain had not stopped for three days.", "Snow covered the rooftops.",
           "It was the hottest afternoon of the summer.", "A thin fog rolled in from the sea.",
           "The wind rattled the shutters all night.", "The morning was bright and cold."]
TIMES = ["At dawn", "Later that evening", "The next morning", "Just before midnight", "On the third day",
         "Years later", "That winter"]
VOCAB = {"name": NAMES, "name2": NAMES, "she": NAMES_F, "he": NAMES_M, "place": PLACES, "container": CONTAINERS, "village": VILLAGES,
         "mood": MOODS, "weather": WEATHER, "time": TIMES}

TEMPLATES = [
    # determined endings (fixed phrases)
    Template("once_upon", "determined", "{weather} Once upon a"),
    Template("deep_breath", "determined", "{she} stood outside the {place}. She took a deep"),
    Template("ever_after", "determined", "And so {name} and {name2} lived happily ever"),
    Template("shrugged", "determined", "{he} did not answer. He just shrugged his"),
    Template("believe_eyes", "determined", "{she} stared at the {container}. She could not believe her"),
    Template("nodded", "determined", "\"Are you {mood}?\" asked {name2}. {she} nodded her"),
    Template("dark_stormy", "determined", "It was a dark and stormy"),
    Template("heart_pounding", "determined", "{time}, {she} crept into the {place}, her heart"),
    Template("door_knock", "determined", "{weather} There was a knock at the"),
    Template("long_ago", "determined", "In the village of {village}, a long time"),
    Template("eyes_closed", "determined", "{he} lay down and closed his"),
    Template("first_sight", "determined", "{name} fell in love with {name2} at first"),
    # open endings
    Template("found", "open", "{name} opened the {container} and found"),
    Template("quiet", "open", "The {place} was quiet except for"),
    Template("reached", "open", "When {she} finally reached the {place}, she"),
    Template("reached_he", "open", "When {he} finally reached the {place}, he"),
    Template("decided", "open", "{time}, {name} decided to"),
    Template("letter", "open", "The letter from {name2} began with the words"),
    Template("nobody", "open", "Nobody in {village} had ever"),
    Template("weather_open", "open", "{weather} {name}"),
    Template("mood", "open", "{he} felt {mood} as he walked toward the"),
    Template("said", "open", "\"We should leave the {place} before dark,\" said"),
    Template("remember", "open", "{name} would always remember the day"),
    Template("inside", "open", "Inside the {container} there was a"),
    Template("village_open", "open", "The people of {village} were known for their"),
    Template("time_open", "open", "{time}, the {place}"),
    Template("thought", "open", "{name2} thought about {name} and"),
]
