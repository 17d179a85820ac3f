"""A built-in generator of varied English sentences (templates + word lists; no downloads).

Statements, questions and exclamations with names, numbers, prices and times, deterministic from
a seed. Every word is in the CMU dictionary bundled with pocketsphinx (checked by the tests), so
clips rarely need the out-of-vocabulary fallback of :mod:`mmgt.train.corpus.align`. Numbers up to
99 stay digits in the text (every TTS engine reads them the same way); larger ones are spelled
out. :func:`words_for_alignment` turns a text into the word sequence the aligner expects.
"""

from __future__ import annotations

import random
import re

NAMES = "anna david maria james sarah peter laura michael emma thomas linda robert julia daniel"
NAMES += " grace oliver sophie george lucy henry alice jack nina paul"
NOUNS = (
    "book:books car:cars garden:gardens city:cities window:windows letter:letters "
    "project:projects meeting:meetings computer:computers river:rivers mountain:mountains "
    "camera:cameras phone:phones picture:pictures story:stories song:songs bridge:bridges "
    "market:markets kitchen:kitchens train:trains ticket:tickets problem:problems "
    "question:questions idea:ideas answer:answers report:reports island:islands "
    "engine:engines umbrella:umbrellas apple:apples orange:oranges box:boxes chair:chairs "
    "table:tables house:houses dog:dogs cat:cats bottle:bottles bicycle:bicycles map:maps "
    "plan:plans lamp:lamps boat:boats flower:flowers cake:cakes key:keys"
).split()
ADJECTIVES = (
    "big small beautiful old new quiet busy strange bright dark warm cold lovely wonderful simple "
    "difficult important careful happy tired heavy empty famous expensive cheap perfect"
).split()
DEGREES = "very really quite so rather incredibly".split()
PAST = (
    "found bought painted opened visited finished watched built fixed moved cleaned sold "
    "borrowed noticed carried checked"
).split()
BASE = "find buy paint open visit finish watch build fix move clean sell bring check carry".split()
PLACES = (
    "in the park|at the station|near the river|behind the house|on the table|at the office|"
    "under the bridge|in the kitchen|on the way home|next to the window|in the city"
).split("|")
TIMES = (
    "yesterday|today|tomorrow|last week|every morning|on monday|on friday evening|"
    "at night|after lunch|before dinner|next summer"
).split("|")
RELATIVES = "brother sister mother father cousin friend neighbour uncle aunt".split()
JOBS = "a teacher|a doctor|an engineer|a pilot|a painter|a nurse|an artist|a farmer".split("|")
FAR = "in london|by the sea|in a small village|near the mountains|in the north".split("|")
INTERJECTIONS = "oh|well|okay|look|listen|honestly|you know".split("|")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """Cardinal 0 ≤ n < 10⁶ in words: 342 → 'three hundred forty two'."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + number_words(n % 100)
        return f"{_ONES[n // 100]} hundred{rest}"
    rest = "" if n % 1000 == 0 else " " + number_words(n % 1000)
    return f"{number_words(n // 1000)} thousand{rest}"


def words_for_alignment(text: str) -> list[str]:
    """Lower-case words of a text, punctuation dropped and digit runs spelled out."""
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text.lower())
    text = re.sub(r"[^a-z' ]+", " ", text.replace("-", " "))
    return [w.strip("'") for w in text.split() if w.strip("'")]


class SentenceGenerator:
    """Deterministic sentences from ``seed``; :meth:`sentence` gives one, :meth:`text` several."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _pick(self, items: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(items)

    def _num(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return str(self.rng.randint(2, 99))
        return number_words(
            self.rng.choice([self.rng.randint(100, 999), 1000 * self.rng.randint(1, 20)])
        )

    def _slots(self) -> dict[str, str]:
        noun, noun2 = self.rng.sample(NOUNS, 2)
        adj, adj2 = self.rng.sample(ADJECTIVES, 2)
        verb = self.rng.randrange(len(BASE))
        dollars, cents = self.rng.randint(2, 99), self.rng.choice([0, 25, 50, 75, 99])
        price = f"{dollars} dollars" + (f" and {cents} cents" if cents else "")
        hour = self.rng.choice(_ONES[1:13])
        return {
            "name": self._pick(NAMES.split()).capitalize(),
            "noun": noun.split(":")[0],
            "nouns": noun.split(":")[1],
            "noun2": noun2.split(":")[0],
            "adj": adj,
            "adj2": adj2,
            "an_adj": ("an " if adj[0] in "aeiou" else "a ") + adj,
            "deg": self._pick(DEGREES),
            "past": self._pick(PAST),
            "base": BASE[verb],
            "base2": BASE[(verb + 1 + self.rng.randrange(len(BASE) - 1)) % len(BASE)],
            "place": self._pick(PLACES),
            "time": self._pick(TIMES),
            "num": self._num(),
            "rel": self._pick(RELATIVES),
            "job": self._pick(JOBS),
            "far": self._pick(FAR),
            "price": price,
            "clock": f"{hour} o'clock" if self.rng.random() < 0.5 else f"{hour} thirty",
            "intj": self._pick(INTERJECTIONS).capitalize(),
        }

    def sentence(self) -> str:
        """One sentence; about 60 % statements, 25 % questions, 15 % exclamations."""
        r = self.rng.random()
        pool = _STATEMENTS if r < 0.6 else _QUESTIONS if r < 0.85 else _EXCLAMATIONS
        text = self._pick(pool).format(**self._slots())
        if self.rng.random() < 0.12 and pool is not _EXCLAMATIONS:
            text = f"{self._pick(INTERJECTIONS).capitalize()}, {text[0].lower()}{text[1:]}"
        return text[0].upper() + text[1:]

    def text(self, min_sentences: int = 1, max_sentences: int = 3) -> list[str]:
        """A few sentences (a clip is spoken as these, separated by pauses)."""
        return [self.sentence() for _ in range(self.rng.randint(min_sentences, max_sentences))]


_STATEMENTS = [
    "{name} {past} {an_adj} {noun} {place}.",
    "I think the {noun} is {deg} {adj}.",
    "We need {num} {nouns} {time}.",
    "The {noun} was {adj}, but the {noun2} was {adj2}.",
    "My {rel} lives {far} and works as {job}.",
    "It costs {price}.",
    "Please {base} the {noun} {place}.",
    "There are {num} {nouns} {place}.",
    "If it rains {time}, we will stay at home.",
    "First {base} the {noun}, then {base2} the {noun2}.",
    "The meeting starts at {clock}, so do not be late.",
    "{name} said the {nouns} were {deg} {adj} {time}.",
    "I have never seen such {an_adj} {noun} in my life.",
    "We {past} the {noun} {time} and it was {adj}.",
    "The train leaves at {clock} from platform {num}.",
    "Nobody knew why the {noun} was so {adj}.",
]
_QUESTIONS = [
    "Did you {base} the {noun} {time}?",
    "Where is the {adj} {noun}?",
    "How many {nouns} do we have?",
    "Can you {base} the {noun} for me?",
    "Why was {name} so {adj} {time}?",
    "Is it {adj} or {adj2}?",
    "What time does the {noun} open, {name}?",
    "Would you like to {base} the {noun} {time}?",
    "Have you ever been {far}?",
]
_EXCLAMATIONS = [
    "What {an_adj} {noun}!",
    "That is {deg} {adj}!",
    "Oh no, the {noun} is broken!",
    "Wow, {num} {nouns}!",
    "Thank you so much, {name}!",
    "Good morning, {name}!",
    "{intj}, this is {deg} {adj}!",
]
