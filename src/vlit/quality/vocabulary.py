"""The words people use for the 80 COCO object categories (our own list).

``COCO_SYNONYMS`` maps each category to words that name the **whole** category (a mention of
"dogs" refers to all dogs in the image); ``COCO_SUBTYPES`` maps a category to words that name
only **part** of it ("man" is a person, but "two men" says nothing about the women present).
Both kinds count as mentions of the category for hallucination checks; counts and "absent"
claims are only checked against whole-category words. Entries are lemmas (singular, lower
case); multi-word entries are matched as phrases before single words, so "hot dog" is food and
"teddy bear" is a toy, not an animal. Ambiguous words that more often mean something else
("glass", "bat", "orange" as a colour is handled by part of speech) are left out on purpose:
a missed mention costs less than a false hallucination flag.

Example:
    >>> lookup_phrase("motorbike")
    ('motorcycle', 'synonym')
    >>> lookup_phrase("woman")
    ('person', 'subtype')
"""

from __future__ import annotations

from typing import Literal

MentionKind = Literal["synonym", "subtype"]

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "persons", "human", "crowd", "pedestrian"),
    "bicycle": ("bicycle", "bike", "push bike"),
    "car": ("car", "automobile", "sedan", "taxi", "cab", "hatchback"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "moped", "scooter", "dirt bike"),
    "airplane": ("airplane", "aeroplane", "plane", "jet", "aircraft", "airliner", "jetliner"),
    "bus": ("bus", "minibus", "double decker", "school bus"),
    "train": ("train", "locomotive", "tram", "railcar", "subway train"),
    "truck": ("truck", "lorry", "pickup truck", "semi truck", "fire truck"),
    "boat": ("boat", "ship", "sailboat", "canoe", "kayak", "yacht", "ferry", "rowboat"),
    "traffic light": ("traffic light", "traffic signal", "stoplight", "stop light"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "park bench"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "parrot", "sparrow", "goose", "swan"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "canine"),
    "horse": ("horse", "pony", "foal", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ewe"),
    "cow": ("cow", "cattle", "calf", "bull", "ox", "oxen"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly", "polar bear", "brown bear", "black bear"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "rucksack", "knapsack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "shoulder bag"),
    "tie": ("necktie", "bow tie", "tie"),
    "suitcase": ("suitcase", "luggage", "travel bag"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "soccer ball", "tennis ball", "volleyball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat",),
    "baseball glove": ("baseball glove", "baseball mitt", "mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass", "champagne glass"),
    "cup": ("cup", "mug", "coffee cup", "teacup"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon", "teaspoon", "tablespoon"),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "panini"),
    "orange": ("orange", "tangerine", "mandarin"),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "frankfurter"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake"),
    "chair": ("chair", "armchair", "stool"),
    "couch": ("couch", "sofa", "loveseat", "settee"),
    "potted plant": ("potted plant", "houseplant", "house plant", "plant pot", "flower pot"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "kitchen table", "picnic table"),
    "toilet": ("toilet", "lavatory"),
    "tv": ("tv", "television", "television set", "tv set", "monitor"),
    "laptop": ("laptop", "notebook computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote", "remote control", "tv remote"),
    "keyboard": ("keyboard", "computer keyboard"),
    "cell phone": ("cell phone", "cellphone", "mobile phone", "smartphone", "phone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink", "washbasin", "basin"),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "novel", "textbook", "paperback"),
    "clock": ("clock", "wall clock", "clock tower"),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor", "shears"),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush",),
}

COCO_SUBTYPES: dict[str, tuple[str, ...]] = {
    "person": (
        "man", "woman", "child", "kid", "boy", "girl", "baby", "toddler", "teenager", "adult",
        "guy", "lady", "gentleman", "player", "skier", "surfer", "skateboarder", "snowboarder",
        "rider", "cyclist", "biker", "driver", "passenger", "tourist", "spectator", "chef",
        "cook", "officer", "policeman", "soldier", "worker", "student", "teacher", "customer",
        "vendor", "batter", "catcher", "umpire", "referee", "athlete", "mother",
        "father", "daughter", "son", "friend", "couple", "family", "groom", "bride", "men",
        "women", "children",
    ),
}  # fmt: skip

COCO_CATEGORIES: tuple[str, ...] = tuple(COCO_SYNONYMS)

# A few irregular plurals the lemmatizer of a small model may miss.
_IRREGULAR_PLURALS = {
    "people": "people",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "knives": "knife",
    "oxen": "ox",
    "skis": "skis",
    "scissors": "scissors",
    "geese": "goose",
    "teeth": "tooth",
    "buses": "bus",
}


def _build_lookup() -> dict[str, tuple[str, MentionKind]]:
    lookup: dict[str, tuple[str, MentionKind]] = {}
    for category, words in COCO_SUBTYPES.items():
        for word in words:
            lookup[word] = (category, "subtype")
    for category, words in COCO_SYNONYMS.items():
        for word in words:
            lookup[word] = (category, "synonym")
    return lookup


_LOOKUP = _build_lookup()
MAX_PHRASE_WORDS = max(len(phrase.split()) for phrase in _LOOKUP)


def singular(word: str) -> str:
    """A plain English singular for a lower-case noun (used when the lemmatizer kept a plural)."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _LOOKUP:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def lookup_phrase(phrase: str) -> tuple[str, MentionKind] | None:
    """The COCO category a (lemmatised, lower-case) word or phrase names, and how."""
    phrase = " ".join(phrase.lower().split())
    found = _LOOKUP.get(phrase)
    if found is None:
        words = phrase.split()
        if words:
            found = _LOOKUP.get(" ".join([*words[:-1], singular(words[-1])]))
    return found
