"""Prompt text -> plan dictionary: a small, deterministic grammar of English image prompts.

The parser reads a prompt left to right and recognises, in this order of priority at each word:
clause ends, style phrases ("oil painting", "cinematic lighting", "35mm"), a leading "a photo of" or
"an image showing", negation ("no people", "without text"), joiners ("together with"), framing
("in the picture"), absolute positions ("on the left"), spatial relations ("to the left of",
"on top of", "beneath"), scene phrases ("on a beach", "at night"), phrases that qualify the
previous object ("with a red collar", "in a red dress"), and finally noun phrases
("two small red cubes"), which become subjects with their own count, colour and attributes, so
that adjectives never bleed from one object to the next.

Whatever it does not understand is kept verbatim in `unparsed`; nothing is dropped. The output is
a plain dictionary in the plan's JSON form (see `uni1_core/plan.py`), plus the source text of each
relation so that the planner can hand a relation that the layout cannot satisfy back to `unparsed`.
It also holds the English helpers the plan renders with (plural forms, number words, articles).
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------
# Words
# ---------------------------------------------------------------------------------------------

BASIC_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                "white", "gray")
COLOR_ALIASES = {"grey": "gray"}

RELATIONS = ("left of", "right of", "above", "below", "on", "under", "in front of", "behind",
             "next to", "inside", "between")

# How a relation is said in the conditioning text.
RELATION_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above",
                 "below": "below", "on": "on", "under": "under", "in front of": "in front of",
                 "behind": "behind", "next to": "next to", "inside": "inside", "between": "between"}

# Canonical absolute positions: phrase -> (column 0/1/2 or None, row 0/1/2 or None).
POSITIONS = {
    "on the left": (0, None), "on the right": (2, None), "at the top": (None, 0),
    "at the bottom": (None, 2), "in the center": (1, 1),
    "in the top left corner": (0, 0), "in the top right corner": (2, 0),
    "in the bottom left corner": (0, 2), "in the bottom right corner": (2, 2),
    "in the background": (None, 0), "in the foreground": (None, 2),
}

SIZE_WORDS = {"tiny", "small", "little", "medium", "big", "large", "huge", "giant", "enormous",
              "massive", "tall", "short", "long", "wide", "narrow", "thin", "thick", "fat",
              "miniature", "mini", "oversized", "gigantic", "small-sized", "large-sized"}
# Single-word attributes that English puts before a colour ("a big old red car"); any other
# single word goes between the colour and the noun ("a red wooden box", "a blue coffee mug").
PRE_COLOR_WORDS = SIZE_WORDS | {
    "light", "dark", "bright", "pale", "deep", "vivid", "pastel", "neon", "old", "new", "young",
    "ancient", "modern", "vintage", "beautiful", "cute", "ugly", "pretty", "lovely", "happy", "sad",
    "angry", "shiny", "glossy", "matte", "fluffy", "furry", "round", "square", "rectangular",
    "triangular", "striped", "spotted", "dotted", "checkered", "glowing", "broken", "empty", "full", "wet", "dry", "hot", "cold", "clean", "dirty",
    "single", "lonely", "majestic", "elegant", "simple", "tiny-looking", "fat", "skinny", "soft",
    "hard", "smooth", "rough", "transparent", "translucent", "colorful", "colourful", "golden",
    "silver", "rusty", "fresh", "ripe", "shallow",
}
ADJECTIVES = PRE_COLOR_WORDS | {
    "wooden", "metal", "metallic", "glass", "plastic", "stone", "ceramic", "paper", "leather",
    "woolen", "velvet", "marble", "steel", "iron", "crystal", "furry", "beautiful", "detailed",
    "highly", "very", "realistic", "tasty", "delicious", "cozy", "cosy", "quiet", "busy", "huge",
}
OTHER_COLOR_WORDS = {"gold", "beige", "teal", "turquoise", "navy", "crimson", "maroon", "cyan",
                     "magenta", "violet", "indigo", "lavender", "tan", "cream", "ivory", "olive",
                     "lime", "scarlet", "amber", "bronze", "copper", "khaki", "charcoal",
                     "multicolored", "multicoloured", "rainbow"}

NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
                "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
                "eighteen": 18, "nineteen": 19}
TENS_WORDS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
              "eighty": 80, "ninety": 90}
# Quantity phrases -> count. Vague plurals get a small definite number, which the user can edit.
QUANTITY_PHRASES = {
    ("a", "pair", "of"): 2, ("pair", "of"): 2, ("a", "couple", "of"): 2, ("couple", "of"): 2,
    ("both",): 2, ("twin",): 2, ("a", "trio", "of"): 3, ("a", "dozen"): 12, ("dozen",): 12,
    ("half", "a", "dozen"): 6, ("a", "single"): 1, ("single",): 1, ("a", "lone"): 1,
    ("some",): 3, ("several",): 3, ("a", "few"): 3, ("few",): 3, ("multiple",): 3,
    ("various",): 3, ("a", "group", "of"): 3, ("a", "bunch", "of"): 3, ("a", "set", "of"): 3,
    ("a", "row", "of"): 3, ("a", "herd", "of"): 4, ("a", "flock", "of"): 4,
    ("a", "pack", "of"): 4, ("many",): 5, ("numerous",): 5, ("lots", "of"): 5,
    ("a", "lot", "of"): 5, ("plenty", "of"): 5, ("a", "crowd", "of"): 5,
}
MAX_COUNT = 50
_QUANTITY_INDEX: dict[str, list] = {}
for _p, _v in sorted(QUANTITY_PHRASES.items(), key=lambda pv: -len(pv[0])):
    _QUANTITY_INDEX.setdefault(_p[0], []).append((_p, _v))
DEFAULT_PLURAL_COUNT = 2

DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "his", "her", "its", "their",
               "my", "your", "our", "another", "each", "every"}

# Compound nouns (GenEval uses the COCO class names) stay one noun: "a traffic light".
COMPOUND_NOUNS = {
    ("traffic", "light"), ("fire", "hydrant"), ("stop", "sign"), ("parking", "meter"),
    ("baseball", "bat"), ("baseball", "glove"), ("tennis", "racket"), ("wine", "glass"),
    ("hot", "dog"), ("potted", "plant"), ("dining", "table"), ("cell", "phone"),
    ("teddy", "bear"), ("hair", "drier"), ("hair", "dryer"), ("sports", "ball"),
    ("computer", "mouse"), ("computer", "keyboard"), ("tv", "remote"), ("ice", "cream"),
    ("palm", "tree"), ("christmas", "tree"), ("coffee", "mug"), ("coffee", "cup"),
    ("tea", "cup"), ("soccer", "ball"), ("basketball", "hoop"), ("police", "car"),
    ("fire", "truck"), ("school", "bus"), ("living", "room"), ("space", "ship"),
    ("polar", "bear"), ("golden", "retriever"), ("street", "lamp"), ("water", "bottle"),
}

KNOWN_NOUNS = set("""
person man woman child boy girl baby people adult kid lady gentleman king queen prince princess
knight wizard witch soldier astronaut robot doctor chef farmer student teacher dancer pirate
bicycle car motorcycle airplane plane bus train truck boat ship bike scooter tractor van taxi
helicopter rocket submarine skateboard surfboard skis snowboard kite frisbee
bird cat dog horse sheep cow elephant bear zebra giraffe lion tiger wolf fox deer rabbit bunny
mouse rat squirrel monkey panda koala kangaroo penguin owl eagle parrot duck goose chicken
swan fish shark whale dolphin octopus turtle frog snake lizard dragon unicorn dinosaur butterfly
bee spider ant ladybug crab lobster camel goat pig puppy kitten cub hamster hedgehog raccoon
backpack umbrella handbag tie suitcase bottle cup fork knife spoon bowl banana apple sandwich
orange broccoli carrot pizza donut doughnut cake chair couch sofa bed table toilet tv laptop
remote keyboard phone microwave oven toaster sink refrigerator fridge book clock vase scissors
toothbrush bench lamp candle mirror window door painting picture frame plant flower rose tulip
sunflower tree bush cactus mushroom leaf rock stone house building castle tower bridge lighthouse
church temple barn tent hut cabin fountain statue sign fence gate wall stairs ladder
circle square triangle star rectangle hexagon pentagon octagon heart diamond oval ellipse cross
crescent ring sphere cube cone cylinder pyramid ball arrow line dot shape block box
hat cap shirt dress jacket coat shoe boot glove scarf sock glasses sunglasses crown helmet mask
guitar piano violin drum trumpet camera computer monitor television radio headphones
key lock coin gem jewel necklace bracelet watch balloon gift present toy doll teddy kite
pencil pen brush paper letter envelope map flag bell basket bag jar pot pan plate glass mug
teapot kettle bucket barrel bucket chest crate cage nest egg bread cheese cookie burger
hamburger fries taxi strawberry cherry grape lemon lime pear peach watermelon pineapple tomato
potato onion pepper corn pumpkin cupcake pie candy chocolate coffee tea wine beer juice milk
cloud sun planet rainbow blossom petal feather flame fire smoke bubble lantern kite
armchair fireplace rug carpet curtain pillow cushion blanket shelf bookshelf desk stool cabinet
wardrobe dresser drawer bathtub shower towel sofa bench swing slide hammock car volcano island mountain hill river lake waterfall wave
car wheel engine sword shield bow axe hammer wand staff throne light
eye hair face hand arm leg head nose mouth ear beard tail paw fur neck shoulder finger
building painting ring king wing string swing ceiling earring pudding dumpling duckling sapling
railing clothing stocking lightning wedding icing shed sled seed reed weed steed bed
""".split())

# Nouns of places and surfaces: after "on", "in", "at", ... they make the scene, not a subject.
SCENE_NOUNS = set("""
background backdrop beach forest field meadow desert city street road park kitchen room bedroom
bathroom office garden mountains ocean sea lake river sky space night day sunset sunrise dawn
dusk evening morning snow rain fog mist jungle cave studio classroom library restaurant cafe
market village countryside farm stadium underwater water ground floor grass sand lawn wall
landscape valley shore coast hillside rooftop roof town alley highway bridge playground
universe galaxy clouds stars sunlight moonlight darkness winter summer autumn fall spring
storm thunderstorm blizzard savanna savannah prairie plains moon mars corner
seabed reef orbit sandstorm interior exterior yard backyard courtyard hallway corridor station airport harbor harbour
surface table-top tabletop canvas paper void outdoors indoors nature wilderness swamp tundra
""".split())

# Things one is "in" as a container rather than a place: "a cat in a box" is `inside`.
CONTAINER_NOUNS = {"box", "bowl", "cup", "basket", "jar", "vase", "bag", "glass", "bottle",
                   "cage", "bucket", "pot", "mug", "tank", "aquarium", "nest", "drawer",
                   "bathtub", "tub", "sink", "pan", "crate", "chest", "barrel", "car", "boat",
                   "truck", "bus", "tent", "backpack", "suitcase", "envelope", "teapot", "kettle",
                   "wine glass", "coffee mug", "coffee cup", "tea cup", "hand", "carton", "pocket",
                   "container", "jug", "pitcher", "fishbowl", "terrarium", "bubble", "snow globe",
                   "cup", "oven", "microwave", "refrigerator", "fridge", "pool", "window", "frame"}

IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "ox": "oxen", "sheep": "sheep",
    "fish": "fish", "deer": "deer", "moose": "moose", "series": "series", "species": "species",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "shelf": "shelves", "loaf": "loaves",
    "half": "halves", "calf": "calves", "elf": "elves", "thief": "thieves", "life": "lives",
    "wife": "wives", "scarf": "scarves", "tomato": "tomatoes", "potato": "potatoes",
    "hero": "heroes", "volcano": "volcanoes", "cactus": "cacti", "fungus": "fungi",
    "octopus": "octopuses", "die": "dice", "bus": "buses", "gentleman": "gentlemen",
    "fireman": "firemen", "snowman": "snowmen", "policeman": "policemen", "businessman": "businessmen",
    "scissors": "scissors", "skis": "skis", "sunglasses": "sunglasses",
    "headphones": "headphones", "fries": "fries", "stairs": "stairs", "pants": "pants",
    "jeans": "jeans", "clothes": "clothes",
}
SINGULAR_OF_IRREGULAR = {p: s for s, p in IRREGULAR_PLURALS.items()}
# Words ending in "s" that are singular.
SINGULAR_S_WORDS = {"glass", "grass", "bus", "dress", "class", "lens", "cactus", "octopus",
                    "platypus", "walrus", "iris", "octopus", "chess", "boss", "moss", "cross",
                    "canvas", "compass", "gas", "bias", "atlas", "circus", "hippopotamus", "virus",
                    "news", "mattress", "princess", "goddess", "actress", "fortress", "harness",
                    "peas", "his", "its", "this", "is", "was", "has", "as", "us", "yes", "always",
                    "perhaps", "towards", "chaos", "oasis", "tennis", "bass", "kiss", "mess",
                    "business", "wilderness", "darkness", "glass-like", "lotus", "hibiscus",
                    "asparagus", "citrus", "bonus", "status", "campus", "bus"}
# Article exceptions for "a"/"an" (the sound, not the letter, decides).
AN_EXCEPTIONS = {"hour", "honest", "honor", "honour", "heir", "8", "11", "18", "80"}
A_EXCEPTIONS_PREFIX = ("uni", "use", "usu", "one", "once", "euro", "ukulele", "ufo", "utensil")


def singular(word: str) -> str:
    """The singular of an English noun ("circles" -> "circle", "people" -> "person")."""
    w = word.lower()
    if w in SINGULAR_OF_IRREGULAR:
        return SINGULAR_OF_IRREGULAR[w]
    if w in IRREGULAR_PLURALS or w in SINGULAR_S_WORDS or len(w) <= 2 or not w.endswith("s"):
        return w
    if w.endswith("ss") or w.endswith("us"):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("ves"):
        for s, p in IRREGULAR_PLURALS.items():
            if p == w:
                return s
        return w[:-1]
    if w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if w.endswith("oes") and w[:-2] in KNOWN_NOUNS:
        return w[:-2]
    return w[:-1]


def plural(noun: str) -> str:
    """The plural of a singular noun; in compounds the last word changes ("traffic lights")."""
    head, _, last = noun.rpartition(" ")
    w = last
    if w in IRREGULAR_PLURALS:
        p = IRREGULAR_PLURALS[w]
    elif w.endswith("y") and len(w) > 1 and w[-2] not in "aeiou":
        p = w[:-1] + "ies"
    elif w.endswith(("s", "x", "z", "ch", "sh")):
        p = w + "es"
    else:
        p = w + "s"
    return f"{head} {p}" if head else p


def number_word(n: int) -> str:
    """1..99 as English words ("twenty-one"); larger numbers as digits."""
    for word, value in NUMBER_WORDS.items():
        if value == n:
            return word
    if 20 <= n < 100:
        tens = {v: k for k, v in TENS_WORDS.items()}[n - n % 10]
        return tens if n % 10 == 0 else f"{tens}-{number_word(n % 10)}"
    return str(n)


def article(next_word: str) -> str:
    """"a" or "an" before `next_word`."""
    w = next_word.lower()
    if w in AN_EXCEPTIONS or any(w.startswith(e) for e in ("hour", "honest", "honor", "heir")):
        return "an"
    if w.startswith(A_EXCEPTIONS_PREFIX):
        return "a"
    return "an" if w[:1] in "aeio" or (w[:1] == "u" and len(w) > 1) else "a"


# ---------------------------------------------------------------------------------------------
# Phrase tables for the scanner (lower-case word tuples)
# ---------------------------------------------------------------------------------------------

def _phrases(*texts: str) -> list[tuple[str, ...]]:
    return [tuple(t.split()) for t in texts]


STYLE_PHRASES: dict[str, list[tuple[str, ...]]] = {
    # Phrases that are style wherever they appear.
    "medium": _phrases(
        "oil painting", "watercolor painting", "watercolour painting", "watercolor", "watercolour",
        "acrylic painting", "digital painting", "digital art", "digital illustration",
        "concept art", "pencil sketch", "pencil drawing", "charcoal drawing", "ink drawing",
        "line art", "pixel art", "vector art", "3d render", "3d rendering", "cgi", "low poly",
        "photorealistic", "hyperrealistic", "hyper-realistic", "photo-realistic", "anime",
        "manga", "cartoon", "claymation", "comic book style", "flat illustration",
        "flat design", "polaroid photo", "polaroid", "film photo", "film photography",
        "analog photo", "black and white photo", "black-and-white photo", "stock photo",
        "studio photo", "product photo", "macro photo", "macro photography", "photography",
        "impressionist painting", "impressionism", "surrealism", "surrealist", "art nouveau",
        "ukiyo-e", "isometric illustration", "paper cut", "origami", "stained glass",
        "mosaic", "embroidery", "sculpture", "cyberpunk", "steampunk", "vaporwave", "synthwave",
        "art deco", "baroque", "renaissance painting", "pop art", "graffiti", "chalk drawing",
        "crayon drawing", "woodcut", "linocut", "gouache", "pastel drawing", "still life"),
    "lighting": _phrases(
        "cinematic lighting", "studio lighting", "soft lighting", "dramatic lighting",
        "natural light", "natural lighting", "golden hour", "blue hour", "backlit", "backlighting",
        "rim light", "rim lighting", "neon lighting", "neon lights", "volumetric lighting",
        "volumetric light", "low light", "soft light", "hard light", "harsh light",
        "warm light", "warm lighting", "cold light", "cool lighting", "god rays", "sunlight",
        "moonlight", "candlelight", "dim light", "dim lighting", "bright lighting",
        "ambient light", "ambient lighting", "diffused light", "high key", "low key",
        "chiaroscuro", "silhouette lighting", "overcast light"),
    "camera": _phrases(
        "macro", "macro shot", "wide angle", "wide-angle", "wide angle lens", "wide-angle lens",
        "telephoto", "telephoto lens", "fisheye", "fisheye lens", "fish-eye lens", "bokeh",
        "shallow depth of field", "deep depth of field", "depth of field", "dslr", "tilt-shift",
        "long exposure", "motion blur", "low angle", "low-angle", "high angle", "high-angle",
        "eye level", "eye-level", "low angle shot", "high angle shot", "dutch angle",
        "shot on film", "film grain", "sharp focus", "soft focus", "hdr"),
    "composition": _phrases(
        "close-up", "close up", "closeup", "extreme close-up", "close-up shot", "wide shot",
        "long shot", "medium shot", "full body shot", "full-body shot", "full body",
        "full-length", "portrait shot", "headshot", "centered", "centred", "centered composition",
        "symmetrical", "symmetric", "symmetrical composition", "rule of thirds", "minimalist",
        "minimalistic", "minimal", "top-down view", "top down view", "top-down", "overhead view",
        "overhead shot", "aerial view", "aerial shot", "aerial photo", "bird's eye view",
        "bird's-eye view", "birds eye view", "side view", "front view", "rear view",
        "three-quarter view", "isometric view", "isometric", "panoramic", "panorama",
        "landscape orientation", "portrait orientation", "negative space", "flat lay"),
    "mood": _phrases(
        "moody", "dreamy", "peaceful", "serene", "calm atmosphere", "cheerful", "gloomy", "eerie",
        "mysterious", "whimsical", "romantic", "melancholic", "melancholy", "ominous", "cozy",
        "cosy", "nostalgic", "ethereal", "dystopian", "utopian", "spooky", "creepy", "epic",
        "tranquil", "playful", "joyful", "somber", "sombre", "surreal", "magical", "fantasy",
        "cinematic", "dramatic", "atmospheric", "vibrant", "gritty", "minimalist mood"),
}
# "a photo of ...", "an oil painting of ...": the medium or framing that introduces the subject.
INTRO_PHRASES = {
    "medium": _phrases("photo", "photograph", "painting", "drawing", "illustration", "sketch",
                       "render", "rendering", "cartoon", "watercolor", "watercolour",
                       "oil painting", "watercolor painting", "digital painting", "pencil sketch",
                       "pencil drawing", "3d render", "digital illustration", "poster",
                       "black and white photo", "polaroid", "snapshot", "selfie"),
    "composition": _phrases("close-up", "close up", "closeup", "portrait", "close-up photo",
                            "close-up shot", "wide shot", "aerial view", "aerial photo",
                            "top-down view", "overhead view", "side view", "front view"),
    "": _phrases("image", "picture", "scene", "view", "depiction", "rendition"),
}
# Words whose meaning goes into the grammar rather than into a stored string; the property
# "every word of the prompt is somewhere in the plan" holds for all the other words.
FUNCTION_WORDS = (set(DETERMINERS) | set(NUMBER_WORDS) | set(TENS_WORDS)
                  | {w for p in QUANTITY_PHRASES for w in p}
                  | {"and", "or", "nor", "of", "to", "the", "is", "are", "be", "was", "were",
                     "there", "here", "which", "that", "who", "while", "also", "plus", "with",
                     "without", "no", "not", "none", "in", "on", "at", "side", "hand", "left",
                     "right", "top", "bottom", "upper", "lower", "center", "centre", "middle",
                     "corner", "part", "half", "above", "below", "beneath", "underneath", "under",
                     "over", "atop", "upon", "onto", "front", "back", "behind", "next", "beside",
                     "near", "close", "adjacent", "alongside", "inside", "within", "into",
                     "between", "placed", "positioned", "located", "situated", "set", "sits",
                     "sit", "stands", "stand", "each", "other", "one", "another", "image",
                     "picture", "scene", "view", "depiction", "rendition", "higher", "lower",
                     "than", "both", "left-hand", "right-hand", "style", "from", "an", "a",
                     "free", "has", "have", "featuring", "showing", "shows", "depicting",
                     "containing", "with", "it", "they", "them", "its", "sits", "rests",
                     "resting", "located", "put", "lies", "lie", "stand", "way", "row"})

COPULAS = {"is", "are", "was", "were", "be", "being", "placed", "positioned", "located",
           "situated", "set", "sits", "sit", "stands", "stand", "rests", "lies", "put", "which",
           "that", "who", "there", "here", "also", "it", "they", "both", "has", "have",
           "featuring", "showing", "shows", "depicting", "containing"}
LIST_WORDS = {"and", "or", "&", "plus", "while", ","}
CLAUSE_END = {".", ";", "!", "?", "\n", "|"}
# Post-nominal phrase leaders: "a dog with a red collar", "a woman in a red dress".
QUALIFIER_WORDS = {"with", "wearing", "holding", "carrying", "of", "made", "in", "at", "for",
                   "from", "covered", "filled", "full", "eating", "drinking", "reading",
                   "playing", "riding", "looking", "surrounded", "dressed"}
PREPOSITIONS = {"of", "with", "in", "on", "at", "to", "from", "by", "near", "under", "over",
                "above", "below", "beneath", "behind", "beside", "between", "inside", "into",
                "onto", "next", "left", "right", "for", "without", "against", "around", "along",
                "across", "through", "among", "atop", "underneath", "upon", "within", "during",
                "alongside", "toward", "towards", "like", "as", "than", "outside", "away", "out",
                "off", "up", "down", "amid", "beyond", "past", "while", "where", "whose"}
# Verbs that end a noun phrase ("green eyes *gaze* outside"); participles are found by suffix.
VERBS = set("""
sits sit stands stand lies lie hangs hang floats float flies fly swims swim runs run walks walk
holds hold wears wear looks look gazes gaze stares stare watches watch glows glow shines shine
reflects reflect casts cast fills fill covers cover surrounds surround leans lean rests rest
plays play eats eat drinks drink reads read rides ride jumps jump dances dance sleeps sleep
smiles smile waits wait grows grow rises rise falls fall sings sing carries carry hides hide
peeks peek perches perch looms loom towers tower sparkles sparkle shimmers shimmer appears appear
seems seem has have is are was were
""".split())
NEGATION_PHRASES = _phrases("with no", "without any", "without", "free of", "no", "not",
                            "devoid of", "excluding", "except")

# Multi-word joiners that mean "and" between two subjects: "a cat together with a dog".
LIST_PHRASES = _phrases("together with", "along with", "as well as")
# What follows "an image" / "a photo" at the start of a prompt when the picture itself is framing,
# not a subject: "an image showing a triangle", "a picture containing two cats".
INTRO_LEADERS = _phrases("of", "showing", "with", "containing", "featuring", "depicting", "displaying",
                         "that shows", "which shows", "that has", "which has", "that contains",
                         "which contains", "where there is", "where there are")
# Saying a subject is alone is not a relation to a noun ("on its own" is not "on an own"); these
# stay as written.
SOLITARY_PHRASES = _phrases("on its own", "on their own", "on his own", "on her own", "all on its own",
                            "by itself", "by themselves", "by himself", "by herself", "all alone",
                            "alone", "all by itself")
# Politeness and chat filler: never a noun, never an attribute; kept as written.
FILLER_WORDS = {"please", "pls", "plz", "thanks", "thx", "kindly"}
# Kinds of things that "X with Y" joins as two subjects when both are of one kind: "a purple
# triangle with a green square" is two shapes, while "a man with a hat" or "a house with a blue
# door" keeps "with ..." as a qualifier of the first.
SUBJECT_KINDS = [set(ws.split()) for ws in (
    "circle square triangle star rectangle hexagon pentagon octagon heart diamond oval ellipse "
    "crescent sphere cube cone cylinder pyramid arrow shape",
    "bird cat dog horse cow elephant bear zebra giraffe lion tiger wolf fox deer rabbit bunny mouse "
    "rat squirrel monkey panda koala kangaroo penguin owl eagle parrot duck goose chicken swan shark "
    "whale dolphin turtle frog snake lizard dragon unicorn dinosaur camel goat pig puppy kitten "
    "hamster hedgehog raccoon sheep",
    "bicycle car motorcycle airplane plane bus train truck boat ship bike scooter tractor van taxi "
    "helicopter rocket submarine",
)]


def same_kind(a: str, b: str) -> bool:
    """Both nouns (heads of compounds) are of one kind in SUBJECT_KINDS."""
    a, b = a.split()[-1], b.split()[-1]
    return any(a in kind and b in kind for kind in SUBJECT_KINDS)


def _relation_phrases() -> list[tuple[tuple[str, ...], str]]:
    table: list[tuple[tuple[str, ...], str]] = []
    for side in ("left", "right"):
        rel = f"{side} of"
        for lead in ("to the", "on the", "at the", "in the", "on the far", "to the far", ""):
            for mid in (side, f"{side} side", f"{side}-hand side", f"{side} hand side"):
                table.append((tuple(f"{lead} {mid} of".split()), rel))
    table += [(p, r) for p, r in [
        (("on", "top", "of"), "on"), (("atop",), "on"), (("on",), "on"), (("onto",), "on"),
        (("upon",), "on"),
        (("above",), "above"), (("over",), "above"), (("higher", "than"), "above"),
        (("below",), "below"), (("beneath",), "below"), (("lower", "than"), "below"),
        (("under",), "under"), (("underneath",), "under"),
        (("in", "front", "of"), "in front of"), (("before",), "in front of"),
        (("behind",), "behind"), (("in", "back", "of"), "behind"), (("at", "the", "back", "of"), "behind"),
        (("next", "to"), "next to"), (("beside",), "next to"), (("besides",), "next to"),
        (("near",), "next to"), (("close", "to"), "next to"), (("adjacent", "to"), "next to"),
        (("alongside",), "next to"), (("by", "the", "side", "of"), "next to"),
        (("side", "by", "side", "with"), "next to"), (("nearby",), "next to"),
        (("inside", "of"), "inside"), (("inside",), "inside"), (("within",), "inside"),
        (("into",), "inside"), (("in",), "inside"),
        (("in", "between"), "between"), (("between",), "between"),
    ]]
    table.sort(key=lambda pr: -len(pr[0]))
    return table


def _position_phrases() -> list[tuple[tuple[str, ...], str]]:
    table = []
    for side in ("left", "right"):
        for lead in ("on the", "to the", "at the", "in the", "on the far", "to the far", "at the far"):
            for mid in (side, f"{side} side", f"{side}-hand side", f"{side} hand side",
                        f"{side} half", f"{side} part"):
                table.append((tuple(f"{lead} {mid}".split()), f"on the {side}"))
    for word, canon in (("top", "at the top"), ("upper", "at the top"), ("bottom", "at the bottom"),
                        ("lower", "at the bottom")):
        for lead in ("at the", "on the", "in the", "near the", "along the"):
            for tail in ("", " half", " part", " edge", " of the image", " of the picture"):
                if word in ("upper", "lower") and not tail:
                    continue
                table.append((tuple(f"{lead} {word}{tail}".split()), canon))
    for v, vcanon in (("top", "top"), ("upper", "top"), ("bottom", "bottom"), ("lower", "bottom")):
        for h in ("left", "right"):
            canon = f"in the {vcanon} {h} corner"
            for lead in ("in the", "at the", "on the", ""):
                for tail in (" corner", ""):
                    for joiner in (" ", "-"):
                        words = f"{lead} {v}{joiner}{h}{tail}".split()
                        if len(words) >= 2:
                            table.append((tuple(words), canon))
    for mid in ("center", "centre", "middle"):
        for lead in ("in the", "at the", "in the very"):
            table.append((tuple(f"{lead} {mid}".split()), "in the center"))
            table.append((tuple(f"{lead} {mid} of the image".split()), "in the center"))
            table.append((tuple(f"{lead} {mid} of the picture".split()), "in the center"))
    table.append((("on", "top"), "at the top"))
    for lead in ("in the", "in the far", "far in the"):
        table.append((tuple(f"{lead} background".split()), "in the background"))
        table.append((tuple(f"{lead} distance".split()), "in the background"))
    table.append((("in", "the", "foreground"), "in the foreground"))
    table.sort(key=lambda pr: -len(pr[0]))
    return table


RELATION_PHRASES = _relation_phrases()
POSITION_PHRASES = _position_phrases()
ORDER_PHRASES = [(_phrases(t)[0], rel) for t, rel in (
    ("from left to right", "left of"), ("left to right", "left of"),
    ("from right to left", "right of"), ("right to left", "right of"),
    ("from top to bottom", "above"), ("top to bottom", "above"),
    ("from bottom to top", "below"), ("bottom to top", "below"), ("in a row", "left of"),
    ("side by side", "next to"), ("in a line", "left of"))]
FUNCTION_WORDS |= {w for table in (RELATION_PHRASES, POSITION_PHRASES, ORDER_PHRASES)
                   for words, _ in table for w in words}
FUNCTION_WORDS |= {w for p in NEGATION_PHRASES for w in p} | {w for p in INTRO_PHRASES[""] for w in p}
FUNCTION_WORDS |= {w for table in (LIST_PHRASES, INTRO_LEADERS) for p in table for w in p}

# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\n|[^\W_]+(?:['’\-/.][^\W_]+)*|\S")


class Token:
    __slots__ = ("text", "low", "start", "end", "word")

    def __init__(self, text: str, start: int, end: int):
        self.text, self.start, self.end = text, start, end
        self.low = text.lower().replace("’", "'")
        self.word = text[0].isalnum()

    def __repr__(self) -> str:
        return f"Token({self.text!r})"


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def parse_count(toks: list[Token], i: int) -> tuple[int, int] | None:
    """(count, tokens used) for a number at toks[i]: digits, words, "twenty one", quantities."""
    n = len(toks)
    for phrase, value in _QUANTITY_INDEX.get(toks[i].low, ()):
        k = len(phrase)
        if i + k <= n and tuple(t.low for t in toks[i:i + k]) == phrase:
            # "a lot of" and friends only count when a noun phrase follows.
            if i + k < n and toks[i + k].word:
                return value, k
    low = toks[i].low
    if low.isascii() and low.isdigit():
        return (int(low) if len(low) <= 9 else 10 ** 9), 1
    if low in NUMBER_WORDS:
        return NUMBER_WORDS[low], 1
    if low in TENS_WORDS:
        if i + 1 < n and toks[i + 1].low in NUMBER_WORDS and 0 < NUMBER_WORDS[toks[i + 1].low] < 10:
            return TENS_WORDS[low] + NUMBER_WORDS[toks[i + 1].low], 2
        return TENS_WORDS[low], 1
    head, _, unit = low.partition("-")
    if head in TENS_WORDS and unit in NUMBER_WORDS and 0 < NUMBER_WORDS[unit] < 10:
        return TENS_WORDS[head] + NUMBER_WORDS[unit], 1
    return None


_INDEX: dict[int, dict[str, list]] = {}


def _indexed(table) -> dict[str, list]:
    """`table` grouped by first word (longest phrases first), built once per table."""
    index = _INDEX.get(id(table))
    if index is None:
        index = {}
        for words, value in table:
            index.setdefault(words[0], []).append((words, value))
        for v in index.values():
            v.sort(key=lambda pr: -len(pr[0]))
        _INDEX[id(table)] = index
    return index


def _match(toks: list[Token], i: int, table) -> tuple[int, str] | None:
    """Longest phrase of `table` ((words, value) pairs) starting at toks[i]."""
    n = len(toks)
    if i >= n:
        return None
    for words, value in _indexed(table).get(toks[i].low, ()):
        k = len(words)
        if i + k <= n and all(toks[i + j].low == words[j] for j in range(k)):
            return k, value
    return None


def _build_style_table() -> list[tuple[tuple[str, ...], str]]:
    table = [(p, field) for field, phrases in STYLE_PHRASES.items() for p in phrases]
    table.sort(key=lambda pr: -len(pr[0]))
    return table


STYLE_TABLE = _build_style_table()
INTRO_TABLE = sorted([(p, field) for field, ps in INTRO_PHRASES.items() for p in ps],
                     key=lambda pr: -len(pr[0]))
NEGATION_TABLE = [(p, "neg") for p in sorted(NEGATION_PHRASES, key=len, reverse=True)]
LIST_TABLE = [(p, "and") for p in LIST_PHRASES]
LEADER_TABLE = [(p, "leader") for p in INTRO_LEADERS]
SOLITARY_TABLE = [(p, "alone") for p in SOLITARY_PHRASES]
MOOD_SINGLE = {p[0] for p in STYLE_PHRASES["mood"] if len(p) == 1}
_MM_RE = re.compile(r"^\d+(\.\d+)?mm$|^f/\d+(\.\d+)?$")


def is_noun_like(low: str) -> bool:
    """A bare word that can head a noun phrase without a determiner in front of it."""
    return (low in KNOWN_NOUNS or singular(low) in KNOWN_NOUNS or low in SCENE_NOUNS
            or singular(low) in SCENE_NOUNS)


# ---------------------------------------------------------------------------------------------
# The scanner
# ---------------------------------------------------------------------------------------------

# "X light" that is a thing, not lighting: "two traffic lights".
LIGHT_OBJECTS = {"traffic", "street", "tail", "head", "flash", "desk", "ceiling", "night", "fairy",
                 "string", "christmas", "tea", "search", "spot", "flood", "porch", "brake", "landing"}
AMBIGUOUS_COMPOSITION = {"minimal", "centered", "centred", "symmetrical", "symmetric", "isometric",
                         "panoramic", "minimalist", "minimalistic", "full-length"}
NOT_NOUNS = {"middle", "center", "centre", "left", "right", "top", "bottom", "side", "one", "ones",
             "front", "back", "foreground", "distance"}

SCENE_ONLY_PREPOSITIONS = {"at", "against", "during", "amid", "among", "across", "through", "around",
                           "along", "outside", "by"}


class _ClauseState:
    """Where the scanner is inside one clause."""

    def __init__(self):
        self.group: list[int] = []       # subjects the next relation or position applies to
        self.group_open = True           # False right after a relation: "A on B and C" starts a new group
        self.list_next = False           # the last filler was "and" or ","
        self.last_end = -1               # token index just past the current group's phrase
        self.seg_start = True            # at the start of a comma segment
        self.pending_rel = None          # (relation, object, object2, text, token span): "Above the table, a lamp"
        self.pending_pos = None          # (position, token span): "On the left, a cat"
        self.elliptic: list = []          # [(subject without noun, start, end)]: "a red, a green and a blue ball"
        self.elliptic_joins = False       # the first elliptic subject joins the current group

    def seg_start_at(self, i: int, parser: "_Parser") -> bool:
        """True if toks[i] starts its clause or comma segment."""
        j = i - 1
        while j >= 0 and parser.toks[j].low in ("and",):
            j -= 1
        return j < 0 or parser.toks[j].low in CLAUSE_END or parser.toks[j].low == ","


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.used = [False] * len(self.toks)
        self._boundary: list[bool | None] = [None] * len(self.toks)
        self.subjects: list[dict] = []
        self.relations: list[dict] = []
        self.relation_texts: list[str] = []
        self.style = {"medium": [], "lighting": [], "camera": [], "mood": []}
        self.composition: list[str] = []
        self.scene: list[str] = []
        self.negatives: list[str] = []
        self.lost: list[str] = []            # relation texts that named one subject twice

    # -- helpers ------------------------------------------------------------------------------
    def span_text(self, i: int, j: int) -> str:
        """Original text of tokens i..j-1, with their inner spacing."""
        if j <= i:
            return ""
        return self.text[self.toks[i].start:self.toks[j - 1].end]

    def norm_text(self, i: int, j: int) -> str:
        return re.sub(r"\s+", " ", self.span_text(i, j).lower()).strip()

    def take(self, i: int, j: int) -> None:
        for k in range(i, j):
            self.used[k] = True

    def untake(self, i: int, j: int) -> None:
        for k in range(i, j):
            self.used[k] = False

    def is_boundary(self, i: int) -> bool:
        """A token that ends a noun phrase (memoised: the scanner asks often)."""
        b = self._boundary[i]
        if b is None:
            b = self._boundary[i] = self._is_boundary(i)
        return b

    def _is_boundary(self, i: int) -> bool:
        t = self.toks[i]
        if not t.word or t.low in CLAUSE_END:
            return True
        low = t.low
        if (low in LIST_WORDS or low in PREPOSITIONS or low in COPULAS or low in DETERMINERS
                or low in ("no", "not", "nor") or low in VERBS or low in FILLER_WORDS
                or parse_count(self.toks, i) is not None):
            return True
        if (_match(self.toks, i, ORDER_PHRASES) or _match(self.toks, i, POSITION_PHRASES)
                or _match(self.toks, i, LIST_TABLE)):
            return True
        m = _match(self.toks, i, STYLE_TABLE)
        # mood words ("a serene garden") and a few framing words are ordinary adjectives too
        return m is not None and m[1] != "mood" and low not in AMBIGUOUS_COMPOSITION

    # -- noun phrases ---------------------------------------------------------------------------
    def noun_phrase(self, i: int, end: int, *, as_subject: bool) -> tuple[dict, int] | None:
        """Parse "[det] [count] modifiers* head" at i. Returns (subject dict, next index)."""
        toks = self.toks
        det = None
        count = None
        while i < end:
            low = toks[i].low
            if count is None:
                c = parse_count(toks, i)
                if c is not None:
                    count, k = c
                    i += k
                    continue
            if low in DETERMINERS and det is None and count is None:
                det = low
                i += 1
                continue
            break
        words_start = i
        while i < end and not self.is_boundary(i):
            # "a dog running": an -ing word after a known noun starts a trailing phrase.
            if i > words_start and self.is_participle(i, end):
                break
            if i > words_start and _match(toks, i, SOLITARY_TABLE):     # "a cat alone"
                break
            i += 1
        words = [t.low for t in toks[words_start:i]]
        if not words:
            return None
        if len(words) >= 2 and (words[-2], singular(words[-1])) in COMPOUND_NOUNS:
            head_words, mods = words[-2:], words[:-2]
        else:
            head_words, mods = words[-1:], words[:-1]
        last = head_words[-1]
        if len(head_words) == 1 and (((last in BASIC_COLORS or last in COLOR_ALIASES or last in ADJECTIVES
                or last in OTHER_COLOR_WORDS) and last not in KNOWN_NOUNS) or last.isdigit()):
            return None
        noun_sing = singular(last)
        is_plural = noun_sing != last
        if as_subject and det is None and count is None and (not is_noun_like(last) or last in BASIC_COLORS):
            return None
        if last in NOT_NOUNS:
            return None
        if count is not None and (count < 1 or count > MAX_COUNT):
            return None
        if count is None:
            if det in ("these", "those") or (is_plural and det not in ("a", "an", "another", "each", "every")):
                count = DEFAULT_PLURAL_COUNT
            else:
                count = 1
        noun = " ".join(head_words[:-1] + [noun_sing])
        color, attributes = _color_and_attributes(mods)
        return {"noun": noun, "count": count, "color": color, "attributes": attributes, "_det": det}, i

    def elliptic(self, i: int, end: int) -> tuple[dict, int, int] | None:
        """ "a red" followed by "," or "and": a subject whose noun comes with the next one."""
        toks = self.toks
        j = i
        count = 1
        if j < end and toks[j].low in ("a", "an", "one"):
            j += 1
        else:
            c = parse_count(toks, j)
            if c is None:
                return None
            count, k = c
            if not 1 <= count <= MAX_COUNT:
                return None
            j += k
        words = []
        while j < end and not self.is_boundary(j):
            words.append(toks[j].low)
            j += 1
        if not words or not (j < end and toks[j].low in (",", "and", "or")):
            return None
        if not all(w in BASIC_COLORS or w in COLOR_ALIASES or w in ADJECTIVES or w in OTHER_COLOR_WORDS
                   for w in words):
            return None
        color, attributes = _color_and_attributes(words)
        return {"noun": None, "count": count, "color": color, "attributes": attributes, "_det": None}, i, j

    def phrase_until_boundary(self, i: int, end: int) -> int:
        """End of a qualifier phrase object: "[det] [count] words" up to the next boundary."""
        j = i
        while j < end and self.toks[j].low in DETERMINERS | {"some", "many"}:
            j += 1
        c = parse_count(self.toks, j) if j < end else None
        if c:
            j += c[1]
        k = j
        while k < end and not self.is_boundary(k):
            if k > j and self.is_participle(k, end):      # "with long hair reading a book"
                break
            k += 1
        return k if k > j else i

    def is_participle(self, i: int, end: int) -> bool:
        """ "a dog *sleeping* under", "a car *parked* in front of": a verb form that ends a noun phrase."""
        low = self.toks[i].low
        if not low.endswith(("ing", "ed")) or low in KNOWN_NOUNS:
            return False
        return is_noun_like(self.toks[i - 1].low) or (
            low not in ADJECTIVES and (i + 1 >= end or self.is_boundary(i + 1)))

    # -- the scan -----------------------------------------------------------------------------
    def parse(self) -> None:
        toks = self.toks
        n = len(toks)
        clause_start = 0
        for i in range(n + 1):
            if i == n or toks[i].low in CLAUSE_END:
                if i > clause_start:
                    self.parse_clause(clause_start, i)
                clause_start = i + 1

    def segment_is_style_only(self, i: int, end: int) -> bool:
        """True if the comma segment starting at i is only style words ("..., oil painting,")."""
        j = i
        any_style = False
        while j < end and self.toks[j].low != "," and self.toks[j].low not in CLAUSE_END:
            m = _match(self.toks, j, STYLE_TABLE) or _match(self.toks, j, INTRO_TABLE)
            if m and m[1]:
                any_style = True
                j += m[0]
                continue
            if self.toks[j].low in ("and", "a", "an", "the") or _MM_RE.match(self.toks[j].low):
                j += 1
                continue
            return False
        return any_style

    def parse_clause(self, start: int, end: int) -> None:
        toks = self.toks
        st = _ClauseState()
        i = start
        while i < end:
            t = toks[i]
            low = t.low
            if low == ",":
                self.take(i, i + 1)
                st.seg_start = True
                if st.last_end == i:
                    st.last_end = i + 1
                    st.list_next = True
                i += 1
                continue
            at_seg_start, st.seg_start = st.seg_start, False
            adjacent = bool(st.group) and st.last_end == i   # right after a subject's phrase
            nxt = self.style_or_intro(i, end, at_seg_start)
            if nxt is not None:
                i = nxt
                continue
            nxt = self.negation(i, end)
            if nxt is not None:
                i = nxt
                continue

            # order phrases: "a, b and c from left to right", "x and y side by side"
            m = _match(toks, i, ORDER_PHRASES)
            if m and len(st.group) >= 2 and adjacent:
                k, rel = m
                for a, b in zip(st.group, st.group[1:]):
                    self.add_relation(a, b, rel, None, self.norm_text(i, i + k))
                self.take(i, i + k)
                i += k
                st.last_end = i
                continue
            if m and not _match(toks, i, RELATION_PHRASES):
                # no two subjects to put in order ("two triangles side by side"): the idiom stays
                # whole and as written rather than falling apart into a scene and a stray word
                if st.last_end == i:        # what follows still belongs to the same subjects
                    st.last_end = i + m[0]
                i += m[0]
                continue

            # "a cat together with a dog": another subject, as after "and"
            m = _match(toks, i, LIST_TABLE)
            if m:
                self.take(i, i + m[0])
                if st.last_end == i:
                    st.last_end = i + m[0]
                    st.list_next = True
                i += m[0]
                continue

            # "a red square on its own", "a star by itself": not a relation, kept as written
            m = _match(toks, i, SOLITARY_TABLE)
            if m:
                if st.last_end == i:        # "a cat alone in a field": the field is still the scene
                    st.last_end = i + m[0]
                i += m[0]
                continue

            # "three birds in the image": the picture itself is framing, not a place
            nxt = self.frame_phrase(i, end)
            if nxt is not None:
                i = nxt
                continue

            # absolute positions: "a cat on the left", "On the left, a cat"
            m = _match(toks, i, POSITION_PHRASES)
            if m and not (i + m[0] < end and toks[i + m[0]].low == "of"):
                k, canon = m
                after = toks[i + k].low if i + k < end else ""
                # "on the right is a cow", "..., on the right, a house": it introduces what follows
                introduces = after in COPULAS or (at_seg_start and after == ",") or (
                    not adjacent and after != "")
                if adjacent and not introduces:
                    for s in st.group:
                        self.subjects[s]["attributes"].append(canon)
                    st.last_end = i + k
                    st.group_open = False     # "a dog on the right and a cat on the left"
                else:
                    if st.pending_pos:                    # two in a row: the first stays as written
                        self.untake(*st.pending_pos[1])
                    st.pending_pos = (canon, (i, i + k))
                self.take(i, i + k)
                i += k
                continue

            # relations: "to the left of", "on top of", "beneath", "between X and Y"
            m = _match(toks, i, RELATION_PHRASES)
            if m and (adjacent or at_seg_start or not st.group):
                nxt = self.relation(i, m[0], m[1], end, st, adjacent)
                if nxt is not None:
                    i = nxt
                    continue

            # a scene phrase: "at night", "during sunset", "against a white wall"
            if low in SCENE_ONLY_PREPOSITIONS:
                k = self.phrase_until_boundary(i + 1, end)
                if k > i + 1:
                    head = toks[k - 1].low
                    if singular(head) in SCENE_NOUNS or head in SCENE_NOUNS or not adjacent:
                        self.scene.append(self.norm_text(i, k))
                        self.take(i, k)
                        i = k
                        continue

            # qualifiers of the previous subject: "with a red collar", "made of wood"
            transitive = (low.endswith("ing") and i + 1 < end
                          and (toks[i + 1].low in DETERMINERS or parse_count(toks, i + 1) is not None))
            if low == "with" and adjacent:
                # "a purple triangle with a green square": two things of one kind are two subjects
                np = self.noun_phrase(i + 1, end, as_subject=True)
                if np is not None and same_kind(self.subjects[st.group[-1]]["noun"], np[0]["noun"]):
                    self.take(i, i + 1)
                    st.last_end, st.list_next = i + 1, True
                    i += 1
                    continue
            if (low in QUALIFIER_WORDS or transitive) and adjacent:   # "... facing a dragon"
                k = self.phrase_until_boundary(i + 1, end)
                if k == i + 1 and i + 2 < end and toks[i + 1].low in PREPOSITIONS:   # "made of wood"
                    k = self.phrase_until_boundary(i + 2, end)
                if k > i + 1:
                    self.subjects[st.group[-1]]["attributes"].append(self.norm_text(i, k))
                    self.take(i, k)
                    i = k
                    st.last_end = k
                    # what follows is about this subject only, and a list after it starts afresh
                    st.group, st.group_open = st.group[-1:], False
                    continue

            # fillers: list words and copulas
            if low in LIST_WORDS or low in COPULAS:
                self.take(i, i + 1)
                if st.last_end == i:
                    st.last_end = i + 1
                if low in LIST_WORDS and st.last_end == i + 1:
                    st.list_next = True
                i += 1
                continue

            # a noun phrase: a new subject (or "the cat" again)
            np = self.noun_phrase(i, end, as_subject=True)
            if np is None:
                # "a red, a green and a blue ball": colours now, the noun comes later
                ell = self.elliptic(i, end)
                if ell is not None:
                    if not st.elliptic:
                        st.elliptic_joins = (st.list_next and st.last_end == i and st.group_open
                                             and bool(st.group))
                    st.elliptic.append(ell)
                    self.take(i, ell[2])
                    st.last_end = ell[2]
                    i = ell[2]
                    continue
            if np is not None:
                subj, j = np
                for n_part, (part, a, b) in enumerate(st.elliptic):
                    part["noun"] = subj["noun"]
                    idx = self.add_subject(part, a, b)
                    if n_part == 0 and not st.elliptic_joins:
                        st.group, st.group_open = [idx], True
                    else:
                        st.group = st.group + [idx]
                    st.list_next, st.last_end = True, i
                st.elliptic = []
                if st.pending_pos:
                    subj["attributes"].append(st.pending_pos[0])
                    st.pending_pos = None
                idx = self.add_subject(subj, i, j)
                self.take(i, j)
                if st.pending_rel is not None:
                    rel, obj, obj2, text, _ = st.pending_rel
                    self.add_relation(idx, obj, rel, obj2, text)
                    st.pending_rel = None
                if st.list_next and st.last_end == i and st.group_open:
                    st.group = st.group + [idx]
                else:
                    st.group = [idx]
                    st.group_open = True
                st.list_next = False
                i = j
                st.last_end = j
                continue

            # trailing words of the previous subject: "a dog running happily", "the cat is black"
            if adjacent and not at_seg_start and t.word and low not in FUNCTION_WORDS:
                k = i
                while k < end and not self.is_boundary(k):
                    k += 1
                if k > i:
                    subj = self.subjects[st.group[-1]]
                    color = COLOR_ALIASES.get(self.norm_text(i, k), self.norm_text(i, k))
                    if color in BASIC_COLORS and subj["color"] is None:
                        subj["color"] = color
                    else:
                        subj["attributes"].append(self.norm_text(i, k))
                    self.take(i, k)
                    i = k
                    st.last_end = k
                    continue
            i += 1   # not understood: stays unused and ends up in `unparsed`
        # what was waiting for a noun that never came stays as written:
        for _, a, b in st.elliptic:          # "a red and a blue."
            self.untake(a, b)
        if st.pending_pos:                   # "On the left."
            self.untake(*st.pending_pos[1])
        if st.pending_rel is not None:       # "next to the window."
            self.untake(*st.pending_rel[4])

    def style_or_intro(self, i: int, end: int, at_seg_start: bool) -> int | None:
        """Style phrases and "a photo of"; returns the next index if it consumed something."""
        toks = self.toks
        low = toks[i].low
        if _MM_RE.match(low):                                   # "35mm", "f/1.8"
            self.style["camera"].append(low)
            self.take(i, i + 1)
            return i + 1
        if i + 1 < end and toks[i + 1].low in ("lighting", "light", "lights") and toks[i].word and (
                low not in BASIC_COLORS and low not in FUNCTION_WORDS and low not in LIGHT_OBJECTS
                and (toks[i + 1].low == "lighting" or low in ("warm", "soft", "cold", "neon", "natural", "dim"))):
            self.style["lighting"].append(self.norm_text(i, i + 2))   # "moody lighting"
            self.take(i, i + 2)
            return i + 2
        if at_seg_start:
            j = self.style_segment(i, end)      # "..., soft natural light from the left, ..."
            if j is not None:
                return j
        if low == "shot" and i + 1 < end and toks[i + 1].low in ("on", "with"):   # "shot on 85mm"
            j = i + 2
            while j < end and toks[j].low != ",":
                j += 1
            self.style["camera"].append(self.norm_text(i, j))
            self.take(i, j)
            return j
        if low == "in" and i + 3 < end and [t.low for t in toks[i + 1:i + 4]] == ["the", "style", "of"]:
            j = i + 4
            while j < end and toks[j].low != ",":
                j += 1
            self.style["medium"].append(self.norm_text(i, j))          # "in the style of van gogh"
            self.take(i, j)
            return j
        if i + 1 < end and toks[i + 1].low == "style" and toks[i].word and low not in FUNCTION_WORDS:
            k = i - 1 if i > 0 and toks[i - 1].low == "in" and not self.used[i - 1] else i
            self.style["medium"].append(self.norm_text(i, i + 2))   # "(in) anime style"
            self.take(k, i + 2)
            return i + 2
        m = _match(toks, i, STYLE_TABLE)
        if m:
            k, fld = m
            ambiguous = fld == "mood" or (fld == "composition" and k == 1 and low in AMBIGUOUS_COMPOSITION)
            if not ambiguous or self.segment_is_style_only(i, end):
                target = self.composition if fld == "composition" else self.style[fld]
                target.append(self.norm_text(i, i + k))
                self.take(i, i + k)
                return i + k
        # "a photo of", "a close-up of", "an image of"
        j = i + 1 if low in ("a", "an", "the") else i
        moods = j
        while moods < end and toks[moods].low in MOOD_SINGLE:      # "a cinematic photo of"
            moods += 1
        m = _match(toks, moods, INTRO_TABLE) if moods < end else None
        # "of" introduces the subject anywhere; "showing", "with", "containing" ... only at the
        # start of a segment, where the picture is framing ("a cat with a picture of ..." is not)
        lead = _match(toks, moods + m[0], LEADER_TABLE) if m else None
        if lead and toks[moods + m[0]].low != "of" and (not at_seg_start or moods + m[0] + lead[0] >= end):
            lead = None
        if m and moods > j and not lead:
            m = None
        if m and moods > j:
            self.style["mood"].extend(t.low for t in toks[j:moods])
            j = moods
        if m and lead:
            k, fld = m
            if fld == "composition":
                self.composition.append(self.norm_text(j, j + k))
            elif fld == "medium":
                self.style["medium"].append(self.norm_text(j, j + k))
            self.take(i, j + k + lead[0])
            return j + k + lead[0]
        # a comma segment that is only a medium word: "..., oil painting"
        if m and m[1] and at_seg_start and self.segment_is_style_only(i, end):
            k, fld = m
            (self.composition if fld == "composition" else self.style[fld]).append(self.norm_text(j, j + k))
            self.take(i, j + k)
            return j + k
        return None

    def frame_phrase(self, i: int, end: int) -> int | None:
        """ "in the picture", "in this photo" closing a phrase: the picture itself, not a place in
        it. A medium word ("photo") is the medium; "image", "picture", "scene" add nothing."""
        toks = self.toks
        if not (i + 2 < end and toks[i].low in ("in", "within") and toks[i + 1].low in ("the", "this", "that")):
            return None
        m = _match(toks, i + 2, INTRO_TABLE)
        if m is None or m[1] == "composition":
            return None
        j = i + 2 + m[0]
        if j < end and toks[j].word and toks[j].low not in LIST_WORDS:
            return None                      # "in the picture frame", "in the image of a ..."
        if m[1] == "medium":
            self.style["medium"].append(self.norm_text(i + 2, j))
        self.take(i, j)
        return j

    def style_segment(self, i: int, end: int) -> int | None:
        """A short comma segment that ends in a style head is style as a whole:
        "minimalist food photography" (medium), "soft morning light" (lighting)."""
        toks = self.toks
        e = i
        while e < end and toks[e].low != ",":
            e += 1
        if not 2 <= e - i <= 7:
            return None
        # a lighting direction: "soft natural light from the left"
        tail_end = e
        for k in range(i + 1, e):
            if toks[k].low == "from" and toks[k - 1].low in ("light", "lighting", "lights", "sunlight"):
                tail_end = k
                break
        words = toks[i:tail_end]
        if any(not t.word or t.low in DETERMINERS or parse_count(toks, i + n) is not None
               for n, t in enumerate(words)):
            return None
        fld = None
        for k in (3, 2, 1):
            if len(words) <= k:
                continue
            start = tail_end - k
            m = _match(toks, start, STYLE_TABLE) or _match(toks, start, INTRO_TABLE)
            if m and m[0] == k and m[1] and m[1] != "mood":
                fld = m[1]
                break
        last = words[-1].low
        if fld is None and last in ("light", "lighting", "lights") and words[-2].low not in LIGHT_OBJECTS:
            fld, k = "lighting", 1
        if fld is None or any(is_noun_like(t.low) and t.low not in SCENE_NOUNS
                              for t in toks[i:tail_end - k]):
            return None
        (self.composition if fld == "composition" else self.style[fld]).append(self.norm_text(i, e))
        self.take(i, e)
        return e

    def negation(self, i: int, end: int) -> int | None:
        """ "no people", "without text or watermarks": returns the next index, or None."""
        toks = self.toks
        m = _match(toks, i, NEGATION_TABLE)
        if not m:
            return None
        j = i + m[0]
        got = False
        while j < end:
            k = self.phrase_until_boundary(j, end)
            if k == j:
                break
            words = [w.low for w in toks[j:k] if w.low not in DETERMINERS and w.low != "any"]
            if words:
                self.negatives.append(" ".join(words))
                got = True
            j = k
            if (j + 1 < end and toks[j].low in ("or", "and", "nor") and toks[j + 1].word
                    and not self.is_boundary(j + 1)):
                j += 1
                continue
            break
        if not got:
            return None
        self.take(i, j)
        return j

    def relation(self, i: int, k: int, rel: str, end: int, st: "_ClauseState", adjacent: bool) -> int | None:
        """A relation phrase at toks[i:i+k] and its object; returns the next index, or None."""
        toks = self.toks
        group = st.group if adjacent else []
        j = i + k
        # "next to each other", "above one another"
        if j + 1 < end and (toks[j].low, toks[j + 1].low) in (("each", "other"), ("one", "another")):
            if len(group) < 2:
                return None
            for a, b in zip(group, group[1:]):
                self.add_relation(a, b, rel, None, self.norm_text(i, j + 2))
            self.take(i, j + 2)
            st.last_end = j + 2
            return j + 2
        if j < end and toks[j].low in ("it", "them") and group:
            # "a phone next to it": the subject named just before this group
            earlier = [s for s in range(len(self.subjects)) if s not in group]
            if not earlier:
                return None
            text = self.norm_text(i, j + 1)
            for s in group:
                self.add_relation(s, earlier[-1], rel, None, text)
            self.take(i, j + 1)
            st.last_end = j + 1
            return j + 1
        np = self.noun_phrase(j, end, as_subject=False)
        if np is None:
            return None
        obj, j2 = np
        noun = obj["noun"]
        head = noun.split()[-1]
        is_scene = head in SCENE_NOUNS and noun not in KNOWN_NOUNS - {"wall", "sky", "water"}
        if is_scene and rel in ("on", "inside", "under", "above", "below", "behind", "next to", "in front of"):
            self.scene.append(self.norm_text(i, j2))         # "on a beach", "in a forest"
            self.take(i, j2)
            if adjacent:
                st.last_end = j2
            return j2
        if rel == "inside" and toks[i].low == "in" and k == 1 and noun not in CONTAINER_NOUNS:
            if adjacent:                                      # "a woman in a red dress"
                self.subjects[group[-1]]["attributes"].append(self.norm_text(i, j2))
                self.take(i, j2)
                st.last_end = j2
                return j2
            return None
        obj2_idx, end_tok = None, j2
        if rel == "between":
            if not (j2 + 1 < end and toks[j2].low in ("and", "&")):
                return None
            np2 = self.noun_phrase(j2 + 1, end, as_subject=False)
            if np2 is None:
                return None
            obj2, end_tok = np2
        if not group and not st.seg_start_at(i, self):
            return None
        obj_idx = self.add_subject(obj, j, j2)
        if rel == "between":
            obj2_idx = self.add_subject(obj2, j2 + 1, end_tok)
        text = self.norm_text(i, end_tok)
        self.take(i, end_tok)
        if group:
            for s in group:
                self.add_relation(s, obj_idx, rel, obj2_idx, text)
        else:   # "Above the table, a lamp": the subject comes later
            st.pending_rel = (rel, obj_idx, obj2_idx, text, (i, i + k))
        st.group, st.group_open, st.list_next = [obj_idx], False, False
        st.last_end = end_tok
        return end_tok

    def add_subject(self, subj: dict, i: int, j: int) -> int:
        """Add a subject, or return the earlier one that "the <noun>" refers to."""
        det = subj.pop("_det", None)
        if det == "the":
            for k, old in enumerate(self.subjects):
                if (old["noun"] == subj["noun"] and subj["color"] in (None, old["color"])
                        and all(a in old["attributes"] for a in subj["attributes"])):
                    return k
        self.subjects.append(subj)
        return len(self.subjects) - 1

    def add_relation(self, s: int, o: int, rel: str, o2: int | None, text: str) -> None:
        if s == o or (o2 is not None and s == o2) or o == o2:
            self.lost.append(text)           # "the cat left of the cat": kept as written
            return
        r = {"subject": s, "object": o, "relation": rel}
        if o2 is not None:
            r["object2"] = o2
        if r in self.relations:
            return
        self.relations.append(r)
        self.relation_texts.append(text)

    def unparsed(self) -> list[str]:
        """Verbatim runs of tokens nobody used (punctuation-only runs are dropped)."""
        runs, i, n = [], 0, len(self.toks)
        while i < n:
            if self.used[i] or self.toks[i].low in CLAUSE_END:
                i += 1
                continue
            j = i
            while j < n and not self.used[j] and self.toks[j].low not in CLAUSE_END:
                j += 1
            # trim list punctuation and conjunctions at the edges
            a, b = i, j
            while a < b and (not self.toks[a].word or self.toks[a].low in ("and", "or")):
                a += 1
            while b > a and (not self.toks[b - 1].word or self.toks[b - 1].low in ("and", "or")):
                b -= 1
            if a < b:
                runs.append(self.span_text(a, b))
            elif any(not t.word and t.low not in (",", "\n") for t in self.toks[i:j]):
                # keep symbols such as emoji or "#" even without words around them
                runs.append(self.span_text(i, j).strip(" ,"))
            i = j
        return [r for r in runs if r]


def _color_and_attributes(modifiers: list[str]) -> tuple[str | None, list[str]]:
    """The first basic colour word is the colour; every other modifier is an attribute, in order."""
    color, attributes = None, []
    for m in modifiers:
        c = COLOR_ALIASES.get(m, m)
        if c in BASIC_COLORS and color is None:
            color = c
        else:
            attributes.append(m)
    return color, attributes


def _positions_to_relations(subjects: list[dict], relations: list[dict], texts: list[str]) -> None:
    """ "On the left, X; on the right, Y" -> X left of Y (and the positions become the relation)."""
    placed = [(i, a) for i, s in enumerate(subjects) for a in s["attributes"] if a in POSITIONS]
    if len(placed) != 2:
        return
    (i, a), (j, b) = placed
    pairs = {("on the left", "on the right"): "left of", ("on the right", "on the left"): "right of",
             ("at the top", "at the bottom"): "above", ("at the bottom", "at the top"): "below",
             ("in the background", "in the foreground"): "behind",
             ("in the foreground", "in the background"): "in front of"}
    rel = pairs.get((a, b))
    if rel is None or i == j:
        return
    if any({r["subject"], r["object"]} == {i, j} for r in relations):
        return
    subjects[i]["attributes"].remove(a)
    subjects[j]["attributes"].remove(b)
    relations.append({"subject": i, "object": j, "relation": rel})
    texts.append(f"{a} ... {b}")


def parse_prompt(text: str) -> tuple[dict, list[str]]:
    """The plan dictionary for `text` (without layout) and the source text of each relation."""
    p = _Parser(text)
    p.parse()
    _positions_to_relations(p.subjects, p.relations, p.relation_texts)
    plan = {
        "subjects": p.subjects,
        "relations": p.relations,
        "scene": " ".join(p.scene),
        "style": {k: ", ".join(dict.fromkeys(v)) for k, v in p.style.items()},
        "composition": ", ".join(dict.fromkeys(p.composition)),
        "negatives": list(dict.fromkeys(p.negatives)),
        "unparsed": p.unparsed() + p.lost,
    }
    return plan, list(p.relation_texts)
