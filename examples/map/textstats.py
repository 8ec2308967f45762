"""Text statistics for document records: the example module of `subinterp map`.

Every function takes one record (a JSON value, here a dict as in documents.jsonl) and
returns a JSON-serialisable dict:

  analyze(record)   reading statistics of record["text"]: counts, readability scores,
                    keywords, frequent phrases, a one-sentence summary and a
                    near-duplicate fingerprint. Pure-Python CPU work: about 1.5 ms
                    per record of documents.jsonl in CPython 3.12 and 3.13.
  catalog(record)   a catalogue entry built from the metadata, which it checks strictly:
                    it raises ValueError or TypeError for a record with a bad field.
  identity(record)  the record itself: no work, for measuring per-record overhead.

It imports only re, collections and math from the standard library, all of which
import in isolated subinterpreters (each with its own GIL).
"""
import math
import re
from collections import Counter

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
VOWEL_GROUP = re.compile(r"[aeiouy]+")
DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")

STOPWORDS = frozenset("""
    a about above after again against all also although am an and any are as at be
    because been before being below beside between both but by can could did do does
    doing down during each every few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my near never no
    nor not now of off often on once one only or other our ours out over own rarely
    same she should since so some still such than that the their theirs them then there
    these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your always however indeed
    later meanwhile afterwards nevertheless sometimes finally eventually quickly slowly
    carefully quietly patiently across behind
""".split())

SUFFIXES = ("ing", "ed", "es", "s")
RECORD_FIELDS = (("id", int), ("title", str), ("author", str), ("published", str),
                 ("section", str), ("tags", list), ("rating", int), ("text", str))
TOP_WORDS = 8
TOP_PHRASES = 5
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
            "Sunday")
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
WORDS_PER_MINUTE = 230


def identity(record):
    """Return `record` unchanged."""
    return record


def analyze(record):
    """Reading statistics of the document `record` (a dict with a "text" string).

    Returns a dict with:
      id                    the record's "id" (None if it has none)
      words, unique_words   word tokens and distinct words (case-folded)
      sentences, paragraphs counts
      avg_word_length       letters per word
      avg_sentence_words    words per sentence
      lexical_diversity     distinct words / words
      flesch_reading_ease   206.835 - 1.015 words/sentence - 84.6 syllables/word
      flesch_kincaid_grade  0.39 words/sentence + 11.8 syllables/word - 15.59
      gunning_fog           0.4 (words/sentence + 100 complex words/words), complex
                            meaning three syllables or more
      keywords              up to 8 [word, count] pairs: content words grouped by stem,
                            most frequent first, each shown in its most frequent form
      phrases               up to 5 [phrase, count] pairs: two-word phrases of content
                            words that occur more than once
      summary               the sentence whose content words are the most frequent in
                            the document
      simhash               64-bit SimHash of the document's word triples, as 16 hex
                            digits: near-duplicate documents differ in few bits
    A text without words gives only id, words (0) and sentences (0). A record without
    "text" raises KeyError; a "text" that is not a string raises TypeError.
    """
    text = record["text"]
    if not isinstance(text, str):
        raise TypeError(f"record {record.get('id')}: text must be a string, "
                        f"not {type(text).__name__}")
    sentences = [s.strip() for s in SENTENCE.findall(text) if WORD.search(s)]
    tokens = [[w.lower() for w in WORD.findall(s)] for s in sentences]
    words = [w for sentence in tokens for w in sentence]
    word_count = len(words)
    sentence_count = len(sentences)
    if word_count == 0:
        return {"id": record.get("id"), "words": 0, "sentences": 0}

    syllable_counts = [syllables(w) for w in words]
    syllable_total = sum(syllable_counts)
    complex_words = sum(1 for n in syllable_counts if n >= 3)
    words_per_sentence = word_count / sentence_count
    syllables_per_word = syllable_total / word_count

    stem_counts, surface_forms = keyword_counts(words)
    top_count = max(stem_counts.values(), default=1)
    word_weights = {root: count / top_count for root, count in stem_counts.items()}
    phrases = phrase_counts(tokens)

    return {
        "id": record.get("id"),
        "words": word_count,
        "unique_words": len(set(words)),
        "sentences": sentence_count,
        "paragraphs": len([p for p in PARAGRAPH_BREAK.split(text) if p.strip()]),
        "avg_word_length": round(sum(map(len, words)) / word_count, 2),
        "avg_sentence_words": round(words_per_sentence, 2),
        "lexical_diversity": round(len(set(words)) / word_count, 3),
        "flesch_reading_ease": round(
            206.835 - 1.015 * words_per_sentence - 84.6 * syllables_per_word, 1),
        "flesch_kincaid_grade": round(
            0.39 * words_per_sentence + 11.8 * syllables_per_word - 15.59, 1),
        "gunning_fog": round(
            0.4 * (words_per_sentence + 100 * complex_words / word_count), 1),
        "keywords": [[surface_forms[root].most_common(1)[0][0], count]
                     for root, count in stem_counts.most_common(TOP_WORDS)],
        "phrases": [[phrase, count] for phrase, count in phrases.most_common(TOP_PHRASES)
                    if count > 1],
        "summary": summary_sentence(sentences, tokens, word_weights),
        "simhash": simhash(Counter(zip(words, words[1:], words[2:]))),
    }


def syllables(word):
    """Estimated syllables of a lower-case English word: vowel groups, less a silent
    final "e" and a silent "e" in "-ed" (as in "parked", not "planted")."""
    count = len(VOWEL_GROUP.findall(word))
    if count > 1:
        if word.endswith("e") and not word.endswith(("le", "ee", "ye")):
            count -= 1
        elif word.endswith("ed") and word[-3] not in "td":
            count -= 1
    return max(count, 1)


def stem(word):
    """A light suffix-stripping stem: "bake", "bakes", "baked" and "baking" all give
    "bak"; enough to group the forms of a word, not a linguistic root."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix != "s" or not word.endswith(("ss", "us", "is")):
                word = word[:-len(suffix)]
            break
    if word.endswith("i"):
        word = word[:-1] + "y"  # "tried", "tries" -> "tri" -> "try"
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]  # "stopped" -> "stopp" -> "stop"
    return word


def keyword_counts(words):
    """Counts of the content words' stems, and for each stem the counts of its forms."""
    stem_counts = Counter()
    surface_forms = {}
    for word in words:
        if word in STOPWORDS or len(word) < 3:
            continue
        root = stem(word)
        stem_counts[root] += 1
        surface_forms.setdefault(root, Counter())[word] += 1
    return stem_counts, surface_forms


def phrase_counts(tokens):
    """Counts of two-word phrases made of adjacent content words within a sentence."""
    phrases = Counter()
    for sentence in tokens:
        for first, second in zip(sentence, sentence[1:]):
            if first not in STOPWORDS and second not in STOPWORDS:
                phrases[f"{first} {second}"] += 1
    return phrases


def summary_sentence(sentences, tokens, word_weights):
    """The sentence with the highest mean weight of its content words; ties go to the
    earlier sentence. Long sentences get a mild bonus (log of their length)."""
    best, best_score = sentences[0], -math.inf
    for sentence, words in zip(sentences, tokens):
        weights = [word_weights[stem(w)] for w in words
                   if w not in STOPWORDS and len(w) >= 3]
        if not weights:
            continue
        score = sum(weights) / len(weights) * math.log(1 + len(words))
        if score > best_score:
            best, best_score = sentence, score
    return best


def simhash(features):
    """64-bit SimHash of a bag of features (a Counter of tuples of words), as 16 hex
    digits: bit i is set when the features whose hash has bit i set outweigh the
    others, so documents sharing most features get fingerprints differing in few bits."""
    totals = [0] * 64
    for feature, weight in features.items():
        value = fnv1a_64(" ".join(feature))
        for bit in range(64):
            if value >> bit & 1:
                totals[bit] += weight
            else:
                totals[bit] -= weight
    fingerprint = sum(1 << bit for bit, total in enumerate(totals) if total > 0)
    return f"{fingerprint:016x}"


def fnv1a_64(text):
    """The 64-bit FNV-1a hash of `text` in UTF-8: the same in every process, unlike
    hash(), which is salted per process."""
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = (value ^ byte) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    return value


def catalog(record):
    """A catalogue entry for the document `record`, checking its metadata strictly.

    Returns {"id", "title", "author", "sort_author" ("Last, First"), "published"
    (the date as given), "weekday", "year", "section", "tags", "rating",
    "reading_minutes"}. Raises TypeError for a field of the wrong type and ValueError
    for an impossible value (a date that does not exist, a rating outside 1..5),
    naming the record and the field.
    """
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a JSON object, not {type(record).__name__}")
    name = f"record {record.get('id')}"
    for field, kind in RECORD_FIELDS:
        if field not in record:
            raise ValueError(f"{name}: field {field!r} is missing")
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"{name}: field {field!r} must be {kind.__name__}, "
                            f"not {type(value).__name__} {value!r}")
    if not all(isinstance(tag, str) for tag in record["tags"]):
        raise TypeError(f"{name}: field 'tags' must hold only strings")
    if not 1 <= record["rating"] <= 5:
        raise ValueError(f"{name}: field 'rating' must be 1 to 5, not {record['rating']}")
    match = DATE.fullmatch(record["published"])
    if not match:
        raise ValueError(f"{name}: field 'published' must be YYYY-MM-DD, "
                         f"not {record['published']!r}")
    year, month, day = map(int, match.groups())
    if not (1 <= month <= 12 and 1 <= day <= days_in_month(year, month)):
        raise ValueError(f"{name}: field 'published' is not a date: "
                         f"{record['published']!r}")

    first, _, last = record["author"].rpartition(" ")
    return {
        "id": record["id"],
        "title": record["title"],
        "author": record["author"],
        "sort_author": f"{last}, {first}" if first else last,
        "published": record["published"],
        "weekday": WEEKDAYS[weekday(year, month, day)],
        "year": year,
        "section": record["section"],
        "tags": record["tags"],
        "rating": record["rating"],
        "reading_minutes": math.ceil(len(WORD.findall(record["text"]))
                                     / WORDS_PER_MINUTE),
    }


def days_in_month(year, month):
    """Days in `month` (1-12) of the Gregorian `year`."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 29 if month == 2 and leap else DAYS_IN_MONTH[month - 1]


def weekday(year, month, day):
    """Day of the week of a Gregorian date, 0 for Monday (Zeller's congruence)."""
    if month < 3:
        month += 12
        year -= 1
    h = (day + 13 * (month + 1) // 5 + year + year // 4 - year // 100 + year // 400) % 7
    return (h + 5) % 7
