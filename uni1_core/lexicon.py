"""The planner's English: word tables, phrase tables and the few English helpers the plan renders
with (plural forms, number words, articles).

Everything here is data or a pure function of one word; the grammar that reads these tables is
`plan_parse.py`. Words are lower case; phrases are tuples of lower-case words.
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
# Quantity phrases -> count. Only phrases that give a number count; vague ones ("some", "many",
# "a group of") say "more than one" and leave the number open (None), as a bare plural does.
QUANTITY_PHRASES = {
    ("a", "pair", "of"): 2, ("pair", "of"): 2, ("a", "couple", "of"): 2, ("couple", "of"): 2,
    ("both",): 2, ("twin",): 2, ("a", "trio", "of"): 3, ("a", "dozen"): 12, ("dozen",): 12,
    ("half", "a", "dozen"): 6, ("a", "single"): 1, ("single",): 1, ("a", "lone"): 1,
    ("some",): None, ("several",): None, ("a", "few"): None, ("few",): None, ("multiple",): None,
    ("various",): None, ("a", "group", "of"): None, ("a", "bunch", "of"): None, ("a", "set", "of"): None,
    ("a", "row", "of"): None, ("a", "herd", "of"): None, ("a", "flock", "of"): None,
    ("a", "pack", "of"): None, ("many",): None, ("numerous",): None, ("lots", "of"): None,
    ("a", "lot", "of"): None, ("plenty", "of"): None, ("a", "crowd", "of"): None,
}
MAX_COUNT = 50
# The noun of a vague quantity that says how the things are gathered: kept as "in a group".
COLLECTIVE_WORDS = {"group", "bunch", "set", "row", "herd", "flock", "pack", "crowd"}
_QUANTITY_INDEX: dict[str, list] = {}
for _p, _v in sorted(QUANTITY_PHRASES.items(), key=lambda pv: -len(pv[0])):
    _QUANTITY_INDEX.setdefault(_p[0], []).append((_p, _v))

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
# Copulas with content: said of the subject before them as its -ing form ("the statue sits on the
# moon" -> a statue sitting, on the moon); a transitive one takes its object along ("a map
# showing a bay").
POSTURE_VERBS = {"sits": "sitting", "sit": "sitting", "stands": "standing", "stand": "standing",
                 "rests": "resting", "lies": "lying", "placed": "placed", "positioned": "positioned",
                 "located": "located", "situated": "situated"}
TRANSITIVE_VERBS = {"shows": "showing", "showing": "showing", "depicting": "depicting",
                    "featuring": "featuring", "containing": "containing"}
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
        (("hidden", "by"), "behind"), (("hidden", "behind"), "behind"), (("obscured", "by"), "behind"),
        (("blocked", "by"), "behind"), (("partially", "hidden", "by"), "behind"),
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

# Phrase tables as (words, value) lists, longest first where order matters.

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


# Scanner word lists.
# "X light" that is a thing, not lighting: "two traffic lights".
LIGHT_OBJECTS = {"traffic", "street", "tail", "head", "flash", "desk", "ceiling", "night", "fairy",
                 "string", "christmas", "tea", "search", "spot", "flood", "porch", "brake", "landing"}
AMBIGUOUS_COMPOSITION = {"minimal", "centered", "centred", "symmetrical", "symmetric", "isometric",
                         "panoramic", "minimalist", "minimalistic", "full-length"}
NOT_NOUNS = {"middle", "center", "centre", "left", "right", "top", "bottom", "side", "one", "ones",
             "front", "back", "foreground", "distance"}

SCENE_ONLY_PREPOSITIONS = {"at", "against", "during", "amid", "among", "across", "through", "around",
                           "along", "outside", "by"}



def is_noun_like(low: str) -> bool:
    """A bare word that can head a noun phrase without a determiner in front of it."""
    return (low in KNOWN_NOUNS or singular(low) in KNOWN_NOUNS or low in SCENE_NOUNS
            or singular(low) in SCENE_NOUNS)


# Closed-class words (the fidelity checks' and the parser's notion of a content word: any other
# word): they carry grammar, not content; what they mean reaches the plan as a
# count, a relation or a position, so a view need not repeat them word for word. The last line
# names the picture itself and how it shows ("an image showing a cat" asks for a cat).
GRAMMAR_WORDS = set("""
a an the this that these those each every another any some such no not nor none
i me my mine you your yours he him his she her hers it its they them their theirs we us our ours
itself himself herself themselves oneself one ones someone something everything there here
who whom whose which what where when while whilst as than so too also just very
and or but plus & yet
of to in on at by for from with without into onto upon over under above below beneath
underneath behind beside besides between among amid around about across along alongside
against through toward towards within inside outside near nearby next atop before after
during up down off out away past via per like unlike hidden obscured blocked partially
is are was were be been being am has have had having do does did will would can could
shall should may might must let lets
left right top bottom middle center centre front back side sides corner far upper lower
left-hand right-hand foreground background distance each other
image picture view depiction rendition showing featuring depicting displaying containing
""".split()) | set(NUMBER_WORDS) | set(TENS_WORDS) | {
    "pair", "couple", "both", "twin", "twins", "trio", "dozen", "dozens", "half", "single",
    "several", "few", "many", "multiple", "various", "numerous", "lots", "lot", "plenty"}

# Particles of a phrasal verb before a relation: "the sun shone *down* on the water".
PARTICLES = {"down", "up", "out", "over", "back", "away", "off", "around", "along", "together"}

# Adverbs that qualify a relation or position ("just left of", "high above", "directly behind").
DEGREE_ADVERBS = {"just", "directly", "right", "exactly", "precisely", "immediately", "slightly",
                  "far", "high", "low", "way", "well", "partly", "partially", "halfway", "somewhat",
                  "very", "deep", "straight", "squarely", "neatly", "closely", "mostly", "almost"}

# A chunk that ends in one of these is cut short ("Under.", "Chopsticks resting on.").
DANGLING_WORDS = set("""
a an the this that these those his her its their my your our
of to in on at by for from with without into onto upon over under above below beneath underneath
behind beside between among around across along against through toward towards within inside
near next atop
and or but nor plus &
is are was were be been being
""".split())


# Phrases ending in a place ("in the corner", "on the left", "front view") or a reflexive ("by itself") stand
# alone though no content word is in them.
SELF_CONTAINED_ENDS = {"left", "right", "top", "bottom", "middle", "center", "centre", "front", "back",
                       "side", "sides", "corner", "foreground", "background", "distance",
                       "itself", "themselves", "himself", "herself", "alone", "view"}


def is_fragment(words: list[str]) -> bool:
    """Lower-case words that cannot stand alone: cut short after a word that needs a complement
    ("under", "a", "playing with"), or without a content word unless they end in a place
    ("he", "the one", "one of them"; but "in the corner" and "by itself" stand)."""
    if not words or words[-1] in DANGLING_WORDS:
        return True
    content = [w for w in words if w not in GRAMMAR_WORDS and not w.isdigit()]
    return not content and words[-1] not in SELF_CONTAINED_ENDS
