"""The table of prompts the planner is tested on, with what a careful reader expects of each.

Two parts: GenEval-style template prompts (single object, two objects, counting, colours,
position, colour attribution), whose expectations follow from the template's own words; and
free-form prompts written by hand. Each case is a dict:

    prompt      the text
    subjects    [(noun, count, color, attributes)], in order of first mention
    relations   [(subject index, relation, object index)] (order free); "between" cases add a 4th item
    scene, negatives, medium, lighting, camera, composition, mood: checked when present
    unparsed    words that must be kept verbatim in `unparsed` (checked when present)
    adverbs     the relations' adverbs, in order ("high" in "high above"; checked when present)
    sentence    the whole canonical sentence, `plan.conditioning_text()` (checked when present)
"""

# COCO / GenEval object names with their plurals, written out (not computed by the planner).
OBJECTS = [
    ("person", "people"), ("bicycle", "bicycles"), ("car", "cars"), ("motorcycle", "motorcycles"),
    ("airplane", "airplanes"), ("bus", "buses"), ("train", "trains"), ("truck", "trucks"),
    ("boat", "boats"), ("traffic light", "traffic lights"), ("fire hydrant", "fire hydrants"),
    ("stop sign", "stop signs"), ("parking meter", "parking meters"), ("bench", "benches"),
    ("bird", "birds"), ("cat", "cats"), ("dog", "dogs"), ("horse", "horses"), ("sheep", "sheep"),
    ("cow", "cows"), ("elephant", "elephants"), ("bear", "bears"), ("zebra", "zebras"),
    ("giraffe", "giraffes"), ("backpack", "backpacks"), ("umbrella", "umbrellas"),
    ("handbag", "handbags"), ("tie", "ties"), ("suitcase", "suitcases"), ("frisbee", "frisbees"),
    ("skis", "skis"), ("snowboard", "snowboards"), ("sports ball", "sports balls"), ("kite", "kites"),
    ("baseball bat", "baseball bats"), ("baseball glove", "baseball gloves"),
    ("skateboard", "skateboards"), ("surfboard", "surfboards"), ("tennis racket", "tennis rackets"),
    ("bottle", "bottles"), ("wine glass", "wine glasses"), ("cup", "cups"), ("fork", "forks"),
    ("knife", "knives"), ("spoon", "spoons"), ("bowl", "bowls"), ("banana", "bananas"),
    ("apple", "apples"), ("sandwich", "sandwiches"), ("orange", "oranges"),
    ("broccoli", "broccolis"), ("carrot", "carrots"), ("hot dog", "hot dogs"), ("pizza", "pizzas"),
    ("donut", "donuts"), ("cake", "cakes"), ("chair", "chairs"), ("couch", "couches"),
    ("potted plant", "potted plants"), ("bed", "beds"), ("dining table", "dining tables"),
    ("toilet", "toilets"), ("tv", "tvs"), ("laptop", "laptops"), ("computer mouse", "computer mice"),
    ("tv remote", "tv remotes"), ("computer keyboard", "computer keyboards"),
    ("cell phone", "cell phones"), ("microwave", "microwaves"), ("oven", "ovens"),
    ("toaster", "toasters"), ("sink", "sinks"), ("refrigerator", "refrigerators"), ("book", "books"),
    ("clock", "clocks"), ("vase", "vases"), ("scissors", "scissors"), ("teddy bear", "teddy bears"),
    ("hair drier", "hair driers"), ("toothbrush", "toothbrushes"),
]
# Objects whose name works with "a" (plural-only names like "skis" and "scissors" are left out
# of the singular templates).
SINGULAR_OBJECTS = [o for o in OBJECTS if o[0] not in ("skis", "scissors", "sheep")]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
NUMBERS = [("two", 2), ("three", 3), ("four", 4), ("2", 2), ("3", 3), ("4", 4), ("five", 5)]
POSITIONS = ["left of", "right of", "above", "below"]
SHAPES = [("circle", "circles"), ("square", "squares"), ("triangle", "triangles"), ("star", "stars"),
          ("hexagon", "hexagons"), ("heart", "hearts")]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def geneval_cases() -> list[dict]:
    cases = []
    objs = SINGULAR_OBJECTS
    n = len(objs)
    for k in range(20):                                     # single object
        o = objs[(k * 5) % n][0]
        cases.append({"prompt": f"a photo of {_a(o)}", "subjects": [(o, 1, None, [])], "relations": [],
                      "medium": "photo"})
    for k in range(25):                                     # two objects
        a, b = objs[(k * 4) % n][0], objs[(k * 4 + 11) % n][0]
        cases.append({"prompt": f"a photo of {_a(a)} and {_a(b)}",
                      "subjects": [(a, 1, None, []), (b, 1, None, [])], "relations": []})
    for k in range(25):                                     # counting
        (sing, plur), (word, num) = OBJECTS[(k * 3) % len(OBJECTS)], NUMBERS[k % len(NUMBERS)]
        cases.append({"prompt": f"a photo of {word} {plur}", "subjects": [(sing, num, None, [])], "relations": []})
    for k in range(20):                                     # colours
        o, c = objs[(k * 9 + 2) % n][0], COLORS[k % len(COLORS)]
        cases.append({"prompt": f"a photo of {_a(c)} {o}", "subjects": [(o, 1, c, [])], "relations": []})
    for k in range(25):                                     # position
        a, b = objs[(k * 13 + 1) % n][0], objs[(k * 13 + 6) % n][0]
        rel = POSITIONS[k % 4]
        cases.append({"prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
                      "subjects": [(a, 1, None, []), (b, 1, None, [])], "relations": [(0, rel, 1)]})
    for k in range(25):                                     # colour attribution
        a, b = objs[(k * 10 + 4) % n][0], objs[(k * 10 + 9) % n][0]
        ca, cb = COLORS[k % len(COLORS)], COLORS[(k * 3 + 1) % len(COLORS)]
        cases.append({"prompt": f"a photo of {_a(ca)} {a} and {_a(cb)} {b}",
                      "subjects": [(a, 1, ca, []), (b, 1, cb, [])], "relations": []})
    for k in range(12):                                     # the demo model's world
        (sa, pa), (sb, _) = SHAPES[k % len(SHAPES)], SHAPES[(k + 2) % len(SHAPES)]
        word, num = NUMBERS[k % 3]
        ca, cb = COLORS[k % 6], COLORS[(k + 3) % 6]
        rel = POSITIONS[k % 4]
        cases.append({"prompt": f"{word} {ca} {pa} {rel} {_a(cb)} {sb}",
                      "subjects": [(sa, num, ca, []), (sb, 1, cb, [])], "relations": [(0, rel, 1)]})
    return cases


FREE_FORM = [
    {"prompt": "two red circles to the left of a blue square",
     "subjects": [("circle", 2, "red", []), ("square", 1, "blue", [])], "relations": [(0, "left of", 1)]},
    {"prompt": "a red cube and a blue sphere",
     "subjects": [("cube", 1, "red", []), ("sphere", 1, "blue", [])], "relations": []},
    {"prompt": "A small green triangle is to the right of a large yellow star.",
     "subjects": [("triangle", 1, "green", ["small"]), ("star", 1, "yellow", ["large"])],
     "relations": [(0, "right of", 1)]},
    {"prompt": "a cat on the left side of a dog",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": [(0, "left of", 1)]},
    {"prompt": "The lamp is left of the sofa",
     "subjects": [("lamp", 1, None, []), ("sofa", 1, None, [])], "relations": [(0, "left of", 1)]},
    {"prompt": "On the left, a red circle; on the right, a blue star.",
     "subjects": [("circle", 1, "red", []), ("star", 1, "blue", [])], "relations": [(0, "left of", 1)]},
    {"prompt": "on the left is a brown horse and on the right is a white cow",
     "subjects": [("horse", 1, "brown", []), ("cow", 1, "white", [])], "relations": [(0, "left of", 1)]},
    {"prompt": "a cat in the top left corner",
     "subjects": [("cat", 1, None, ["in the top left corner"])], "relations": []},
    {"prompt": "a bird above a tree",
     "subjects": [("bird", 1, None, []), ("tree", 1, None, [])], "relations": [(0, "above", 1)]},
    {"prompt": "a book on top of a table",
     "subjects": [("book", 1, None, []), ("table", 1, None, [])], "relations": [(0, "on", 1)]},
    {"prompt": "a ball beneath a chair",
     "subjects": [("ball", 1, None, []), ("chair", 1, None, [])], "relations": [(0, "below", 1)]},
    {"prompt": "a dog sleeping under a wooden table",
     "subjects": [("dog", 1, None, ["sleeping"]), ("table", 1, None, ["wooden"])],
     "relations": [(0, "under", 1)]},
    {"prompt": "a man standing in front of a red car",
     "subjects": [("man", 1, None, ["standing"]), ("car", 1, "red", [])], "relations": [(0, "in front of", 1)]},
    {"prompt": "a house behind three tall trees",
     "subjects": [("house", 1, None, []), ("tree", 3, None, ["tall"])], "relations": [(0, "behind", 1)]},
    {"prompt": "a cat sitting next to a vase of flowers",
     "subjects": [("cat", 1, None, ["sitting"]), ("vase", 1, None, ["of flowers"])],
     "relations": [(0, "next to", 1)]},
    {"prompt": "a goldfish inside a glass bowl",
     "subjects": [("goldfish", 1, None, []), ("bowl", 1, None, ["glass"])], "relations": [(0, "inside", 1)]},
    {"prompt": "a kitten in a basket",
     "subjects": [("kitten", 1, None, []), ("basket", 1, None, [])], "relations": [(0, "inside", 1)]},
    {"prompt": "a cup between a fork and a knife",
     "subjects": [("cup", 1, None, []), ("fork", 1, None, []), ("knife", 1, None, [])],
     "relations": [(0, "between", 1, 2)]},
    {"prompt": "three apples on a plate next to a glass of milk",
     "subjects": [("apple", 3, None, []), ("plate", 1, None, []), ("glass", 1, None, ["of milk"])],
     "relations": [(0, "on", 1), (1, "next to", 2)]},
    {"prompt": "twelve eggs in a carton",
     "subjects": [("egg", 12, None, []), ("carton", 1, None, [])], "relations": [(0, "inside", 1)]},
    {"prompt": "a dozen roses",
     "subjects": [("rose", 12, None, [])], "relations": []},
    {"prompt": "a pair of shoes",
     "subjects": [("shoe", 2, None, [])], "relations": []},
    {"prompt": "5 wolves howling at the moon",
     "subjects": [("wolf", 5, None, ["howling"])], "relations": [], "scene": "at the moon"},
    {"prompt": "four children and two geese",
     "subjects": [("child", 4, None, []), ("goose", 2, None, [])], "relations": []},
    {"prompt": "three mice, two women and a man",
     "subjects": [("mouse", 3, None, []), ("woman", 2, None, []), ("man", 1, None, [])], "relations": []},
    {"prompt": "twenty-one balloons",
     "subjects": [("balloon", 21, None, [])], "relations": []},
    {"prompt": "a red apple, a yellow banana and a green pear",
     "subjects": [("apple", 1, "red", []), ("banana", 1, "yellow", []), ("pear", 1, "green", [])],
     "relations": []},
    {"prompt": "a big fluffy white dog with a red collar",
     "subjects": [("dog", 1, "white", ["big", "fluffy", "with a red collar"])], "relations": []},
    {"prompt": "a woman in a blue dress holding an umbrella",
     "subjects": [("woman", 1, None, ["in a blue dress", "holding an umbrella"])], "relations": []},
    {"prompt": "a grey cat",
     "subjects": [("cat", 1, "gray", [])], "relations": []},
    {"prompt": "a navy blue car",
     "subjects": [("car", 1, "blue", ["navy"])], "relations": []},
    {"prompt": "a photo of a cat on a beach at sunset",
     "subjects": [("cat", 1, None, [])], "relations": [], "scene": "on a beach at sunset", "medium": "photo"},
    {"prompt": "a lighthouse on a cliff in a storm, oil painting, dramatic lighting",
     "subjects": [("lighthouse", 1, None, []), ("cliff", 1, None, [])], "relations": [(0, "on", 1)],
     "medium": "oil painting", "lighting": "dramatic lighting"},
    {"prompt": "a watercolor of a fox in a snowy forest",
     "subjects": [("fox", 1, None, [])], "relations": [], "medium": "watercolor", "scene": "in a snowy forest"},
    {"prompt": "a close-up of a bee on a sunflower, macro, shallow depth of field",
     "subjects": [("bee", 1, None, []), ("sunflower", 1, None, [])], "relations": [(0, "on", 1)],
     "composition": "close-up", "camera": "macro, shallow depth of field"},
    {"prompt": "portrait of an old man, 85mm, soft lighting, moody",
     "subjects": [("man", 1, None, ["old"])], "relations": [], "composition": "portrait",
     "camera": "85mm", "lighting": "soft lighting", "mood": "moody"},
    {"prompt": "a city street at night, no people, without text",
     "subjects": [("street", 1, None, ["city"])], "relations": [], "scene": "at night",
     "negatives": ["people", "text"]},
    {"prompt": "an empty beach with no boats or umbrellas",
     "subjects": [("beach", 1, None, ["empty"])], "relations": [], "negatives": ["boats", "umbrellas"]},
    {"prompt": "a red circle on a white background",
     "subjects": [("circle", 1, "red", [])], "relations": [], "scene": "on a white background"},
    {"prompt": "two orange squares above a purple triangle on a light gray background",
     "subjects": [("square", 2, "orange", []), ("triangle", 1, "purple", [])], "relations": [(0, "above", 1)],
     "scene": "on a light gray background"},
    {"prompt": "a green star is left of a yellow triangle, and a purple square below the star",
     "subjects": [("star", 1, "green", []), ("triangle", 1, "yellow", []), ("square", 1, "purple", [])],
     "relations": [(0, "left of", 1), (2, "below", 0)]},
    {"prompt": "Above the table, a lamp",
     "subjects": [("table", 1, None, []), ("lamp", 1, None, [])], "relations": [(1, "above", 0)]},
    {"prompt": "a cat and a dog next to each other",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": [(0, "next to", 1)]},
    {"prompt": "a red, a green and a blue ball from left to right",
     "subjects": [("ball", 1, "red", []), ("ball", 1, "green", []), ("ball", 1, "blue", [])],
     "relations": [(0, "left of", 1), (1, "left of", 2)]},
    {"prompt": "a knight riding a horse, highly detailed, 8k",
     "subjects": [("knight", 1, None, ["riding a horse"])], "relations": [], "unparsed": ["highly detailed", "8k"]},
    {"prompt": "a tiny robot beside a huge mushroom in a forest, digital art",
     "subjects": [("robot", 1, None, ["tiny"]), ("mushroom", 1, None, ["huge"])],
     "relations": [(0, "next to", 1)], "scene": "in a forest", "medium": "digital art"},
    {"prompt": "a black and white photo of a dog",
     "subjects": [("dog", 1, None, [])], "relations": [], "medium": "black and white photo"},
    {"prompt": "several sheep in a field",
     "subjects": [("sheep", None, None, [])], "relations": [], "scene": "in a field"},
    {"prompt": "cats",
     "subjects": [("cat", None, None, [])], "relations": []},
    {"prompt": "a hot dog to the right of a wine glass",
     "subjects": [("hot dog", 1, None, []), ("wine glass", 1, None, [])], "relations": [(0, "right of", 1)]},
    {"prompt": "a blue bird perched on a branch, anime style",
     "subjects": [("bird", 1, "blue", ["perched"]), ("branch", 1, None, [])], "relations": [(0, "on", 1)],
     "medium": "anime style"},
    {"prompt": "a sandwich below a knife",
     "subjects": [("sandwich", 1, None, []), ("knife", 1, None, [])], "relations": [(0, "below", 1)]},
    {"prompt": "a cat is underneath a blue umbrella",
     "subjects": [("cat", 1, None, []), ("umbrella", 1, "blue", [])], "relations": [(0, "under", 1)]},
    {"prompt": "a vase near a window",
     "subjects": [("vase", 1, None, []), ("window", 1, None, [])], "relations": [(0, "next to", 1)]},
    {"prompt": "a tree and a cat, on the right, a yellow house",
     "subjects": [("tree", 1, None, []), ("cat", 1, None, []), ("house", 1, "yellow", ["on the right"])],
     "relations": []},
    {"prompt": "a dog on the right and a cat on the left",
     "subjects": [("dog", 1, None, []), ("cat", 1, None, [])], "relations": [(0, "right of", 1)]},
    {"prompt": "a lamp at the top and a rug at the bottom",
     "subjects": [("lamp", 1, None, []), ("rug", 1, None, [])], "relations": [(0, "above", 1)]},
    {"prompt": "a castle in the background and a knight in the foreground",
     "subjects": [("castle", 1, None, []), ("knight", 1, None, [])], "relations": [(0, "behind", 1)]},
    {"prompt": "an apple, an orange and a banana in a row",
     "subjects": [("apple", 1, None, []), ("orange", 1, None, []), ("banana", 1, None, [])],
     "relations": [(0, "left of", 1), (1, "left of", 2)]},
    {"prompt": "a girl with long brown hair reading a book under a tree",
     "subjects": [("girl", 1, None, ["with long brown hair", "reading a book"]), ("tree", 1, None, [])],
     "relations": [(0, "under", 1)]},
    {"prompt": "a red car parked in front of a white house with a blue door",
     "subjects": [("car", 1, "red", ["parked"]), ("house", 1, "white", ["with a blue door"])],
     "relations": [(0, "in front of", 1)]},
    {"prompt": "three cats sitting on a sofa, the middle one is orange",
     "subjects": [("cat", 3, None, ["sitting"]), ("sofa", 1, None, [])], "relations": [(0, "on", 1)],
     "unparsed": ["the middle one", "orange"]},
    {"prompt": "A cozy living room with a fireplace, a gray couch and two armchairs",
     "subjects": [("living room", 1, None, ["cozy", "with a fireplace"]), ("couch", 1, "gray", []),
                  ("armchair", 2, None, [])], "relations": []},
    {"prompt": "a man holding an umbrella in the rain at night, neon lights, cyberpunk",
     "subjects": [("man", 1, None, ["holding an umbrella"])], "relations": [], "scene": "in the rain at night",
     "lighting": "neon lights", "medium": "cyberpunk"},
    {"prompt": "a serene garden, cherry blossoms, soft morning light, watercolor",
     "subjects": [("garden", 1, None, ["serene"]), ("blossom", None, None, ["cherry"])], "relations": [],
     "lighting": "soft morning light", "medium": "watercolor"},
    {"prompt": "the red sphere is above the blue cube which is to the left of the green cone",
     "subjects": [("sphere", 1, "red", []), ("cube", 1, "blue", []), ("cone", 1, "green", [])],
     "relations": [(0, "above", 1), (1, "left of", 2)]},
    {"prompt": "a knight in shining armor facing a green dragon",
     "subjects": [("knight", 1, None, ["in shining armor", "facing a green dragon"])], "relations": []},
    {"prompt": "an astronaut riding a horse on the moon",
     "subjects": [("astronaut", 1, None, ["riding a horse"])], "relations": [], "scene": "on the moon"},
    {"prompt": "a cat to the right side of a dog",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": [(0, "right of", 1)]},
    {"prompt": "a bicycle on the right-hand side of a car",
     "subjects": [("bicycle", 1, None, []), ("car", 1, None, [])], "relations": [(0, "right of", 1)]},
    {"prompt": "a bird is right of a tree",
     "subjects": [("bird", 1, None, []), ("tree", 1, None, [])], "relations": [(0, "right of", 1)]},
    {"prompt": "a ball underneath a table",
     "subjects": [("ball", 1, None, []), ("table", 1, None, [])], "relations": [(0, "under", 1)]},
    {"prompt": "a lamp over a desk",
     "subjects": [("lamp", 1, None, []), ("desk", 1, None, [])], "relations": [(0, "above", 1)]},
    {"prompt": "a car in front of a house at night, photo, 35mm, bokeh",
     "subjects": [("car", 1, None, []), ("house", 1, None, [])], "relations": [(0, "in front of", 1)],
     "scene": "at night", "medium": "photo", "camera": "35mm, bokeh"},
    {"prompt": "no people, no cars, an empty street",
     "subjects": [("street", 1, None, ["empty"])], "relations": [], "negatives": ["people", "cars"]},
    {"prompt": "a landscape without buildings, watercolour",
     "subjects": [("landscape", 1, None, [])], "relations": [], "negatives": ["buildings"],
     "medium": "watercolour"},
    {"prompt": "2 cats and 3 dogs",
     "subjects": [("cat", 2, None, []), ("dog", 3, None, [])], "relations": []},
    {"prompt": "eleven stars in the sky",
     "subjects": [("star", 11, None, [])], "relations": [], "scene": "in the sky"},
    {"prompt": "a hexagon above two hearts, in the style of van gogh",
     "subjects": [("hexagon", 1, None, []), ("heart", 2, None, [])], "relations": [(0, "above", 1)],
     "medium": "in the style of van gogh"},
    {"prompt": "a red book lying on a blue chair, a green cup next to the chair",
     "subjects": [("book", 1, "red", ["lying"]), ("chair", 1, "blue", []), ("cup", 1, "green", [])],
     "relations": [(0, "on", 1), (2, "next to", 1)]},
    {"prompt": "five small yellow stars at the top, a big red heart at the bottom",
     "subjects": [("star", 5, "yellow", ["small"]), ("heart", 1, "red", ["big"])], "relations": [(0, "above", 1)]},
    {"prompt": "A photograph of a giraffe standing beside a zebra, golden hour, wide angle",
     "subjects": [("giraffe", 1, None, ["standing"]), ("zebra", 1, None, [])], "relations": [(0, "next to", 1)],
     "medium": "photograph", "lighting": "golden hour", "camera": "wide angle"},
    {"prompt": "there is a laptop on the desk and a phone next to it",
     "subjects": [("laptop", 1, None, []), ("desk", 1, None, []), ("phone", 1, None, [])],
     "relations": [(0, "on", 1), (2, "next to", 1)]},
    {"prompt": "a snowman wearing a red scarf, close up, studio lighting",
     "subjects": [("snowman", 1, None, ["wearing a red scarf"])], "relations": [], "composition": "close up",
     "lighting": "studio lighting"},
    {"prompt": "a tiny mouse inside a big teacup",
     "subjects": [("mouse", 1, None, ["tiny"]), ("teacup", 1, None, ["big"])], "relations": [(0, "inside", 1)]},
    {"prompt": "an orange cat and a white cat",
     "subjects": [("cat", 1, "orange", []), ("cat", 1, "white", [])], "relations": []},
    {"prompt": "a pink flamingo standing in a pond at the bottom",
     "subjects": [("flamingo", 1, "pink", ["standing", "in a pond", "at the bottom"])], "relations": []},
    # a leading "an image showing / with / containing" is framing, not a subject
    {"prompt": "an image showing a single triangle",
     "subjects": [("triangle", 1, None, [])], "relations": []},
    {"prompt": "an image with a triangle and a circle",
     "subjects": [("triangle", 1, None, []), ("circle", 1, None, [])], "relations": []},
    {"prompt": "a picture containing a square and a triangle",
     "subjects": [("square", 1, None, []), ("triangle", 1, None, [])], "relations": []},
    {"prompt": "a photo containing two red circles",
     "subjects": [("circle", 2, "red", [])], "relations": [], "medium": "photo"},
    {"prompt": "a drawing depicting a horse next to a barn",
     "subjects": [("horse", 1, None, []), ("barn", 1, None, [])], "relations": [(0, "next to", 1)],
     "medium": "drawing"},
    # "together with", "along with", "as well as" join subjects like "and"
    {"prompt": "draw a square together with a triangle",
     "subjects": [("square", 1, None, []), ("triangle", 1, None, [])], "relations": [], "unparsed": ["draw"]},
    {"prompt": "a red square together with a purple circle",
     "subjects": [("square", 1, "red", []), ("circle", 1, "purple", [])], "relations": []},
    {"prompt": "a cat together with a dog",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": []},
    {"prompt": "a blue cube along with two green spheres",
     "subjects": [("cube", 1, "blue", []), ("sphere", 2, "green", [])], "relations": []},
    # "in the picture" is the picture itself
    {"prompt": "there are three circles in the picture",
     "subjects": [("circle", 3, None, [])], "relations": []},
    {"prompt": "three birds in the image",
     "subjects": [("bird", 3, None, [])], "relations": []},
    {"prompt": "a dog and a ball in this photo",
     "subjects": [("dog", 1, None, []), ("ball", 1, None, [])], "relations": [], "medium": "photo"},
    # filler words are neither nouns nor attributes
    {"prompt": "four circles please",
     "subjects": [("circle", 4, None, [])], "relations": [], "unparsed": ["please"]},
    {"prompt": "please, two yellow stars and a heart",
     "subjects": [("star", 2, "yellow", []), ("heart", 1, None, [])], "relations": [], "unparsed": ["please"]},
    # an order idiom with one subject stays whole
    {"prompt": "two triangles side by side",
     "subjects": [("triangle", 2, None, [])], "relations": [], "unparsed": ["side by side"]},
    {"prompt": "three cats from left to right on a sofa",
     "subjects": [("cat", 3, None, []), ("sofa", 1, None, [])], "relations": [(0, "on", 1)],
     "unparsed": ["from left to right"]},
    # being alone is not a relation
    {"prompt": "a red square on its own",
     "subjects": [("square", 1, "red", [])], "relations": [], "unparsed": ["on its own"]},
    {"prompt": "a blue star by itself",
     "subjects": [("star", 1, "blue", [])], "relations": [], "unparsed": ["by itself"]},
    {"prompt": "a cat alone in a field",
     "subjects": [("cat", 1, None, [])], "relations": [], "scene": "in a field", "unparsed": ["alone"]},
    # "X with Y" of one kind is two subjects; otherwise "with Y" qualifies X
    {"prompt": "a purple triangle with a green square",
     "subjects": [("triangle", 1, "purple", []), ("square", 1, "green", [])], "relations": []},
    {"prompt": "two red cubes with a blue sphere",
     "subjects": [("cube", 2, "red", []), ("sphere", 1, "blue", [])], "relations": []},
    {"prompt": "a brown horse with a white cow in a field",
     "subjects": [("horse", 1, "brown", []), ("cow", 1, "white", [])], "relations": [], "scene": "in a field"},
    {"prompt": "a man with a hat",
     "subjects": [("man", 1, None, ["with a hat"])], "relations": []},
    {"prompt": "a white house with a blue door",
     "subjects": [("house", 1, "white", ["with a blue door"])], "relations": []},
] + [
    # -- free-form prompts of issue 15: nothing invented, nothing lost, nothing cut into pieces --
    {"prompt": "a cozy wooden cabin by a frozen lake under the northern lights, cinematic, 35mm",
     "subjects": [("cabin", 1, None, ["cozy", "wooden"]), ("light", None, None, ["northern"])],
     "relations": [(0, "under", 1)], "scene": "by a frozen lake", "camera": "35mm", "mood": "cinematic"},
    # a subordinate clause states no subject: it stays whole
    {"prompt": "Three cats sitting on a windowsill, the one in the middle is orange, rainy city outside",
     "subjects": [("cat", 3, None, ["sitting"]), ("windowsill", 1, None, [])], "relations": [(0, "on", 1)],
     "unparsed": ["the one in the middle is orange", "rainy city outside"]},
    {"prompt": "A close-up portrait of an elderly woman with silver hair and freckles, Rembrandt lighting",
     "subjects": [("woman", 1, None, ["elderly", "with silver hair and freckles"])], "relations": [],
     "composition": "close-up, portrait", "lighting": "rembrandt lighting"},
    {"prompt": "A bowl of ramen with two eggs, chopsticks resting on the rim, steam rising, top-down view",
     "subjects": [("bowl", 1, None, ["of ramen", "with two eggs"])], "relations": [],
     "composition": "top-down view", "unparsed": ["chopsticks resting on the rim", "steam rising"]},
    {"prompt": "There are frogs sitting on the seats. One of them is reading a newspaper.",
     "subjects": [("frog", None, None, ["sitting"]), ("seat", None, None, [])], "relations": [(0, "on", 1)],
     "unparsed": ["One of them is reading a newspaper"]},
    # an adverb before a relation: the relation holds; an adverb with content goes with it
    {"prompt": "a bird high above a house",
     "subjects": [("bird", 1, None, []), ("house", 1, None, [])], "relations": [(0, "above", 1)],
     "adverbs": ["high"], "sentence": "A bird is high above a house."},
    {"prompt": "a cat just left of a dog",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": [(0, "left of", 1)]},
    {"prompt": "a lamp directly behind a sofa",
     "subjects": [("lamp", 1, None, []), ("sofa", 1, None, [])], "relations": [(0, "behind", 1)],
     "adverbs": ["directly"], "sentence": "A lamp is directly behind a sofa."},
    {"prompt": "a plane flying low over the sea",
     "subjects": [("plane", 1, None, ["flying"])], "relations": [], "scene": "low over the sea"},
    {"prompt": "High above the table, a lamp",     # no subject before it: kept as written
     "subjects": [("lamp", 1, None, [])], "relations": [], "unparsed": ["High above the table"]},
    {"prompt": "just a square", "subjects": [("square", 1, None, [])], "relations": []},
    # what a subject holds is part of it, not a count of its own
    {"prompt": "a man holding two umbrellas",
     "subjects": [("man", 1, None, ["holding two umbrellas"])], "relations": []},
    {"prompt": "a woman holding 3 red balloons next to a car",
     "subjects": [("woman", 1, None, ["holding 3 red balloons"]), ("car", 1, None, [])],
     "relations": [(0, "next to", 1)]},
    # a piece/slice/cup of X is the piece, of X
    {"prompt": "a piece of cake on a plate",
     "subjects": [("piece", 1, None, ["of cake"]), ("plate", 1, None, [])], "relations": [(0, "on", 1)]},
    {"prompt": "a slice of pizza", "subjects": [("slice", 1, None, ["of pizza"])], "relations": []},
    {"prompt": "a cup of coffee next to a laptop",
     "subjects": [("cup", 1, None, ["of coffee"]), ("laptop", 1, None, [])], "relations": [(0, "next to", 1)]},
    # compound nouns
    {"prompt": "two birthday cakes on a table",
     "subjects": [("cake", 2, None, ["birthday"]), ("table", 1, None, [])], "relations": [(0, "on", 1)]},
    {"prompt": "a yellow school bus", "subjects": [("school bus", 1, "yellow", [])], "relations": []},
    # "on the left a X, on the right a Y"
    {"prompt": "on the left a cat, on the right a dog",
     "subjects": [("cat", 1, None, []), ("dog", 1, None, [])], "relations": [(0, "left of", 1)]},
    # colour words that are also nouns
    {"prompt": "an orange potted plant", "subjects": [("potted plant", 1, "orange", [])], "relations": []},
    {"prompt": "an orange next to a potted plant",
     "subjects": [("orange", 1, None, []), ("potted plant", 1, None, [])], "relations": [(0, "next to", 1)]},
    # pronoun subjects
    {"prompt": "A dignified beaver wearing glasses. He stands next to a tall stack of books.",
     "subjects": [("beaver", 1, None, ["dignified", "wearing glasses", "standing"]),
                  ("stack", 1, None, ["tall", "of books"])], "relations": [(0, "next to", 1)]},
    {"prompt": "A cat on a sofa. It is black.",
     "subjects": [("cat", 1, "black", []), ("sofa", 1, None, [])], "relations": [(0, "on", 1)]},
    # counts: a plural without a number has none; "a pair of", "a dozen" keep theirs
    {"prompt": "some robots on a beach", "subjects": [("robot", None, None, [])], "relations": [],
     "scene": "on a beach"},
    {"prompt": "a dozen eggs", "subjects": [("egg", 12, None, [])], "relations": []},
    {"prompt": "half a dozen eggs", "subjects": [("egg", 6, None, [])], "relations": []},
    {"prompt": "a couple of dogs playing", "subjects": [("dog", 2, None, ["playing"])], "relations": []},
    {"prompt": "a group of penguins in a snowstorm",
     "subjects": [("penguin", None, None, ["in a group", "in a snowstorm"])], "relations": []},
    {"prompt": "a group of four squares", "subjects": [("square", 4, None, ["in a group"])], "relations": []},
    # a copula with content is said of its subject
    {"prompt": "The statue sits on the moon.", "subjects": [("statue", 1, None, ["sitting"])],
     "relations": [], "scene": "on the moon"},
    {"prompt": "A Vietnam map showing Ha Long Bay",
     "subjects": [("map", 1, None, ["vietnam", "showing ha long bay"])], "relations": []},
]


def all_cases() -> list[dict]:
    return geneval_cases() + FREE_FORM
