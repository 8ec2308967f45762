"""Generate documents.jsonl: a deterministic set of short articles for `subinterp map`.

Each line is one JSON object:
  id         integer, 1..N in file order
  title      a few words naming the article's subject
  author     "First Last"
  published  date as "YYYY-MM-DD"
  section    the topic the article is about (one of TOPICS)
  tags       list of short strings
  rating     integer 1..5
  text       paragraphs of English-looking prose, separated by blank lines

The prose is made from a fixed vocabulary with sentence patterns and a seeded random
generator, so it reads like (dull) English and every run writes the same bytes. Each
topic has its own nouns, verbs and adjectives, so word statistics differ by section.

A few records carry bad metadata on purpose (see BAD_RECORDS): an impossible date, a
rating that is a word, tags that are a string. Their text is fine, so a function that
only looks at the text succeeds on every record, while one that checks the metadata
fails on exactly those.

Usage: python3 make_documents.py [OUTPUT [COUNT]]
       (defaults: documents.jsonl next to this script, 2000 records)
"""
import json
import random
import sys
from pathlib import Path

SEED = 20240611
DEFAULT_COUNT = 2000

TOPICS = {
    "gardening": {
        "nouns": "garden soil seed bed rose tomato compost spade hedge orchard "
                 "greenhouse root leaf blossom shed border lawn bulb vine trellis",
        "verbs": "plant prune water dig harvest sow mulch weed graft transplant",
        "adjectives": "green fertile damp sunny shady hardy tender ripe leafy wild",
    },
    "astronomy": {
        "nouns": "star planet telescope comet orbit galaxy nebula moon eclipse "
                 "observatory lens meteor horizon constellation spectrum mirror sky",
        "verbs": "observe measure track photograph align calculate chart detect "
                 "focus record",
        "adjectives": "distant bright faint celestial cosmic clear dark lunar solar "
                      "remote",
    },
    "cooking": {
        "nouns": "kitchen recipe oven bread sauce butter flour onion pepper knife "
                 "pan stock dough spice garlic lemon herb soup pastry",
        "verbs": "bake simmer chop stir season roast whisk knead taste fry",
        "adjectives": "crisp golden savoury tender fresh bitter sweet smoky rich "
                      "warm",
    },
    "sailing": {
        "nouns": "boat sail harbour tide mast anchor crew wind deck rope keel "
                 "compass chart current buoy hull rudder island coast",
        "verbs": "steer anchor navigate hoist tack moor drift reef trim sail",
        "adjectives": "calm rough salty steady northern coastal sheltered swift "
                      "narrow open",
    },
    "railways": {
        "nouns": "train station platform locomotive signal track carriage timetable "
                 "engine bridge tunnel junction ticket guard viaduct freight line",
        "verbs": "depart arrive shunt couple restore inspect schedule lay repair "
                 "electrify",
        "adjectives": "punctual narrow heavy rural historic steam electric crowded "
                      "empty late",
    },
    "beekeeping": {
        "nouns": "hive bee honey queen colony comb frame smoker swarm nectar "
                 "pollen apiary wax brood veil meadow flower season",
        "verbs": "inspect feed split extract requeen overwinter collect smoke "
                 "monitor relocate",
        "adjectives": "gentle busy golden sticky healthy strong weak floral early "
                      "sleepy",
    },
    "software": {
        "nouns": "program compiler library function server database release bug "
                 "test module interface parser cache thread process queue user "
                 "request",
        "verbs": "compile deploy refactor debug profile optimise document review "
                 "merge benchmark",
        "adjectives": "fast reliable concurrent slow modular stable legacy portable "
                      "isolated parallel",
    },
    "mountaineering": {
        "nouns": "summit ridge glacier rope valley camp boot crampon route slope "
                 "cliff storm guide pass snow ice peak tent",
        "verbs": "climb descend rope belay traverse ascend camp acclimatise scout "
                 "retreat",
        "adjectives": "steep icy exposed high rocky thin bitter remote windy loose",
    },
}

COMMON = {
    "determiners": "the the the a a this that every each one our their",
    "nouns": "day year morning evening week people village town friend family "
             "reader time work question answer problem idea way plan",
    "verbs": "find see make take keep show bring leave try need want learn "
             "notice remember",
    "adverbs": "quickly slowly carefully often rarely always never quietly "
               "patiently finally eventually",
    "prepositions": "in on near under beside across through behind after before "
                    "during over",
    "connectives": "and but because while although so when since",
    "openers": "however meanwhile later afterwards nevertheless indeed still "
               "sometimes",
}

FIRST_NAMES = ("Ada Alan Grace Edsger Barbara Donald Frances Niklaus Margaret Ken "
               "Dennis Radia Leslie Tony Hedy Claude José Zoë Søren Amélie").split()
LAST_NAMES = ("Lovelace Turing Hopper Dijkstra Liskov Knuth Allen Wirth Hamilton "
              "Thompson Ritchie Perlman Lamport Hoare Lamarr Shannon Núñez Brontë "
              "Kierkegaard Poulain").split()

IRREGULAR_PAST = {
    "bring": "brought", "chop": "chopped", "debug": "debugged", "dig": "dug",
    "feed": "fed", "find": "found", "keep": "kept", "lay": "laid", "leave": "left",
    "make": "made", "see": "saw", "split": "split", "stir": "stirred",
    "take": "took", "trim": "trimmed",
}

# Record number -> (field, bad value): metadata that a strict reader must reject.
BAD_RECORDS = {
    137: ("published", "2019-02-29"),
    911: ("rating", "five"),
    1604: ("tags", "history"),
}


def words(text):
    """The words of a space-separated vocabulary string."""
    return text.split()


class Writer:
    """Makes the prose of one article on one topic."""

    def __init__(self, rng, topic):
        self.rng = rng
        vocabulary = TOPICS[topic]
        self.topic_nouns = words(vocabulary["nouns"])
        self.topic_verbs = words(vocabulary["verbs"])
        self.adjectives = words(vocabulary["adjectives"])
        # A few nouns this article keeps coming back to.
        self.favourites = rng.sample(self.topic_nouns, 3)

    def pick(self, kind):
        return self.rng.choice(words(COMMON[kind]))

    def noun(self):
        roll = self.rng.random()
        if roll < 0.35:
            return self.rng.choice(self.favourites)
        if roll < 0.8:
            return self.rng.choice(self.topic_nouns)
        return self.pick("nouns")

    def noun_phrase(self):
        parts = [self.pick("determiners")]
        if self.rng.random() < 0.5:
            parts.append(self.rng.choice(self.adjectives))
        noun = self.noun()
        if parts[0] in ("the", "our", "their") and self.rng.random() < 0.3:
            noun = plural(noun)
        parts.append(noun)
        if parts[0] == "a" and parts[1][0] in "aeiou":
            parts[0] = "an"
        return " ".join(parts)

    def verb_phrase(self):
        verb = self.rng.choice(self.topic_verbs if self.rng.random() < 0.7
                               else words(COMMON["verbs"]))
        tense = self.rng.random()
        if tense < 0.5:
            verb = past(verb)
        elif tense < 0.7:
            verb = "will " + verb
        else:
            verb = "had to " + verb
        parts = [verb, self.noun_phrase()]
        if self.rng.random() < 0.4:
            parts.insert(0, self.pick("adverbs"))
        if self.rng.random() < 0.5:
            parts += [self.pick("prepositions"), self.noun_phrase()]
        return " ".join(parts)

    def clause(self):
        return f"{self.noun_phrase()} {self.verb_phrase()}"

    def sentence(self):
        roll = self.rng.random()
        if roll < 0.15:
            body = f"{self.pick('openers')}, {self.clause()}"
        elif roll < 0.45:
            body = f"{self.clause()} {self.pick('connectives')} {self.clause()}"
        elif roll < 0.5:
            body = f"why did {self.noun_phrase()} {self.rng.choice(self.topic_verbs)}"
        else:
            body = self.clause()
        mark = "?" if body.startswith("why") else ("!" if roll > 0.97 else ".")
        return body[0].upper() + body[1:] + mark

    def paragraph(self):
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 5)))

    def text(self):
        return "\n\n".join(self.paragraph() for _ in range(self.rng.randint(1, 4)))


def plural(noun):
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def past(verb):
    if verb in IRREGULAR_PAST:
        return IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def make_record(rng, number):
    """The article with id `number`."""
    topic = rng.choice(sorted(TOPICS))
    writer = Writer(rng, topic)
    subject = writer.favourites[0]
    title = f"{rng.choice(writer.adjectives).capitalize()} {plural(subject)} " \
            f"{rng.choice(COMMON['prepositions'].split())} the {writer.favourites[1]}"
    year, month = rng.randint(2015, 2024), rng.randint(1, 12)
    day = rng.randint(1, 28)
    record = {
        "id": number,
        "title": title,
        "author": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
        "published": f"{year:04d}-{month:02d}-{day:02d}",
        "section": topic,
        "tags": sorted(set([topic, *rng.sample(writer.favourites, 2)])),
        "rating": rng.randint(1, 5),
        "text": writer.text(),
    }
    if number in BAD_RECORDS:
        field, value = BAD_RECORDS[number]
        record[field] = value
    return record


def main():
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(__file__).resolve().parent / "documents.jsonl"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_COUNT
    rng = random.Random(SEED)
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        for number in range(1, count + 1):
            out.write(json.dumps(make_record(rng, number), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
