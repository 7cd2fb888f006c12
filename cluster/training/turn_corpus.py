"""What the synthetic users say, and with which voices: training, validation and test are disjoint.

Training and validation sentences come from a small grammar (seeded); the test sentences are
hand-written and never produced by it, and the test voices are used nowhere else, so the
evaluation measures unseen voices and unseen sentences (FACTS.md, turn-end detection).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Voice names as `cluster.speech.synthesize` takes them: espeak-ng names ("en" is British
# English), `flite:NAME` and `festival:NAME` (`cluster.synthesizers`).
# Training: the four espeak-ng voices of the FACTS.md probe plus variants of the same accents
# (variants change pitch, formants and voice quality), and three flite voices (a diphone and two
# clustergen voices: other prosody models than espeak-ng's). Validation (the threshold and the
# choice of a run): espeak-ng accents and variants used nowhere else, and flite's `slt`.
# Test (benches, offline evaluation): espeak-ng's held-out accents of the probe and festival, a
# synthesiser used nowhere else (its `kal_diphone` shares the recordings of flite's `kal`, its
# HTS voice the speaker of flite's `slt`; the synthesis, and so the prosody, is festival's).
ESPEAK_TRAIN_VOICES = ("en-us", "en", "en-us+f3", "en-us+m3", "en-us+f1", "en+m1", "en-us+m2", "en+f5",
                       "en-us+m6", "en+m7", "en-gb-x-gbcwmd", "en-gb-x-gbcwmd+f3", "en-gb-x-gbcwmd+m2", "en+f1")
FLITE_TRAIN_VOICES = ("flite:kal", "flite:awb", "flite:rms")
TRAIN_VOICES = ESPEAK_TRAIN_VOICES + FLITE_TRAIN_VOICES
VALIDATION_VOICES = ("en-us-nyc", "en-gb-x-gbclan", "en+f2", "en-us+m5", "en-us-nyc+f5", "en-gb-x-gbclan+m3",
                     "flite:slt")
ESPEAK_TEST_VOICES = ("en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f4")
FESTIVAL_TEST_VOICES = ("festival:cmu_us_slt_arctic_hts", "festival:kal_diphone")
TEST_VOICES = ESPEAK_TEST_VOICES + FESTIVAL_TEST_VOICES
RATES_WPM = (140, 200)
PITCH_PERCENT = (-25, 25)  # SSML prosody pitch: FACTS' trap 2 (a held-out voice failed without it)
BREAK_S = (0.45, 0.95)
GROUP_WORDS = (4, 13)  # words between two silences (1-4 s of speech)
_ENDINGS = "....!?"

_SUBJECTS = (
    "my sister", "the old man next door", "our teacher", "my brother in law", "the new manager",
    "a friend of mine", "the bus driver", "my grandmother", "the kids down the street", "our landlord",
    "the woman at the bakery", "my cousin from the coast", "the doctor", "everyone at work",
    "the man who fixed our roof", "my best friend", "the twins", "the guy in the flat upstairs",
    "my uncle", "the students", "the mechanic", "our neighbours", "the waiter", "my dad",
)
_VERBS = (
    "has been talking about", "finally bought", "keeps forgetting", "was complaining about",
    "wants to visit", "spent the whole weekend painting", "could not stop laughing at",
    "is still looking for", "told me about", "accidentally broke", "has never seen",
    "decided to sell", "was really excited about", "keeps asking about", "tried to repair",
    "is thinking of moving to", "forgot to pay for", "wrote a long letter about",
    "borrowed", "lost", "cleaned", "ordered", "recommended", "photographed",
)
_OBJECTS = (
    "the red bicycle", "a tiny flat near the station", "the garden shed", "an expensive camera",
    "the village by the lake", "that strange little restaurant", "the broken washing machine",
    "a second hand piano", "the football match", "our summer holiday", "the parking ticket",
    "a blue wooden boat", "the farmers market", "the neighbour's noisy dog", "a pile of old records",
    "the mountain cabin", "the birthday cake", "a new pair of boots", "the leaking kitchen tap",
    "the museum downtown", "a box of seeds", "the train timetable", "the electricity bill",
    "a painting of the harbour",
)
_ADJUNCTS = (
    "last Tuesday", "for three weeks", "after dinner", "every single morning", "in the rain",
    "without telling anyone", "before the holidays", "on the way home", "twice this month",
    "since the spring", "late at night", "at the end of the street", "during the storm",
    "with great care", "for no reason at all", "all afternoon",
)
_CONNECTORS = ("and", "but", "so", "because", "although", "and then", "which means", "while")
_FILLERS = ("well", "you know", "honestly", "I think", "actually", "so anyway")
_QUESTION_HEADS = ("do you think", "can you tell me if", "would you say", "have you heard whether",
                   "is it true that", "did you know that", "why do you think", "how come", "what would you do if",
                   "when did you hear that", "where do you think", "who told you that", "is it normal that",
                   "should I worry that", "could it be that", "how likely is it that")
QUESTION_SHARE = 0.3  # sentences asked as questions
# Joins inside a turn that end one sentence and start another. 0: a sentence's end with the
# synthesiser's own gap after it sounds exactly like a turn end, and when 30% of the joins were
# such (23% of the validation pauses) the detector learned to wait at every sentence end
# (validation: 20% of turn ends taken within 0.3 s, against 29% clean, p50 0.81 s).
SENTENCE_END_SHARE = 0.0

# Held-out test sentences ("|" marks a mid-turn pause). Hand-written; not from the grammar above.
TEST_TURNS = (
    "When we finally reached the old harbour | the fishing boats were already coming back.",
    "My neighbour has been building a wooden canoe | for almost three years now | and it still leaks.",
    "The recipe says to let the dough rest overnight, | but I never manage to wait that long.",
    "Before the meeting starts tomorrow | I need to print the quarterly figures.",
    "The library downtown is closing for renovation, | so I borrowed a whole stack of novels.",
    "Last winter the pipes in our basement froze | during the coldest week of the year.",
    "I have been learning the piano in the evenings | but my fingers keep tripping over the same bars.",
    "The train from the mountains was delayed | by a fallen tree across the tracks.",
    "What should I cook tonight | if all I have is rice, | two eggs and a lemon?",
    "Could you remind me | what time the pharmacy closes on Sundays?",
    "My daughter wants a telescope for her birthday | and I have no idea which one to buy.",
    "We drove along the coast for hours | looking for a place to stop for lunch.",
    "The printer on the third floor | jams on every second page again.",
    "I tried the new bakery on the corner | and their cinnamon rolls are enormous.",
    "Is there a quick way | to get from the airport to the city centre at night?",
    "Our cat has learned to open the kitchen door | and now nothing in the fridge is safe.",
)
TEST_INTERRUPTIONS = ("Hold on, what about the moon?", "Sorry, wait, which one is cheaper?",
                      "Actually, can we talk about something else?", "Wait, how long does that take?")


@dataclass(frozen=True)
class Utterance:
    """One user turn: word groups separated by mid-turn pauses (seconds), then the turn end."""

    parts: tuple[str, ...]
    breaks_s: tuple[float, ...]  # len(parts) - 1
    voice: str
    rate_wpm: int
    pitch_percent: int

    def ssml(self) -> str:
        body = "".join(f'{p} <break time="{round(b * 1000)}ms"/> ' for p, b in zip(self.parts, self.breaks_s))
        body += self.parts[-1]
        if self.pitch_percent:
            body = f'<prosody pitch="{self.pitch_percent:+d}%">{body}</prosody>'
        return f"<speak>{body}</speak>"


class SentenceGrammar:
    """Seeded random sentences, cut into word groups at random word boundaries."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def clause(self) -> str:
        r = self.rng
        words = f"{r.choice(_SUBJECTS)} {r.choice(_VERBS)} {r.choice(_OBJECTS)}"
        return f"{words} {r.choice(_ADJUNCTS)}" if r.random() < 0.5 else words

    def sentence_words(self) -> list[str]:
        """One sentence, its last word punctuated: a statement, or (QUESTION_SHARE) a question."""
        r = self.rng
        text = self.clause()
        if r.random() < 0.6:
            text += f" {r.choice(_CONNECTORS)} {self.clause()}"
        if r.random() < 0.2:
            text = f"{r.choice(_FILLERS)}, {text}"
        question = r.random() < QUESTION_SHARE
        if question:
            text = f"{r.choice(_QUESTION_HEADS)} {text}"
        words = text.split()
        words[-1] += "?" if question else r.choice(_ENDINGS[:-1])
        return words

    def utterance(self, voices: tuple[str, ...], max_breaks: int = 3) -> tuple[Utterance, Utterance | None]:
        """A turn of 1..max_breaks + 1 word groups with mid-turn pauses between them, and, when
        it pauses, a turn made of exactly the words before one of its pauses (FACTS.md trap 2).

        Sentences inside a turn are joined by a connector or (SENTENCE_END_SHARE) end where the
        next begins: the silence a synthesiser leaves there (0.1-0.45 s) is a mid-turn pause too
        (a sentence end is not always a turn end: the bench's "early starts"). A long break never
        follows a sentence end: 0.5-1 s of silence after a complete sentence is a turn end by
        every cue a listener has, and training it as a pause only teaches the detector to wait.
        Every group, whether a pause or the turn end follows it, has the same length
        distribution and follows a silence, so what precedes a pause and what precedes a turn
        end differ only in prosody: the window cannot tell them apart by a gap (trap 1)."""
        r = self.rng
        lengths = [r.randint(*GROUP_WORDS) for _ in range(r.randint(0, max_breaks) + 1)]
        words: list[str] = []
        asks = False  # the last sentence begun is a question
        while len(words) < sum(lengths):
            sentence = self.sentence_words()
            if words and r.random() < SENTENCE_END_SHARE:
                sentence = _capitalise(sentence)
            elif words:
                words[-1] = words[-1].rstrip(".!?")
                words.append(r.choice(_CONNECTORS))
            asks = sentence[-1].endswith("?")
            words += sentence
        parts, start = [], 0
        for i, n in enumerate(lengths):
            end = start + n
            while i < len(lengths) - 1 and words[end - 1][-1] in ".!?" and end + 1 < sum(lengths):
                end += 1  # no long break right after a sentence end: that silence IS a turn end's
            parts.append(" ".join(words[start:end]))
            start = end
            if start >= sum(lengths):
                break
        parts = [p + ("," if i < len(parts) - 1 and p[-1].isalpha() and r.random() < 0.35 else "")
                 for i, p in enumerate(parts)]
        parts[-1] = parts[-1].rstrip(",")
        if parts[-1][-1].isalpha():  # the turn ends inside its last sentence
            parts[-1] += "?" if asks else r.choice(_ENDINGS[:-1])
        breaks = tuple(round(r.uniform(*BREAK_S), 2) for _ in parts[1:])
        turn = Utterance(tuple(_capitalise(parts)), breaks, *self.delivery(voices))
        matched = None
        if len(parts) > 1:
            words_before_pause = parts[r.randrange(len(parts) - 1)].rstrip(",")
            if words_before_pause[-1].isalpha() or words_before_pause[-1] == "'":
                words_before_pause += r.choice(_ENDINGS)
            matched = Utterance((_capitalise([words_before_pause])[0],), (), *self.delivery(voices))
        return turn, matched

    def delivery(self, voices: tuple[str, ...]) -> tuple[str, int, int]:
        r = self.rng
        return r.choice(voices), r.randint(*RATES_WPM), r.randint(*PITCH_PERCENT)


def test_utterance(index: int, voice: str, rng: random.Random) -> Utterance:
    """A held-out sentence with its marked pauses, spoken by a held-out voice."""
    parts = tuple(p.strip() for p in TEST_TURNS[index % len(TEST_TURNS)].split("|"))
    breaks = tuple(round(rng.uniform(*BREAK_S), 2) for _ in parts[1:])
    return Utterance(parts, breaks, voice, rng.randint(*RATES_WPM), rng.randint(*PITCH_PERCENT))


def _capitalise(parts: list[str]) -> list[str]:
    """The first string's first letter upper-cased (a sentence or a turn starts there)."""
    return [parts[0][:1].upper() + parts[0][1:]] + list(parts[1:]) if parts else parts
